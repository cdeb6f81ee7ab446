"""Who am I in the job, and megatron-core's process groups for the configured layout.

Rank discovery understands torchrun (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and
Slurm with one task per GPU under `srun` (SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS,
SLURM_JOB_NODELIST -> the first host is the rendezvous address). On a machine without CUDA the CPU
backend is installed and gloo is used, so the same code runs in tests and on a laptop.
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass
from typing import List, Mapping, Optional

import torch
import torch.distributed as dist

from megatron_glm.config.schema import RunConfig
from megatron_glm.runtime.cpu_backend import install_cpu_backend

DEFAULT_PORT = 29500


@dataclass(frozen=True)
class WorldInfo:
    rank: int
    local_rank: int
    world_size: int
    master_addr: str
    master_port: int
    launcher: str  # "torchrun", "slurm" or "single"


def _split_top_level(text: str) -> List[str]:
    """Split on commas that are not inside [...]."""
    parts, depth, current = [], 0, []
    for char in text:
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        depth += {"[": 1, "]": -1}.get(char, 0)
        current.append(char)
    parts.append("".join(current))
    return [part for part in parts if part]


def _expand_ranges(ranges: str) -> List[str]:
    values = []
    for part in ranges.split(","):
        if "-" in part:
            start, end = part.split("-", 1)
            values.extend(f"{i:0{len(start)}d}" for i in range(int(start), int(end) + 1))
        else:
            values.append(part)
    return values


def _expand_host(pattern: str) -> List[str]:
    match = re.search(r"\[([^\]]*)\]", pattern)
    if not match:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end():]
    return [head + value + rest for value in _expand_ranges(match.group(1)) for rest in _expand_host(tail)]


def expand_slurm_nodelist(nodelist: str) -> List[str]:
    """Expand Slurm's compressed host list: "gpu[001-003,7],login1" -> gpu001 gpu002 gpu003 gpu7 login1
    (several bracket groups per name, "r[1-2]n[01-02]", expand as a product, in Slurm's order)."""
    if nodelist.count("[") != nodelist.count("]"):
        raise ValueError(f"malformed Slurm node list {nodelist!r}")
    return [host for pattern in _split_top_level(nodelist.strip()) for host in _expand_host(pattern)]


def discover_world(env: Optional[Mapping[str, str]] = None) -> WorldInfo:
    """Rank/world from torchrun's variables, else Slurm's, else a single process."""
    env = os.environ if env is None else env
    port = int(env.get("MASTER_PORT", DEFAULT_PORT))
    if "RANK" in env and "WORLD_SIZE" in env:
        return WorldInfo(
            rank=int(env["RANK"]),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            world_size=int(env["WORLD_SIZE"]),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=port,
            launcher="torchrun",
        )
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST", "")
        hosts = expand_slurm_nodelist(nodelist) if nodelist else []
        master = env.get("MASTER_ADDR") or (hosts[0] if hosts else "127.0.0.1")
        if "MASTER_PORT" not in env and "SLURM_JOB_ID" in env:
            # Same port on every task of the job, different across jobs sharing a node.
            port = 20000 + int(env["SLURM_JOB_ID"]) % 20000
        return WorldInfo(
            rank=int(env["SLURM_PROCID"]),
            local_rank=int(env.get("SLURM_LOCALID", 0)),
            world_size=int(env["SLURM_NTASKS"]),
            master_addr=master,
            master_port=port,
            launcher="slurm",
        )
    return WorldInfo(0, 0, 1, env.get("MASTER_ADDR", "127.0.0.1"), port, "single")


COLLECTIVE_TIMEOUT_ENV = "GLM_COLLECTIVE_TIMEOUT_S"
"""Seconds a collective may wait before NCCL/gloo abort it; set per cluster in the profile's `env`
(a 768-GPU job needs longer than a laptop: first-iteration NCCL setup, slow checkpoint loads)."""


def collective_timeout_s(env=None) -> float:
    value = (os.environ if env is None else env).get(COLLECTIVE_TIMEOUT_ENV, "")
    try:
        return float(value) if value else 600.0
    except ValueError:
        raise ValueError(f"{COLLECTIVE_TIMEOUT_ENV}={value!r} is not a number of seconds") from None


def initialize_distributed(
    run: RunConfig,
    world: Optional[WorldInfo] = None,
    timeout_s: Optional[float] = None,
) -> WorldInfo:
    """Create the default process group and megatron-core's TP/PP/DP groups; seed the RNGs.

    CUDA: NCCL, one device per local rank. No CUDA: the CPU backend and gloo. timeout_s: the
    collectives' timeout (None: $GLM_COLLECTIVE_TIMEOUT_S, from the cluster profile, else 600 s).
    """
    timeout_s = collective_timeout_s() if timeout_s is None else timeout_s
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    world = world or discover_world()
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        torch.cuda.set_device(world.local_rank % torch.cuda.device_count())
    else:
        install_cpu_backend()
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if on_gpu else "gloo",
            init_method=f"tcp://{world.master_addr}:{world.master_port}",
            rank=world.rank,
            world_size=world.world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    par = run.parallel
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=par.tensor,
        pipeline_model_parallel_size=par.pipeline,
        virtual_pipeline_model_parallel_size=par.virtual_pipeline,
        distributed_timeout_minutes=max(1, round(timeout_s / 60)),
    )
    # Offset by pipeline stage (as Megatron-LM) so that stages do not initialise their different
    # layers from one stream; megatron derives the per-TP-rank dropout/init streams from this seed.
    seed = run.seed + 100 * parallel_state.get_pipeline_model_parallel_rank()
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed)
    return world


def destroy_distributed() -> None:
    """Tear down megatron-core's groups and the default group (safe to call twice)."""
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
