"""What the sbatch script decides before and after `srun`, in Python so it is testable.

    python -m launch.job_hooks before --run-dir DIR [--nodes NODE,...] [--exclude NODE,...]
        prints "run"; "stop" when the kill-switch file RUN_DIR/STOP exists; or "avoid" plus the
        nodes to exclude when the allocation (--nodes) has nodes the run excluded (a job
        resubmitted by hand does not carry the exclusions). On "run" remembers the latest
        checkpoint this allocation starts from (RUN_DIR/slurm/allocation.json).
    python -m launch.job_hooks after --run-dir DIR --exit-code RC [--max-failures N]
                                     [--max-excluded M] [--exclude NODE,...]
        prints one line, the action and for "requeue" the nodes the next allocation must avoid
        (comma-separated: --exclude, the profile's own, plus RUN_DIR/slurm/excluded_nodes.json),
        and records why in events.jsonl (kind "stop" or "error", source "launcher"):
          done     DONE exists (the trainer finished);
          stop     the kill switch exists; the input is bad (2); a checkpoint could not be written
                   (74: a full disk does not fix itself); or the run failed without a new
                   checkpoint N allocations in a row;
          requeue  exit 75 (a stop signal: time limit, preemption, scontrol requeue; checkpoint
                   saved), or a failure -- a hang (the watchdog's exit 76), a failed pre-flight
                   check (77), a crash -- while still below N failures in a row (a new checkpoint
                   resets the count).

Which node to blame: srun's exit code says little (a frozen rank killed by srun makes it 137), so
the hook reads what the allocation left: the watchdog's hang event (stuck ranks), the pre-flight
check's event (bad hosts), the ranks' own exit codes (slurm/exits.<job>.<restart>, written by
launch/rank_entry.py) and which rank ran where (slurm/ranks.<job>.<restart>). A node is blamed
only when its ranks failed while ranks on other nodes did not: when every node failed alike the
fault is the software's or the configuration's, and excluding nodes would not help. Blamed nodes
go to slurm/excluded_nodes.json, at most --max-excluded of them over the run (the partition must
have spare nodes: a job that asks for every node of the partition never starts without them).
Resume is always "load latest": the trainer does it by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from megatron_glm.metrics.schema import EventsWriter, read_events
from megatron_glm.rundir import ORDERLY_EXITS, ExitCode, RunDir, write_atomically
from megatron_glm.runtime.job import job_tag

STATE_FILE = "allocation.json"
"""Under slurm/: the checkpoint step this allocation started from and the failures in a row."""


@dataclass
class Allocation:
    """What one allocation (tag "<job id>.<restart count>") left in the run directory."""

    node_of: Dict[int, str] = field(default_factory=dict)
    """rank -> node (slurm/ranks.<tag>)."""
    exits: Dict[int, int] = field(default_factory=dict)
    """rank -> exit code, for ranks that returned or raised (slurm/exits.<tag>)."""
    hang: Optional[dict] = None
    """The hang watchdog's event of this allocation."""
    preflight: Optional[dict] = None
    """The pre-flight check's event of this allocation."""

    @property
    def nodes(self) -> List[str]:
        return sorted(set(self.node_of.values()))


def read_allocation(run: RunDir, tag: str) -> Allocation:
    allocation = Allocation()
    for path, fill in ((run.rank_map(tag), _rank_line), (run.exit_records(tag), _exit_line)):
        if path.is_file():
            for line in path.read_text().splitlines():
                fill(allocation, line.split())
    if run.events.is_file():
        for event in read_events(run.path)[0]:
            if event["kind"] == "error" and event.get("job_tag") == tag and event.get("reason") in ("hang", "preflight"):
                setattr(allocation, event["reason"], event)
    return allocation


def _rank_line(allocation: Allocation, fields: List[str]) -> None:
    """"procid localid nodeid node" (launch/rank_entry.py)."""
    if len(fields) == 4 and fields[0].isdigit():
        allocation.node_of[int(fields[0])] = fields[3]


def _exit_line(allocation: Allocation, fields: List[str]) -> None:
    """"procid node exit_code"."""
    if len(fields) == 3 and fields[0].isdigit() and fields[2].lstrip("-").isdigit():
        allocation.exits[int(fields[0])] = int(fields[2])


