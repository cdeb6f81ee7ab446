"""What every Slurm task runs: `python -m launch.rank_entry RUN_DIR -- <glm-train arguments>`.

1. Appends "procid localid nodeid nodename" to RUN_DIR/slurm/ranks.<job>.<restart>: which rank ran
   where in each allocation (a failing node is found from it; the tests check the two nodes).
2. Runs glm-train in this process (which shields its checkpoint-writer helper from Slurm's
   SIGTERM: megatron_glm.training.checkpointing.start_checkpoint_writer_helpers).
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path


def record_rank(run_dir: Path) -> None:
    env = os.environ
    line = " ".join(env.get(k, "?") for k in ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID", "SLURMD_NODENAME"))
    path = run_dir / "slurm" / f"ranks.{env.get('SLURM_JOB_ID', 'local')}.{env.get('SLURM_RESTART_COUNT', '0')}"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as out:
        out.write(line + "\n")


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2 or argv[1] != "--":
        sys.exit("usage: python -m launch.rank_entry RUN_DIR -- <glm-train arguments>")
    record_rank(Path(argv[0]))
    sys.argv = ["glm-train", *argv[2:]]
    runpy.run_module("megatron_glm.cli.train", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
