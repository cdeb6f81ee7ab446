"""Check the planner against the model megatron-core actually builds, at full scale, on one machine.

For each pipeline stage: torch's fake process group (FakeStore + backend "fake": collectives return
at once, no peers exist) joins a world of the layout's size as the stage's TP-0/DP-0 rank,
megatron-core's parallel_state is initialised for the layout (768 ranks for GLM-130B's TP4 x PP8 x
DP24), and our `build_model` builds that rank's shard on the meta device (shapes and dtypes, no
memory), wrapped in Float16Module for fp16/bf16 as the trainer does (LayerNorm parameters are
built in fp32 and cast there). Its parameter bytes are what the planner's weights / gradients / optimizer terms must be.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, List

import torch
import torch.distributed as dist

from launch.memory_model import Layout
from megatron_glm.config.schema import RunConfig


@dataclass
class BuiltStage:
    stage: int
    params: int
    weight_bytes: int
    """Sum of numel x element size of the built parameters (in the run's precision)."""


@contextlib.contextmanager
def fake_world(rank: int, world_size: int, layout: Layout) -> Iterator[None]:
    """A fake process group of `world_size` and megatron-core's groups for `layout`, torn down after."""
    from megatron.core import parallel_state
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from megatron_glm.runtime.cpu_backend import install_cpu_backend

    if dist.is_initialized():
        raise RuntimeError("a process group already exists; the fake world needs a clean process")
    install_cpu_backend()
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)
    try:
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=layout.tp, pipeline_model_parallel_size=layout.pp,
            virtual_pipeline_model_parallel_size=layout.vpp if layout.vpp > 1 else None,
            create_gloo_process_groups=False)
        yield
    finally:
        parallel_state.destroy_model_parallel()
        dist.destroy_process_group()


def build_stages_on_meta(run: RunConfig, layout: Layout) -> List[BuiltStage]:
    """Every pipeline stage's shard as megatron-core builds it at the layout's full world size."""
    from megatron.core import parallel_state
    from megatron.core.transformer.module import Float16Module

    from megatron_glm.model.build import build_model_chunks
    from megatron_glm.model.transformer_config import build_transformer_config

    stages = []
    for stage in range(layout.pp):
        # megatron-core's default rank order is tp-cp-ep-dp-pp: stage k starts at rank k*tp*dp.
        rank = stage * layout.tp * layout.dp
        with fake_world(rank, layout.world, layout), torch.device("meta"):
            assert parallel_state.get_pipeline_model_parallel_rank() == stage
            config = build_transformer_config(run, use_cpu_initialization=True)
            config.perform_initialization = False
            chunks = build_model_chunks(run, config=config)
            if config.fp16 or config.bf16:  # as the trainer: every parameter in half precision
                chunks = [Float16Module(config, chunk) for chunk in chunks]
            params = [p for chunk in chunks for p in chunk.parameters()]
            stages.append(BuiltStage(stage=stage, params=sum(p.numel() for p in params),
                                     weight_bytes=sum(p.numel() * p.element_size() for p in params)))
    return stages