def failed_nodes(allocation: Allocation, kind: str) -> Tuple[List[str], str]:
    """(nodes whose ranks failed, what happened) for kind "hang", "preflight" or "crash"."""
    if kind == "hang":
        if not allocation.hang:  # the watchdog could not write its event: nobody to blame
            return [], "hang (no watchdog event found)"
        stuck = allocation.hang.get("stuck_ranks", [])
        nodes = {allocation.node_of[r] for r in stuck if r in allocation.node_of} or set(allocation.hang.get("hosts", []))
        return sorted(nodes), f"hang: {_ranks(stuck)} stuck"
    if kind == "preflight" and allocation.preflight:
        return sorted(allocation.preflight.get("hosts", [])), "pre-flight check failed"
    label = "pre-flight check failed" if kind == "preflight" else "crash"
    failed = sorted(rank for rank, code in allocation.exits.items()
                    if (code == ExitCode.PREFLIGHT if kind == "preflight" else code not in ORDERLY_EXITS))
    if not failed:
        return [], label
    codes = "/".join(str(code) for code in sorted({allocation.exits[rank] for rank in failed}))
    return sorted({allocation.node_of[r] for r in failed if r in allocation.node_of}), f"{label}: {_ranks(failed)} exited {codes}"


def _ranks(ranks: Sequence[int]) -> str:
    shown = ", ".join(map(str, ranks[:8])) + (f" (+{len(ranks) - 8} more)" if len(ranks) > 8 else "")
    return f"rank{'s' if len(ranks) > 1 else ''} {shown}"


def blamed_nodes(allocation: Allocation, failed: Sequence[str]) -> List[str]:
    """`failed` if some node of the allocation did not fail; none when every node failed alike."""
    healthy = set(allocation.nodes) - set(failed)
    return sorted(failed) if failed and healthy else []


def read_excluded(run: RunDir) -> List[dict]:
    """The excluded-nodes records; an unreadable file raises ValueError naming it."""
    if not run.excluded_nodes.is_file():
        return []
    try:
        entries = json.loads(run.excluded_nodes.read_text())
        if isinstance(entries, list) and all(isinstance(e, dict) and "node" in e for e in entries):
            return entries
    except (OSError, ValueError):
        pass
    raise ValueError(f"{run.excluded_nodes} is not a JSON list of {{node, reason, job_id, restart}}: fix or remove it")


