"""What the sbatch script decides before and after `srun`, in Python so it is testable.

    python -m launch.job_hooks before --run-dir DIR
        prints "run", or "stop" when the kill-switch file RUN_DIR/STOP exists; remembers the latest
        checkpoint this allocation starts from (RUN_DIR/slurm/allocation.json).
    python -m launch.job_hooks after --run-dir DIR --exit-code RC --max-failures N
        prints one action and records why in events.jsonl (kind "stop" or "error", source
        "launcher"):
          done     DONE exists (the trainer finished);
          stop     the kill switch exists, the configuration is bad (2), or the run crashed
                   without a new checkpoint N allocations in a row;
          requeue  exit 75 (a stop signal: time limit, preemption, scontrol requeue; checkpoint
                   saved) or a crash that still made progress (the failure count restarts).
Resume is always "load latest": the trainer does it by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional

from megatron_glm.monitor.schema import EventsWriter

KILL_SWITCH = "STOP"
DONE = "DONE"
STATE_FILE = "slurm/allocation.json"
EXIT_BAD_CONFIG = 2
EXIT_REQUEUE = 75


def latest_step(run_dir: Path) -> Optional[int]:
    """Step of the checkpoint `checkpoints/latest` names (iter_0000040 -> 40), None without one."""
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    try:
        return int(name.rsplit("_", 1)[-1])
    except ValueError:
        return None


def _state(run_dir: Path) -> dict:
    path = run_dir / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else {"failures": 0}


def _save_state(run_dir: Path, state: dict) -> None:
    path = run_dir / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def _event(run_dir: Path, kind: str, message: str, **fields) -> None:
    step = latest_step(run_dir) or 0
    job = os.environ.get("SLURM_JOB_ID")
    with EventsWriter(run_dir) as writer:
        writer.write({"step": step, "kind": kind, "message": message, "source": "launcher",
                      "job_id": job, "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", 0)), **fields})


def before(run_dir: Path) -> str:
    state = _state(run_dir)
    if (run_dir / KILL_SWITCH).exists():
        _event(run_dir, "stop", f"kill switch {run_dir / KILL_SWITCH} exists: not starting", reason="kill_switch",
               exit_code=0)
        return "stop"
    state["start_step"] = latest_step(run_dir)
    _save_state(run_dir, state)
    return "run"


def after(run_dir: Path, exit_code: int, max_failures: int) -> str:
    state = _state(run_dir)
    if (run_dir / DONE).exists():
        _event(run_dir, "stop", "training finished (DONE)", reason="done", exit_code=0)
        return "done"
    if (run_dir / KILL_SWITCH).exists():
        _event(run_dir, "stop", f"kill switch {run_dir / KILL_SWITCH} exists: not requeueing",
               reason="kill_switch", exit_code=exit_code)
        return "stop"
    if exit_code == EXIT_BAD_CONFIG:
        _event(run_dir, "error", "the trainer rejected the configuration (exit 2): not requeueing; "
                                 "fix the config and submit again")
        return "stop"
    if exit_code == EXIT_REQUEUE:
        state["failures"] = 0
        _save_state(run_dir, state)
        _event(run_dir, "stop", "stopped by a signal with a checkpoint saved: requeueing", reason="requeue",
               exit_code=exit_code)
        return "requeue"
    progressed = latest_step(run_dir) != state.get("start_step")
    state["failures"] = 0 if progressed else state.get("failures", 0) + 1
    _save_state(run_dir, state)
    if state["failures"] >= max_failures:
        _event(run_dir, "error", f"crashed (exit {exit_code}) without a new checkpoint {state['failures']} "
                                 f"allocations in a row: giving up; see the job log, fix, then submit again",
               exit_code=exit_code, failures=state["failures"])
        return "stop"
    _event(run_dir, "error", f"crashed (exit {exit_code}); {'progress since the last allocation' if progressed else 'no new checkpoint'}"
                             f" ({state['failures']}/{max_failures} failures in a row): requeueing",
           exit_code=exit_code, failures=state["failures"])
    return "requeue"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.job_hooks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="hook", required=True)
    b = sub.add_parser("before")
    b.add_argument("--run-dir", required=True, type=Path)
    a = sub.add_parser("after")
    a.add_argument("--run-dir", required=True, type=Path)
    a.add_argument("--exit-code", required=True, type=int)
    a.add_argument("--max-failures", type=int, default=3)
    args = parser.parse_args(argv)
    action = before(args.run_dir) if args.hook == "before" else after(args.run_dir, args.exit_code, args.max_failures)
    print(action)
    return 0


if __name__ == "__main__":
    sys.exit(main())
