"""The run directory: the one contract between the trainer, the launchers, the Slurm job hooks,
`glm-launch status`, the monitor and the converter.

    RUN_DIR/
      config.yaml          the run config of the latest start, derived values resolved
      metrics.jsonl        one line per logged step (megatron_glm.metrics.schema)
      events.jsonl         rare happenings, kinds in EVENT_KINDS
      checkpoints/         iter_0000400/ ... and `latest`, a text file naming the newest complete one
      cache/datasets/      megatron-core's sample-index cache (shared storage: every node reads it)
      heartbeats/          per-rank liveness and progress (the hang watchdog)
      hangs/               stack dumps of ranks the watchdog stopped
      slurm/               job script, job ids, rank->node maps, excluded nodes
      tb/                  TensorBoard scalars
      DONE                 written when training finished ("step N")
      STOP                 the kill switch an operator creates: no further allocation starts

Exit codes are the same for every entry point (`glm-train`, `glm-launch run`, srun's ranks); the job
hooks decide requeue / stop from them. Nothing here imports torch: the batch shell calls
`python -m megatron_glm.rundir ...` between allocations.
"""

from __future__ import annotations

import argparse
import enum
import json
import os
import re
import sys
from pathlib import Path
from typing import List, Optional, Tuple

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
EVENTS_FILE = "events.jsonl"
CHECKPOINTS_DIR = "checkpoints"
DATASET_CACHE_DIR = "cache/datasets"
HEARTBEATS_DIR = "heartbeats"
HANGS_DIR = "hangs"
SLURM_DIR = "slurm"
TENSORBOARD_DIR = "tb"
DONE_FILE = "DONE"
KILL_SWITCH = "STOP"
LATEST = "latest"
MANIFEST = "manifest.json"
"""Written last into a checkpoint directory: its files, sizes and checksums. A checkpoint is
complete when its manifest is present (and, checked on load, matches the files)."""
EXCLUDED_NODES = "excluded_nodes.json"
"""Under slurm/: nodes the job hooks keep out of the next allocations ([{node, reason, job_id, restart}])."""


class ExitCode(enum.IntEnum):
    """How a rank, `glm-train`, `glm-launch run` and the sbatch job end."""

    DONE = 0
    """Training finished; DONE written."""
    CRASH = 1
    """An unexpected error (a traceback in the log)."""
    BAD_INPUT = 2
    """Configuration or run directory unusable; nothing was trained. Fix it, then start again."""
    CHECKPOINT_IO = 74
    """A checkpoint could not be written (full disk, I/O error); the previous one and `latest` are
    intact. Free space or fix the file system, then start again."""
    REQUEUE = 75
    """A stop signal arrived; a checkpoint was saved: start again to continue."""
    HANG = 76
    """The hang watchdog ended a rank that made no progress (stacks under hangs/)."""
    PREFLIGHT = 77
    """The start-of-allocation check found a broken node (named in the `error` event)."""


ORDERLY_EXITS = (ExitCode.DONE, ExitCode.BAD_INPUT, ExitCode.REQUEUE)
"""Exits a rank chooses together with the others: peers get a grace period to follow."""

EVENT_KINDS = ("start", "restart", "checkpoint_saved", "checkpoint_loaded", "checkpoint_corrupt",
               "checkpoint_fallback", "spike", "rollback", "skip", "stop", "error", "downstream_eval")
STARTED_KINDS = ("start", "restart")

_CHECKPOINT_NAME = re.compile(r"^iter_(\d{7,})(\.tmp)?$")


def checkpoint_name(step: int) -> str:
    return f"iter_{step:07d}"


def checkpoint_step(name: str) -> Optional[int]:
    """iter_0000040 (or iter_0000040.tmp) -> 40; None for any other name."""
    match = _CHECKPOINT_NAME.match(name)
    return int(match.group(1)) if match else None