def exclude(run: RunDir, nodes: Sequence[str], reason: str, job_id: str, restart: int, max_excluded: int,
            static: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Record `nodes` as excluded, up to `max_excluded` records in all. Returns (added, left in
    because the limit is reached); nodes already excluded (here or by the profile) are neither."""
    entries = read_excluded(run)
    known = {e["node"] for e in entries} | set(static)
    added, over = [], []
    for node in nodes:
        if node in known:
            continue
        if len(entries) >= max_excluded:
            over.append(node)
            continue
        entries.append({"node": node, "reason": reason, "job_id": job_id, "restart": restart})
        added.append(node)
    if added:
        run.slurm.mkdir(parents=True, exist_ok=True)
        write_atomically(run.excluded_nodes, json.dumps(entries, indent=1) + "\n")
    return added, over


def _state(run: RunDir) -> dict:
    path = run.slurm / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else {"failures": 0}


def _save_state(run: RunDir, state: dict) -> None:
    run.slurm.mkdir(parents=True, exist_ok=True)
    write_atomically(run.slurm / STATE_FILE, json.dumps(state))


def _event(run: RunDir, kind: str, message: str, **fields) -> None:
    with EventsWriter(run.path) as writer:
        writer.write({"step": run.latest_step() or 0, "kind": kind, "message": message, "source": "launcher",
                      "job_id": os.environ.get("SLURM_JOB_ID"),
                      "restart_count": int(os.environ.get("SLURM_RESTART_COUNT") or 0), **fields})


def before(run_dir, nodes: Sequence[str] = ()) -> str:
    """"run"; "stop" (kill switch); "avoid" when the allocation has `nodes` the run excluded (a job
    resubmitted by hand, or a requeue whose exclusion Slurm refused): requeue without them."""
    run = RunDir(run_dir)
    state = _state(run)
    if run.kill_switch.exists():
        _event(run, "stop", f"kill switch {run.kill_switch} exists: not starting", reason="kill_switch", exit_code=0)
        return "stop"
    try:
        bad = sorted(set(nodes) & {e["node"] for e in read_excluded(run)})
    except ValueError as error:
        print(f"job_hooks: {error}", file=sys.stderr)
        bad = []
    if bad:
        _event(run, "stop", f"this allocation includes excluded node(s) {', '.join(bad)} (see {run.excluded_nodes}): "
                            f"not starting; requeueing without them", reason="excluded_nodes", exit_code=0)
        return "avoid"
    state["start_step"] = run.latest_step()
    _save_state(run, state)
    return "run"


def after(run_dir, exit_code: int, max_failures: int, max_excluded: int = 4, static_exclude: Sequence[str] = ()) -> str:
    """The action after srun ended with `exit_code`: "done", "stop" or "requeue" (see the module).
    `static_exclude`: the profile's excluded nodes (never recorded, never counted)."""
    run = RunDir(run_dir)
    state = _state(run)
    if run.is_done():
        _event(run, "stop", "training finished (DONE)", reason="done", exit_code=0)
        return "done"
    if run.kill_switch.exists():
        _event(run, "stop", f"kill switch {run.kill_switch} exists: not requeueing", reason="kill_switch",
               exit_code=exit_code)
        return "stop"
    allocation = read_allocation(run, job_tag())
    codes = {exit_code, *allocation.exits.values()}
    if ExitCode.BAD_INPUT in codes:
        _event(run, "error", "the trainer rejected the configuration or the run directory (exit 2): not requeueing; "
                             "fix it and submit again", exit_code=exit_code)
        return "stop"
    if ExitCode.CHECKPOINT_IO in codes:
        _event(run, "error", f"a checkpoint could not be written (exit 74: full disk or I/O error; the previous "
                             f"checkpoint and `latest` are intact): not requeueing, a full disk does not fix itself; "
                             f"free space under {run.checkpoints}, then `sbatch {run.slurm / 'job.sbatch'}`",
               exit_code=exit_code, reason="checkpoint_io")
        return "stop"
    if exit_code == ExitCode.REQUEUE:
        state["failures"] = 0
        _save_state(run, state)
        _event(run, "stop", "stopped by a signal with a checkpoint saved: requeueing", reason="requeue",
               exit_code=exit_code)
        return "requeue"
    return _after_failure(run, state, allocation, codes, exit_code, max_failures, max_excluded, static_exclude)


def _after_failure(run, state, allocation, codes, exit_code, max_failures, max_excluded, static_exclude) -> str:
    """A hang, a failed pre-flight check or a crash: blame nodes, count, requeue or give up."""
    kind = ("hang" if allocation.hang or ExitCode.HANG in codes else
            "preflight" if allocation.preflight or ExitCode.PREFLIGHT in codes else "crash")
    failed, what = failed_nodes(allocation, kind)
    blamed = blamed_nodes(allocation, failed)
    job_id = os.environ.get("SLURM_JOB_ID", "")
    restart = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    notes = []
    try:
        added, over = exclude(run, blamed, what, job_id, restart, max_excluded, static_exclude)
    except ValueError as error:
        added, over = [], []
        notes.append(f"not excluding {', '.join(blamed)}: {error}" if blamed else str(error))
    if added:
        notes.append(f"excluding {', '.join(added)} from the next allocations")
    if over:
        notes.append(f"not excluding {', '.join(over)}: {max_excluded} node(s) excluded already, the limit "
                     f"(slurm.max_excluded_nodes; {run.excluded_nodes})")
    if failed and not blamed:
        notes.append("every node failed alike: no node to blame (software, configuration or the whole fabric)")
    notes_text = "".join(f"; {note}" for note in notes)
    progressed = run.latest_step() != state.get("start_step")
    state["failures"] = 0 if progressed else state.get("failures", 0) + 1
    _save_state(run, state)
    fields = dict(exit_code=exit_code, failures=state["failures"], reason=kind, failed_nodes=failed,
                  excluded_nodes=added)
    if state["failures"] >= max_failures:
        _event(run, "error", f"{what} (exit {exit_code}) without a new checkpoint {state['failures']} allocations "
                             f"in a row: giving up; see the job log, fix, then submit again{notes_text}", **fields)
        return "stop"
    _event(run, "error", f"{what} (exit {exit_code}); "
                         f"{'progress since the last allocation' if progressed else 'no new checkpoint'} "
                         f"({state['failures']}/{max_failures} failures in a row): requeueing{notes_text}", **fields)
    return "requeue"


def exclusions(run_dir, static: Sequence[str]) -> List[str]:
    """Every node the next allocation must avoid: the profile's, then the recorded ones."""
    try:
        recorded = [e["node"] for e in read_excluded(RunDir(run_dir))]
    except ValueError as error:
        print(f"job_hooks: {error}", file=sys.stderr)
        recorded = []
    return list(dict.fromkeys([*static, *recorded]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.job_hooks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="hook", required=True)
    b = sub.add_parser("before")
    b.add_argument("--run-dir", required=True)
    b.add_argument("--nodes", default="", help="the allocation's nodes, comma-separated")
    b.add_argument("--exclude", default="", help="the cluster profile's excluded nodes, comma-separated")
    a = sub.add_parser("after")
    a.add_argument("--run-dir", required=True)
    a.add_argument("--exit-code", required=True, type=int)
    a.add_argument("--max-failures", type=int, default=3)
    a.add_argument("--max-excluded", type=int, default=4)
    a.add_argument("--exclude", default="", help="the cluster profile's excluded nodes, comma-separated")
    args = parser.parse_args(argv)
    static = [node for node in args.exclude.split(",") if node]
    if args.hook == "before":
        action = before(args.run_dir, [node for node in args.nodes.split(",") if node])
    else:
        action = after(args.run_dir, args.exit_code, args.max_failures, args.max_excluded, static)
    print(f"{action} {','.join(exclusions(args.run_dir, static))}".rstrip() if action in ("requeue", "avoid")
          else action)
    return 0


if __name__ == "__main__":
    sys.exit(main())
