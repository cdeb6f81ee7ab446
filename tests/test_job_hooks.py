"""The after-srun hook on what an allocation leaves behind: which node it blames for a hang, a
failed pre-flight check or a crash, the excluded-nodes record and its limit, exit 74; the ranks'
exit records (launch/rank_entry.py) and `glm-launch status` listing the excluded nodes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from launch.job_hooks import after, before, exclusions, main
from launch.status import format_status, run_status
from megatron_glm.metrics.schema import EventsWriter, read_events
from megatron_glm.rundir import RunDir

# Two nodes x two ranks, as the local-slurm profile runs them.
RANKS = "0 0 0 node1\n1 1 0 node1\n2 0 1 node2\n3 1 1 node2\n"


@pytest.fixture
def run(tmp_path, monkeypatch):
    """A run directory inside allocation 12.0 (SLURM_JOB_ID 12, first start)."""
    monkeypatch.setenv("SLURM_JOB_ID", "12")
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    run = RunDir(tmp_path / "run")
    run.slurm.mkdir(parents=True)
    run.rank_map("12.0").write_text(RANKS)
    return run


def _checkpoint(run, step):
    (run.checkpoints / f"iter_{step:07d}").mkdir(parents=True, exist_ok=True)
    (run.checkpoints / "latest").write_text(f"iter_{step:07d}\n")


def _error_event(run, **fields):
    with EventsWriter(run.path) as events:
        events.write({"step": 4, "kind": "error", "message": "from the trainer", **fields})


def _launcher(run):
    return [e for e in read_events(run.path, validate=True)[0] if e.get("source") == "launcher"]


def _excluded(run):
    return json.loads(run.excluded_nodes.read_text())


def test_a_hang_blames_the_stuck_ranks_node_and_requeues_without_it(run, capsys):
    _checkpoint(run, 4)
    assert before(run.path) == "run"
    _checkpoint(run, 6)  # progress in this allocation: not a failure in a row
    _error_event(run, reason="hang", stuck_ranks=[3], hosts=["node2"], timeout_s=20.0, job_tag="12.0")
    # srun's code is 137: the frozen rank was killed after the others exited 76.
    assert main(["after", "--run-dir", str(run.path), "--exit-code", "137", "--exclude", "login1"]) == 0
    assert capsys.readouterr().out == "requeue login1,node2\n"  # the profile's exclusions first
    assert _excluded(run) == [{"node": "node2", "reason": "hang: rank 3 stuck", "job_id": "12", "restart": 0}]
    event = _launcher(run)[-1]
    assert event["kind"] == "error" and event["reason"] == "hang" and event["excluded_nodes"] == ["node2"]
    assert event["failed_nodes"] == ["node2"] and event["failures"] == 0 and event["exit_code"] == 137
    assert "hang: rank 3 stuck (exit 137); progress since the last allocation" in event["message"]
    assert "excluding node2 from the next allocations" in event["message"]
    # The exclusion stays for the following allocations, once.
    assert exclusions(run.path, ["login1", "node2"]) == ["login1", "node2"]


def test_every_node_failing_alike_blames_no_node(run):
    assert before(run.path) == "run"
    _error_event(run, reason="hang", stuck_ranks=[0, 1, 2, 3], hosts=["node1", "node2"], timeout_s=900.0,
                 job_tag="12.0")
    assert after(run.path, 76, max_failures=3) == "requeue"
    assert not run.excluded_nodes.exists()
    event = _launcher(run)[-1]
    assert event["failures"] == 1 and event["excluded_nodes"] == [] and event["failed_nodes"] == ["node1", "node2"]
    assert "every node failed alike: no node to blame" in event["message"]


def test_another_allocations_events_are_not_this_ones(run, monkeypatch):
    _error_event(run, reason="hang", stuck_ranks=[3], hosts=["node2"], timeout_s=20.0, job_tag="12.0")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    run.rank_map("12.1").write_text(RANKS)
    assert before(run.path) == "run"
    assert after(run.path, 1, max_failures=3) == "requeue"  # a crash without records: nobody to blame
    assert not run.excluded_nodes.exists()
    assert _launcher(run)[-1]["reason"] == "crash"


def test_a_failed_preflight_check_excludes_the_named_node_and_counts_as_a_failure(run):
    assert before(run.path) == "run"
    _error_event(run, reason="preflight", hosts=["node1"], job_tag="12.0")
    run.exit_records("12.0").write_text("".join(f"{r} node{1 + r // 2} 77\n" for r in range(4)))
    assert after(run.path, 77, max_failures=3) == "requeue"
    assert _excluded(run)[0]["node"] == "node1" and _excluded(run)[0]["reason"] == "pre-flight check failed"
    event = _launcher(run)[-1]
    assert event["reason"] == "preflight" and event["failures"] == 1
    assert "(1/3 failures in a row)" in event["message"]


def test_a_crash_blames_the_node_whose_ranks_exited_with_an_error(run):
    assert before(run.path) == "run"
    # Rank 2 raised; the others were killed by srun while waiting for it (no record).
    run.exit_records("12.0").write_text("2 node2 1\n")
    assert after(run.path, 1, max_failures=3) == "requeue"
    assert _excluded(run) == [{"node": "node2", "reason": "crash: rank 2 exited 1", "job_id": "12", "restart": 0}]


def test_a_crash_everywhere_is_not_a_node(run):
    assert before(run.path) == "run"
    run.exit_records("12.0").write_text("".join(f"{r} node{1 + r // 2} 1\n" for r in range(4)))
    assert after(run.path, 1, max_failures=3) == "requeue"
    assert not run.excluded_nodes.exists()


def test_the_exclusion_limit(run, monkeypatch):
    assert before(run.path) == "run"
    run.exit_records("12.0").write_text("2 node2 1\n")
    assert after(run.path, 1, max_failures=5, max_excluded=1) == "requeue"
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    run.rank_map("12.1").write_text(RANKS.replace("node2", "node3"))
    run.exit_records("12.1").write_text("3 node3 1\n")
    assert before(run.path) == "run"
    assert after(run.path, 1, max_failures=5, max_excluded=1) == "requeue"
    assert [e["node"] for e in _excluded(run)] == ["node2"]
    assert "not excluding node3: 1 node(s) excluded already, the limit (slurm.max_excluded_nodes" \
        in _launcher(run)[-1]["message"]


def test_an_unreadable_exclusion_file_is_reported_not_overwritten(run, capsys):
    run.excluded_nodes.write_text("node2\n")  # an operator's hand edit
    assert before(run.path) == "run"
    run.exit_records("12.0").write_text("2 node2 1\n")
    assert main(["after", "--run-dir", str(run.path), "--exit-code", "1"]) == 0
    out, err = capsys.readouterr()
    assert out == "requeue\n" and "is not a JSON list" in err
    assert run.excluded_nodes.read_text() == "node2\n"
    assert "not excluding node2:" in _launcher(run)[-1]["message"]


def test_an_allocation_with_an_excluded_node_starts_again_without_it(run, capsys):
    """A job resubmitted by hand carries no exclusions: the before hook finds them in the run dir."""
    run.excluded_nodes.write_text(json.dumps([{"node": "node2", "reason": "hang: rank 3 stuck", "job_id": "11",
                                               "restart": 0}]))
    assert main(["before", "--run-dir", str(run.path), "--nodes", "node1,node2", "--exclude", "login1"]) == 0
    assert capsys.readouterr().out == "avoid login1,node2\n"
    event = _launcher(run)[-1]
    assert event["kind"] == "stop" and event["reason"] == "excluded_nodes" and "node2" in event["message"]
    assert not (run.slurm / "allocation.json").exists()  # nothing started
    assert main(["before", "--run-dir", str(run.path), "--nodes", "node1,node3"]) == 0
    assert capsys.readouterr().out == "run\n"


def test_a_checkpoint_that_cannot_be_written_stops_the_job(run, capsys):
    assert before(run.path) == "run"
    run.exit_records("12.0").write_text("0 node1 74\n1 node1 74\n2 node2 74\n3 node2 74\n")
    assert main(["after", "--run-dir", str(run.path), "--exit-code", "74"]) == 0
    assert capsys.readouterr().out == "stop\n"
    event = _launcher(run)[-1]
    assert event["reason"] == "checkpoint_io" and "a full disk does not fix itself" in event["message"]
    assert not run.excluded_nodes.exists()


def test_status_lists_the_excluded_nodes(run):
    run.excluded_nodes.write_text(json.dumps([{"node": "node2", "reason": "hang: rank 3 stuck", "job_id": "12",
                                               "restart": 0}]))
    status = run_status(run.path)
    assert status["excluded_nodes"] == [{"node": "node2", "reason": "hang: rank 3 stuck", "job_id": "12", "restart": 0}]
    assert "excluded nodes:  node2: hang: rank 3 stuck (job 12, restart 0)" in format_status(status)
    run.excluded_nodes.write_text("{")
    assert "is not a JSON list" in format_status(run_status(run.path))


def test_rank_entry_records_which_rank_ran_where_and_how_it_ended(tmp_path):
    env = dict(os.environ, SLURM_JOB_ID="31", SLURM_RESTART_COUNT="2", SLURM_PROCID="3", SLURM_LOCALID="1",
               SLURM_NODEID="1", SLURMD_NODENAME="node7")
    result = subprocess.run([sys.executable, "-m", "launch.rank_entry", str(tmp_path), "--",
                             "--config", str(tmp_path / "missing.yaml"), "--run-dir", str(tmp_path / "run")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr  # glm-train's "bad input"
    run = RunDir(tmp_path)
    assert run.rank_map("31.2").read_text() == "3 1 1 node7\n"
    assert run.exit_records("31.2").read_text() == "3 node7 2\n"
