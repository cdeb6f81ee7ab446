"""The pre-flight check: node pairing and blame as functions, then 4 real gloo ranks on simulated
nodes (tests/preflight_ranks.py) that pass, or find the node whose link corrupts data."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from megatron_glm.metrics.schema import read_events
from megatron_glm.rundir import ExitCode
from megatron_glm.runtime.preflight import blame, local_blame, node_pairs, pair_groups
from multirank.harness import kill_ranks, spawn_ranks

SCRIPT = Path(__file__).with_name("preflight_ranks.py")


def test_node_pairs():
    assert node_pairs(1) == [(0,)]
    assert node_pairs(2) == [(0, 1)]
    assert node_pairs(3) == [(0, 1), (2, 0)]
    assert node_pairs(96) == [(i, i + 1) for i in range(0, 96, 2)]
    assert node_pairs(5) == [(0, 1), (2, 3), (4, 0)]


def test_pair_groups_follow_the_ranks_on_each_node():
    hosts = ["a", "a", "b", "b", "c", "c"]  # 3 nodes x 2 ranks
    assert pair_groups(hosts) == [(("a", "b"), [0, 1, 2, 3]), (("c", "a"), [0, 1, 4, 5])]
    assert pair_groups(["x", "y", "x", "y"]) == [(("x", "y"), [0, 1, 2, 3])]  # nodes need not be contiguous


def _ok(*pairs):
    return {"gpu": "skipped (no CUDA)", "pairs": {p: "ok" for p in pairs}}


def test_blame_gpu_failures_and_failed_pairs():
    hosts = ["a", "a", "b", "b", "c", "c", "d", "d"]
    good = [_ok("a+b")] * 4 + [_ok("c+d")] * 4
    assert blame(hosts, good) == []
    # A GPU failure names its own node only.
    assert blame(hosts, good[:5] + [{"gpu": "RuntimeError: CUDA error: ECC", "pairs": {"c+d": "ok"}}] + good[6:]) == ["c"]
    # A failed pair cannot tell which of its nodes broke it: both are named, the other pair is not.
    failed_cd = [{"gpu": "ok", "pairs": {"c+d": "RuntimeError: Timed out"}}] * 4
    assert blame(hosts, good[:4] + failed_cd) == ["c", "d"]
    # Every node failing is reported as such (the job hooks then blame no node).
    assert blame(hosts, [{"gpu": "ok", "pairs": {p: "timeout"}} for p in ["a+b"] * 4 + ["c+d"] * 4]) == ["a", "b", "c", "d"]


def test_blame_clears_the_node_that_passed_its_other_pair():
    hosts = ["a", "a", "b", "b", "c", "c"]  # pairs a+b and c+a: node a is in both
    results = [{"gpu": "ok", "pairs": {"a+b": "ok", "c+a": "3 of 262144 elements wrong"}}] * 2 + [_ok("a+b")] * 2 \
        + [{"gpu": "ok", "pairs": {"c+a": "3 of 262144 elements wrong"}}] * 2
    assert blame(hosts, results) == ["c"]
    # Without the others' results a rank of node c can only name both nodes of its failed pair.
    assert local_blame(hosts, "c", results[4]) == ["a", "c"]
    assert local_blame(hosts, "b", results[2]) == []
    assert local_blame(hosts, "b", {"gpu": "CUDA error", "pairs": {"a+b": "ok"}}) == ["b"]


def _run(scenario, nodes, tmp_path, nproc=4):
    procs, logs = spawn_ranks(scenario, nproc, tmp_path, str(nodes), script=SCRIPT)
    try:
        deadline = time.monotonic() + 180
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        kill_ranks(procs, logs)
    logs = "\n".join((tmp_path / f"{scenario}.rank{r}.log").read_text()[-2000:] for r in range(nproc))
    return [p.returncode for p in procs], logs


def _reports(tmp_path, nproc=4):
    folder = tmp_path / "run" / "slurm" / "preflight.500.1"
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in range(nproc)]


@pytest.mark.multirank
def test_four_ranks_on_two_nodes_pass(tmp_path):
    codes, logs = _run("pass", 2, tmp_path)
    assert codes == [0] * 4, logs
    reports = _reports(tmp_path)
    assert [r["host"] for r in reports] == ["node0", "node0", "node1", "node1"]
    for report in reports:
        assert report["ok"] and report["stage"] == "done" and report["bad_hosts"] == []
        assert report["gpu"] == "skipped (no CUDA)" and report["pairs"] == {"node0+node1": "ok"}
    assert not (tmp_path / "run" / "events.jsonl").exists()
    print("pre-flight seconds per rank:", [r["seconds"] for r in reports])


@pytest.mark.multirank
def test_a_node_that_corrupts_data_is_named_and_every_rank_exits_77(tmp_path):
    # 3 nodes: node0 = ranks 0,1; node1 = rank 2; node2 = rank 3. Pairs node0+node1, node2+node0.
    codes, logs = _run("corrupt_last_node", 3, tmp_path)
    assert codes == [int(ExitCode.PREFLIGHT)] * 4, logs
    reports = _reports(tmp_path)
    assert [r["host"] for r in reports] == ["node0", "node0", "node1", "node2"]
    assert all(r["ok"] is False and r["bad_hosts"] == ["node2"] for r in reports)
    assert reports[0]["pairs"]["node0+node1"] == "ok" and reports[2]["checks_passed"]
    assert "elements wrong" in reports[3]["pairs"]["node2+node0"] and not reports[3]["checks_passed"]
    events, _ = read_events(tmp_path / "run", validate=True)
    assert len(events) == 1
    event = events[0]
    assert event["kind"] == "error" and event["reason"] == "preflight" and event["hosts"] == ["node2"]
    assert event["job_tag"] == "500.1" and "pre-flight check failed (node node2)" in event["message"]
    assert "node2 (rank 3): pair node2+node0: 10 of 262144 elements wrong" in event["message"]
