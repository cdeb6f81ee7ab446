"""The run-directory contract every part shares: checkpoint names, the `latest` pointer and what
is wrong with it, DONE, and the queries the sbatch script makes."""

import subprocess
import sys

from megatron_glm.metrics.schema import EventsWriter
from megatron_glm.rundir import ORDERLY_EXITS, ExitCode, RunDir, checkpoint_name, checkpoint_step, write_latest


def test_checkpoint_names_and_steps():
    assert checkpoint_name(40) == "iter_0000040"
    assert checkpoint_step("iter_0000040") == 40 and checkpoint_step("iter_0000040.tmp") == 40
    assert checkpoint_step("latest") is None and checkpoint_step("iter_40") is None


def test_latest_says_what_is_wrong_with_it(tmp_path):
    run = RunDir(tmp_path)
    assert run.read_latest() == (None, None) and run.latest_step() is None  # a fresh run
    run.checkpoints.mkdir()
    write_latest(run.checkpoints, "iter_0000004")
    name, problem = run.read_latest()
    assert name == "iter_0000004" and "names iter_0000004, which does not exist" in problem
    (run.checkpoints / "iter_0000004").mkdir()
    (run.checkpoints / "iter_0000006.tmp").mkdir()
    assert run.read_latest() == ("iter_0000004", None) and run.latest_step() == 4
    assert [step for step, _ in run.published_checkpoints()] == [4]  # .tmp is not published
    (run.checkpoints / "latest").write_text("12\n")
    assert "not a checkpoint name" in run.read_latest()[1]


def test_done_and_exit_codes(tmp_path):
    run = RunDir(tmp_path)
    assert not run.is_done() and run.done_step() is None
    run.mark_done(60)
    assert run.done_step() == 60
    run.clear_done()
    assert not run.is_done()
    assert [int(c) for c in ExitCode] == [0, 1, 2, 74, 75, 76, 77]
    assert set(ORDERLY_EXITS) == {ExitCode.DONE, ExitCode.BAD_INPUT, ExitCode.REQUEUE}


def test_the_shell_asks_through_the_module(tmp_path):
    def ask(query):
        return subprocess.run([sys.executable, "-m", "megatron_glm.rundir", query, str(tmp_path)],
                              capture_output=True, text=True, check=True).stdout.strip()

    assert ask("started-count") == "0" and ask("latest-step") == "" and ask("done") == "no"
    with EventsWriter(tmp_path) as events:
        for kind in ("start", "checkpoint_saved", "restart", "stop"):
            events.write({"step": 2, "kind": kind, "message": "m", "world_size": 1, "path": "p",
                          "layout": {"tp": 1, "pp": 1, "dp": 1, "vpp": None}, "reason": "done", "exit_code": 0})
    with (tmp_path / "events.jsonl").open("a") as torn:
        torn.write("not json\n")  # a torn line is no start
    RunDir(tmp_path).checkpoints.mkdir()
    (RunDir(tmp_path).checkpoints / "iter_0000002").mkdir()
    write_latest(RunDir(tmp_path).checkpoints, "iter_0000002")
    assert ask("started-count") == "2" and ask("latest-step") == "2"
