"""glm-launch run: the local launcher passes exit codes through, forwards stop signals, takes
every rank down when one dies, and refuses a bad config before starting anything."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from launch.local import LocalRunConfig, RankGroup, job_exit_code, omp_threads, rank_environment
from megatron_glm.metrics.schema import read_events, read_metrics

BIN = Path(sys.executable).parent
TINY = ["data.synthetic=true", "model.seq_length=32", "train.global_batch_size=4", "train.eval_interval=0", "train.decay_samples=4000"]


def _launch(run_dir, nproc, *overrides, env=None):
    return subprocess.Popen([str(BIN / "glm-launch"), "run", "glm-tiny", "--nproc", str(nproc), "--run-dir",
                             str(run_dir), *TINY, *overrides], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env or dict(os.environ, PYTHONWARNINGS="ignore"), start_new_session=True)


def _finish(proc, timeout=240):
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"glm-launch did not finish in {timeout}s:\n{out}")
    return proc.returncode, out


def _wait_for_metrics(run_dir, lines, proc, timeout=180):
    deadline = time.monotonic() + timeout
    path = Path(run_dir) / "metrics.jsonl"
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        if path.exists() and len(path.read_text().splitlines()) >= lines:
            return
        time.sleep(0.2)
    raise AssertionError("no training progress")


def test_pp2_run_stops_on_sigusr1_with_75_then_the_same_command_resumes_and_finishes(tmp_path):
    run_dir = tmp_path / "run"
    layout = ["parallel.pipeline=2"]
    proc = _launch(run_dir, 2, *layout, "train.steps=500")
    _wait_for_metrics(run_dir, 1, proc)
    os.kill(proc.pid, signal.SIGUSR1)
    code, out = _finish(proc)
    assert code == 75, out
    assert "forwarding SIGUSR1" in out
    assert not (run_dir / "DONE").exists()
    stopped = read_events(run_dir)[0][-1]
    assert stopped["kind"] == "stop" and stopped["exit_code"] == 75
    code, out = _finish(_launch(run_dir, 2, *layout, f"train.steps={stopped['step'] + 1}"))
    assert code == 0, out
    assert (run_dir / "DONE").exists()
    events = read_events(run_dir)[0]
    start = events[0]
    assert start["kind"] == "start" and start["world_size"] == 2
    assert start["layout"]["pp"] == 2
    assert [e["step"] for e in events if e["kind"] == "restart"] == [stopped["step"]]
    steps = [r["step"] for r in read_metrics(run_dir)[0]]
    assert steps == list(range(1, stopped["step"] + 2))  # nothing trained twice, nothing lost


def test_rank_group_forwards_sigterm_to_every_rank(tmp_path):
    """The forwarding itself, on ranks that exit 75 when signalled (as the trainer does)."""
    ready = tmp_path / "ready"
    code = ("import os, signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *a: sys.exit(75))\n"
            f"open(r'{ready}' + os.environ['RANK'], 'w').close()\n"
            "time.sleep(60)\n")
    group = RankGroup(LocalRunConfig(config="x", run_dir="x", nproc=3), [sys.executable, "-c", code], 1)
    try:
        deadline = time.monotonic() + 30
        while not all((tmp_path / f"ready{r}").exists() for r in range(3)) and time.monotonic() < deadline:
            time.sleep(0.05)
        group.send(signal.SIGTERM)
        for proc in group.procs:
            proc.wait(timeout=30)
        assert group.codes() == [75, 75, 75]
    finally:
        group.kill()


def test_a_dead_rank_takes_the_others_down(tmp_path):
    run_dir = tmp_path / "run"
    proc = _launch(run_dir, 2, "train.steps=500")
    deadline = time.monotonic() + 60
    while len(psutil.Process(proc.pid).children()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    ranks = psutil.Process(proc.pid).children()
    assert len(ranks) == 2
    ranks[1].kill()
    code, out = _finish(proc, timeout=60)
    assert code == 128 + signal.SIGKILL, out
    assert "stopping the others" in out
    gone, alive = psutil.wait_procs(ranks, timeout=10)
    assert not alive


def test_bad_config_exits_2_before_starting_anything(tmp_path):
    code, out = _finish(_launch(tmp_path / "run", 3, "parallel.tensor=2"))
    assert code == 2
    assert "world size 3 is not divisible by parallel.tensor x parallel.pipeline = 2" in out
    assert not (tmp_path / "run").exists()
    code, out = _finish(_launch(tmp_path / "run", 2, "train.stepz=3"))
    assert code == 2 and "unknown field 'train.stepz'" in out


def test_rank_environment_is_torchrun_style_and_shares_the_cores():
    cfg = LocalRunConfig(config="glm-tiny", run_dir="x", nproc=4)
    env = rank_environment(cfg, 3, 12345, base={"PATH": "/bin", "SLURM_PROCID": "7", "SLURM_NTASKS": "8"})
    assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"], env["MASTER_PORT"]) == ("3", "3", "4", "12345")
    assert "SLURM_PROCID" not in env and "SLURM_NTASKS" not in env
    assert omp_threads(4, {"OMP_NUM_THREADS": "3"}) == "3"
    assert omp_threads(10 ** 6, {}) == "1"
    assert int(omp_threads(1, {})) >= 1


def test_job_exit_code():
    assert job_exit_code(None, [0, 0]) == 0
    assert job_exit_code(75, [75, 75]) == 75
    assert job_exit_code(75, [75, -9]) == 75  # a straggler killed after the grace period
    assert job_exit_code(2, [2, 2]) == 2
    assert job_exit_code(-9, [-9, -9]) == 137  # the first failure wins, as a shell reports it
    assert job_exit_code(1, [1, 75]) == 1
    assert job_exit_code(None, [74]) == 74  # the only rank ended before the launcher polled
    assert job_exit_code(None, [-9, 0]) == 137
