"""What each rank runs in tests/test_preflight.py (launched by multirank.harness.spawn_ranks):

    preflight_ranks.py SCENARIO WORKDIR NODES

The ranks are spread over NODES simulated nodes (SLURMD_NODENAME node0, node1, ...: rank r on
node r * NODES // WORLD_SIZE), join a gloo group and run the pre-flight check on WORKDIR/run.
Scenarios: "pass" (nothing wrong); "corrupt_last_node" (every rank of the last node corrupts
what it sends, as a bad NIC would). Exit 0 when the check passed, 77 when it failed.
"""

from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path

import torch.distributed as dist

from megatron_glm.rundir import ExitCode


def main() -> int:
    scenario, workdir, nodes = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    node = rank * nodes // world
    os.environ["SLURMD_NODENAME"] = f"node{node}"
    os.environ["SLURM_JOB_ID"], os.environ["SLURM_RESTART_COUNT"] = "500", "1"
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    from megatron_glm.runtime import preflight

    if scenario == "corrupt_last_node" and node == nodes - 1:
        honest = dist.all_reduce

        def corrupting(tensor, *args, **kwargs):
            tensor[:10] += 1000.0
            return honest(tensor, *args, **kwargs)

        preflight.dist.all_reduce = corrupting
    try:
        preflight.preflight(workdir / "run", timeout_s=20)
    except preflight.PreflightFailed as failure:
        print(failure, flush=True)
        return int(ExitCode.PREFLIGHT)
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
