"""Pre-flight check at the start of every allocation: is every node fit to train, and if not, which?

Why: on a 96-node job a node with a dead GPU or a broken InfiniBand port does not fail cleanly;
the job hangs in its first collective or dies half an hour later while loading a checkpoint, and
the same node is handed out again on requeue. A few seconds of checks before the model is built
fail fast and name the node, so the Slurm job hooks can leave it out of the next allocation.

What runs, on every rank, right after the process groups exist:
1. the GPU: visible, and a small matmul gives the known result (skipped without CUDA);
2. hosts: every rank's host (SLURMD_NODENAME, else the host name) via all_gather_object;
3. the links: nodes (in order of their lowest rank) are paired (0,1), (2,3), ... and a last odd
   node with node 0; each pair's ranks all-reduce a buffer whose sum is known, on a group of
   their own (NCCL on GPUs, gloo on CPUs) with a timeout: intra-node and inter-node paths of both
   nodes at once, 48 small all-reduces in parallel on 96 nodes (every rank creates every group,
   members only use theirs);
4. results: all_gather_object of every rank's findings, so that every rank takes the same decision.

Blame: a node whose GPU check failed; both nodes of a failed pair, unless a node also passed in
another pair (node 0 when the node count is odd) -- one all-reduce cannot tell which of two nodes
broke it. When every node is blamed the fault is not the nodes' (software, configuration, the
fabric as a whole), which the job hooks take into account.

Each rank writes RUN_DIR/slurm/preflight.<job_tag>/rank<R>.json as it goes (a rank that dies or
hangs mid-check leaves its last stage there). On failure every rank raises PreflightFailed (the CLI
exits ExitCode.PREFLIGHT) and the lowest rank that knows the verdict writes an `error` event with
reason "preflight" and the bad hosts.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from megatron_glm.metrics.schema import EventsWriter
from megatron_glm.rundir import RunDir, write_atomically
from megatron_glm.runtime.job import host_name, job_tag

DEFAULT_TIMEOUT_S = 180.0
"""Per collective of the check: long enough for NCCL to set up a communicator at scale."""
BUFFER_ELEMENTS = 1 << 18
"""1 MiB of float32 per all-reduce: big enough to leave the small-message protocol, still ms."""
GPU_PASSED = ("ok", "skipped (no CUDA)")


class PreflightFailed(RuntimeError):
    """The pre-flight check found broken nodes (or could not complete); the message names them."""


def node_order(hosts: Sequence[str]) -> List[str]:
    """Distinct hosts in order of their lowest rank (`hosts` is indexed by rank)."""
    return list(dict.fromkeys(hosts))


def node_pairs(node_count: int) -> List[Tuple[int, ...]]:
    """Node indices checked together: (0, 1), (2, 3), ...; a last odd node with node 0; one node
    alone is a group of its own (intra-node only)."""
    if node_count == 1:
        return [(0,)]
    pairs: List[Tuple[int, ...]] = [(i, i + 1) for i in range(0, node_count - 1, 2)]
    if node_count % 2:
        pairs.append((node_count - 1, 0))
    return pairs


def pair_groups(hosts: Sequence[str]) -> List[Tuple[Tuple[str, ...], List[int]]]:
    """(node names, ranks) of every pair group, in the order every member creates and uses them."""
    nodes = node_order(hosts)
    return [(tuple(nodes[i] for i in pair), [rank for rank, host in enumerate(hosts) if host in {nodes[i] for i in pair}])
            for pair in node_pairs(len(nodes))]


def blame(hosts: Sequence[str], results: Sequence[dict]) -> List[str]:
    """Bad nodes from every rank's findings, `results[rank]` = {"gpu": "ok" | "skipped (no CUDA)" |
    error, "pairs": {"nodeA+nodeB": "ok" | error}}."""
    groups = pair_groups(hosts)
    bad, failed_groups = set(), set()
    for rank, result in enumerate(results):
        if result["gpu"] not in GPU_PASSED:
            bad.add(hosts[rank])
        for name, outcome in result["pairs"].items():
            if outcome != "ok":
                failed_groups.add(name)
    passed = {node for nodes, _ in groups if _group_name(nodes) not in failed_groups for node in nodes}
    for nodes, _ in groups:
        if _group_name(nodes) in failed_groups:
            bad.update(node for node in nodes if node not in passed)
    return [node for node in node_order(hosts) if node in bad]


def local_blame(hosts: Sequence[str], host: str, result: dict) -> List[str]:
    """Bad nodes as far as one rank on `host` can tell from its own `result` (when the results
    could not be exchanged): its node if its GPU failed, both nodes of each pair that failed."""
    bad = set() if result["gpu"] in GPU_PASSED else {host}
    for nodes, _ in pair_groups(hosts):
        if result["pairs"].get(_group_name(nodes), "ok") != "ok":
            bad.update(nodes)
    return [node for node in node_order(hosts) if node in bad]


def _group_name(nodes: Sequence[str]) -> str:
    return "+".join(nodes)


class _Report:
    """This rank's findings, rewritten to RUN_DIR/slurm/preflight.<job_tag>/rank<R>.json at each
    stage, so that a rank that hangs or dies mid-check still tells where."""

    def __init__(self, run_dir, tag: str, rank: int, host: str):
        self.path = RunDir(run_dir).preflight_results(tag) / f"rank{rank}.json"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.claim_path = self.path.with_name("reported")
        """Created by the rank that writes the event when the ranks could not agree on a verdict."""
        self.data: Dict = {"rank": rank, "host": host, "job": tag, "stage": "start", "started": time.time()}

    def update(self, **fields) -> None:
        self.data.update(fields)
        write_atomically(self.path, json.dumps(self.data) + "\n")


def check_gpu() -> str:
    """"ok", "skipped (no CUDA)", or what went wrong."""
    if not torch.cuda.is_available():
        return GPU_PASSED[1]
    try:
        a = (torch.arange(128 * 128, dtype=torch.float32) % 7).reshape(128, 128)
        expected = a @ a.T  # small integers: exact in float32 on any device
        got = (a.cuda() @ a.cuda().T).cpu()
        if not torch.equal(got, expected):
            return f"matmul on {torch.cuda.get_device_name()} gave wrong results (max error {(got - expected).abs().max():g})"
        return "ok"
    except Exception as error:  # any CUDA failure means the same: this GPU is unusable
        return f"{type(error).__name__}: {error}"


def new_pair_group(ranks: List[int], timeout_s: float):
    """Every rank creates every pair group, in one order (torch names groups by creation count);
    for non-members this returns at once, members of a gloo group wait for each other here."""
    return dist.new_group(ranks, timeout=datetime.timedelta(seconds=timeout_s),
                          backend="nccl" if torch.cuda.is_available() else "gloo")


def check_pair(ranks: List[int], timeout_s: float) -> str:
    """Create the group of `ranks` (this rank among them) and all-reduce on it: "ok" or the error."""
    on_gpu = torch.cuda.is_available()
    try:
        group = new_pair_group(ranks, timeout_s)
        buffer = torch.full((BUFFER_ELEMENTS,), float(dist.get_rank() + 1),
                            device=torch.cuda.current_device() if on_gpu else "cpu")
        dist.all_reduce(buffer, group=group)
        expected = float(sum(rank + 1 for rank in ranks))
        wrong = int((buffer != expected).sum())
        return "ok" if wrong == 0 else f"{wrong} of {BUFFER_ELEMENTS} elements wrong (expected {expected:g})"
    except Exception as error:  # a timeout, a connection reset, an NCCL error: the pair is broken
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def preflight(run_dir, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Collective (every rank of the default group). Returns when all nodes passed; otherwise
    raises PreflightFailed on every rank, after the per-rank files and the event are written."""
    rank, world = dist.get_rank(), dist.get_world_size()
    tag, host = job_tag(), host_name()
    started = time.monotonic()
    report = _Report(run_dir, tag, rank, host)
    report.update(stage="gpu")
    gpu = check_gpu()
    report.update(stage="hosts", gpu=gpu)
    if rank == 0:  # a claim left by an earlier run with the same tag (local runs are all "local.0")
        report.claim_path.unlink(missing_ok=True)
    hosts: List[str] = [""] * world
    dist.all_gather_object(hosts, host)
    pairs: Dict[str, str] = {}
    for index, (nodes, ranks) in enumerate(pair_groups(hosts)):
        # A last odd node's partner, node 0, may first spend a whole timeout on its own pair.
        timeout = 2 * timeout_s if index and nodes[-1] == hosts[0] else timeout_s
        if rank in ranks:
            report.update(stage=f"pair {_group_name(nodes)}", pairs=dict(pairs))
            pairs[_group_name(nodes)] = check_pair(ranks, timeout)
        else:
            new_pair_group(ranks, timeout)
    mine = {"gpu": gpu, "pairs": pairs}
    report.update(stage="results", pairs=pairs, checks_passed=_passed(mine))
    results: List[Optional[dict]] = [None] * world
    try:
        dist.all_gather_object(results, mine)
    except Exception as error:  # a rank died or hangs mid-check: judge from what this rank saw
        results = [mine if r == rank else None for r in range(world)]
        _fail(run_dir, tag, report, hosts, results, local_blame(hosts, host, mine), started,
              event=_claim(report.claim_path),
              cause=f"the exchange of results failed ({type(error).__name__}: {error})")
    bad = blame(hosts, results)
    if bad:
        _fail(run_dir, tag, report, hosts, results, bad, started, event=rank == 0)
    report.update(stage="done", ok=True, bad_hosts=[], seconds=round(time.monotonic() - started, 3))


