"""What every Slurm task runs: `python -m launch.rank_entry RUN_DIR -- <glm-train arguments>`.

1. Appends "procid localid nodeid nodename" to RUN_DIR/slurm/ranks.<job>.<restart>: which rank ran
   where in each allocation (the job hooks map failed ranks to nodes with it).
2. Runs glm-train in this process (which shields its checkpoint-writer helper from Slurm's
   SIGTERM: megatron_glm.training.checkpointing.start_checkpoint_writer_helpers).
3. Appends "procid nodename exit_code" to RUN_DIR/slurm/exits.<job>.<restart> when glm-train
   returns or raises: srun reports one code for all tasks, the job hooks need to know which ranks
   failed. A rank that is killed, or that the hang watchdog ends (os._exit), records nothing.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

from megatron_glm.rundir import RunDir
from megatron_glm.runtime.job import job_tag


def _append(path: Path, line: str) -> None:
    """One write of a whole line on an O_APPEND file: lines of concurrent ranks never interleave."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def record_rank(run_dir: Path) -> None:
    env = os.environ
    line = " ".join(env.get(k, "?") for k in ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID", "SLURMD_NODENAME"))
    _append(RunDir(run_dir).rank_map(job_tag()), line)


def record_exit(run_dir: Path, code: int) -> None:
    """Never raises: on a full disk (exit 74) the exit code matters more than its record."""
    env = os.environ
    try:
        _append(RunDir(run_dir).exit_records(job_tag()),
                f"{env.get('SLURM_PROCID', '?')} {env.get('SLURMD_NODENAME', '?')} {code}")
    except OSError as error:
        print(f"rank_entry: could not record exit code {code}: {error}", file=sys.stderr)


def exit_status(code) -> int:
    """The process exit status `sys.exit(code)` leads to."""
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2 or argv[1] != "--":
        sys.exit("usage: python -m launch.rank_entry RUN_DIR -- <glm-train arguments>")
    run_dir = Path(argv[0])
    record_rank(run_dir)
    sys.argv = ["glm-train", *argv[2:]]
    code = 1  # an exception escaping glm-train ends the process with 1
    try:
        runpy.run_module("megatron_glm.cli.train", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as leaving:
        code = exit_status(leaving.code)
        raise
    finally:
        record_exit(run_dir, code)


if __name__ == "__main__":
    main()