class RunDir:
    """Paths and small state files of one run directory."""

    def __init__(self, path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    config = property(lambda self: self.path / CONFIG_FILE)
    metrics = property(lambda self: self.path / METRICS_FILE)
    events = property(lambda self: self.path / EVENTS_FILE)
    checkpoints = property(lambda self: self.path / CHECKPOINTS_DIR)
    dataset_cache = property(lambda self: self.path / DATASET_CACHE_DIR)
    heartbeats = property(lambda self: self.path / HEARTBEATS_DIR)
    hangs = property(lambda self: self.path / HANGS_DIR)
    slurm = property(lambda self: self.path / SLURM_DIR)
    tensorboard = property(lambda self: self.path / TENSORBOARD_DIR)
    done_file = property(lambda self: self.path / DONE_FILE)
    kill_switch = property(lambda self: self.path / KILL_SWITCH)
    excluded_nodes = property(lambda self: self.slurm / EXCLUDED_NODES)

    # --- per rank and per allocation (tag "<job id>.<restart count>", megatron_glm.runtime.job) ---
    def heartbeat(self, rank: int) -> Path:
        return self.heartbeats / f"rank{rank}.json"

    def hang_stacks(self, tag: str, rank: int) -> Path:
        return self.hangs / f"{tag}.rank{rank}.txt"

    def rank_map(self, tag: str) -> Path:
        """"procid localid nodeid node" per rank (launch/rank_entry.py)."""
        return self.slurm / f"ranks.{tag}"

    def exit_records(self, tag: str) -> Path:
        """"procid node exit_code" per rank that left glm-train by returning or raising."""
        return self.slurm / f"exits.{tag}"

    def preflight_results(self, tag: str) -> Path:
        """rank<R>.json per rank (megatron_glm.runtime.preflight)."""
        return self.slurm / f"preflight.{tag}"

    # --- DONE -------------------------------------------------------------------------------
    def is_done(self) -> bool:
        return self.done_file.is_file()

    def done_step(self) -> Optional[int]:
        """The step DONE records ("step 60"), None without DONE."""
        if not self.is_done():
            return None
        match = re.search(r"\d+", self.done_file.read_text())
        return int(match.group()) if match else None

    def mark_done(self, step: int) -> None:
        write_atomically(self.done_file, f"step {step}\n")

    def clear_done(self) -> None:
        self.done_file.unlink(missing_ok=True)

    # --- checkpoints ------------------------------------------------------------------------
    def read_latest(self) -> Tuple[Optional[str], Optional[str]]:
        """(name `latest` holds, problem): (None, None) when there is no pointer; a problem when it
        cannot be read or names nothing usable (the caller decides what to fall back to)."""
        return read_latest(self.checkpoints)

    def latest_step(self) -> Optional[int]:
        """Step of the checkpoint `latest` names, if that directory exists."""
        name, problem = self.read_latest()
        return None if name is None or problem else checkpoint_step(name)

    def published_checkpoints(self) -> List[Tuple[int, Path]]:
        """(step, dir) of every published checkpoint directory (not `.tmp`), oldest first."""
        return published_checkpoints(self.checkpoints)

    def started_count(self) -> int:
        """Start/restart events so far: the batch shell's "is the trainer up in this allocation"."""
        if not self.events.is_file():
            return 0
        count = 0
        with open(self.events, "rb") as stream:
            for line in stream:
                try:
                    kind = json.loads(line).get("kind")
                except (ValueError, AttributeError):
                    continue
                count += kind in STARTED_KINDS
        return count


def read_latest(checkpoints: Path) -> Tuple[Optional[str], Optional[str]]:
    """See RunDir.read_latest; `checkpoints` is a checkpoints root."""
    pointer = Path(checkpoints) / LATEST
    if not pointer.exists():
        return None, None
    try:
        name = pointer.read_text().strip()
    except (OSError, UnicodeDecodeError) as error:
        return None, f"{pointer} cannot be read ({error})"
    if checkpoint_step(name) is None:
        return None, f"{pointer} holds {name[:80]!r}, not a checkpoint name like iter_0000400"
    if not (Path(checkpoints) / name).is_dir():
        return name, f"{pointer} names {name}, which does not exist"
    return name, None


def published_checkpoints(checkpoints: Path) -> List[Tuple[int, Path]]:
    root = Path(checkpoints)
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        step = checkpoint_step(entry.name)
        if step is not None and not entry.name.endswith(".tmp") and entry.is_dir():
            found.append((step, entry))
    return sorted(found)


def write_latest(checkpoints: Path, name: str) -> None:
    """Point `latest` at `name` atomically (write beside, fsync, rename)."""
    write_atomically(Path(checkpoints) / LATEST, name + "\n")


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` by `text` so a reader sees the old or the new content, never a mix, even if
    the writer is killed half way (write a sibling, fsync, rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def main(argv=None) -> int:
    """`python -m megatron_glm.rundir started-count|latest-step|done RUN_DIR` for shell scripts."""
    parser = argparse.ArgumentParser(prog="python -m megatron_glm.rundir", description=main.__doc__)
    parser.add_argument("query", choices=("started-count", "latest-step", "done"))
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    run = RunDir(args.run_dir)
    if args.query == "started-count":
        print(run.started_count())
    elif args.query == "latest-step":
        step = run.latest_step()
        print("" if step is None else step)
    else:
        print("yes" if run.is_done() else "no")
    return 0


if __name__ == "__main__":
    sys.exit(main())