def _passed(result: dict) -> bool:
    return result["gpu"] in GPU_PASSED and all(outcome == "ok" for outcome in result["pairs"].values())


def failure_lines(hosts: Sequence[str], results: Sequence[Optional[dict]]) -> List[str]:
    """"host (rank R): what failed" for every failed check in `results` (None: not known)."""
    lines = []
    for rank, result in enumerate(results):
        if result is None:
            continue
        if result["gpu"] not in GPU_PASSED:
            lines.append(f"{hosts[rank]} (rank {rank}): GPU: {result['gpu']}")
        lines.extend(f"{hosts[rank]} (rank {rank}): pair {name}: {outcome}"
                     for name, outcome in result["pairs"].items() if outcome != "ok")
    return lines


def _fail(run_dir, tag, report, hosts, results, bad, started, event: bool, cause: str = "") -> None:
    """Record the verdict (this rank's file, and the event if `event`) and raise PreflightFailed."""
    lines = failure_lines(hosts, results)
    named = f"node{'s' if len(bad) > 1 else ''} {', '.join(bad)}" if bad else "no node identified"
    details = lines[:8] + (["..."] if len(lines) > 8 else []) + ([cause] if cause else [])
    message = f"pre-flight check failed ({named}): " + "; ".join(details)
    report.update(stage="done", ok=False, bad_hosts=bad, message=message,
                  seconds=round(time.monotonic() - started, 3))
    if event:
        with EventsWriter(run_dir) as events:
            events.write({"step": RunDir(run_dir).latest_step() or 0, "kind": "error", "message": message,
                          "reason": "preflight", "hosts": bad, "job_tag": tag, "source": "preflight"})
    raise PreflightFailed(message)


def _claim(path) -> bool:
    """True for the first process to create `path` (one event per allocation, whoever gets there)."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        return True
    except FileExistsError:
        return False
