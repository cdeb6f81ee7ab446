"""The CPU demo job until the real training loop exists: GLM steps on synthetic sequences.

Every rank builds its chunks, wraps them in megatron-core DDP, builds the DistributedOptimizer and
runs `steps` global batches through the configured pipeline schedule. Rank 0 prints one JSON line
per step. The data is the same on every layout, so losses can be compared across layouts.
"""

from __future__ import annotations

import json
import time
from typing import List

from megatron.core import parallel_state

from megatron_glm.config.schema import RunConfig
from megatron_glm.data.synthetic import synthetic_samples
from megatron_glm.model.build import build_model_chunks
from megatron_glm.training.step import build_optimizer, collate, train_step, wrap_for_training


def run_smoke(run: RunConfig, steps: int, global_batch: int, micro_batch: int, seq_length: int,
              lr: float) -> List[float]:
    dp_size = parallel_state.get_data_parallel_world_size()
    dp_rank = parallel_state.get_data_parallel_rank()
    if global_batch % (dp_size * micro_batch):
        raise ValueError(f"global batch {global_batch} must be a multiple of data-parallel size "
                         f"{dp_size} x micro batch {micro_batch}")
    per_rank = global_batch // dp_size
    model = wrap_for_training(build_model_chunks(run))
    optimizer = build_optimizer(model, lr=lr)
    losses = []
    for step in range(steps):
        samples = synthetic_samples(global_batch, seq_length, run.model.vocab_size, seed=run.seed + step)
        mine = samples[dp_rank * per_rank:(dp_rank + 1) * per_rank]
        batches = [collate(mine[i:i + micro_batch]) for i in range(0, per_rank, micro_batch)]
        started = time.perf_counter()
        result = train_step(model, optimizer, batches, len(batches), micro_batch, seq_length)
        losses.append(result.loss)
        if parallel_state.get_data_parallel_rank() == 0 and parallel_state.get_tensor_model_parallel_rank() == 0 \
                and parallel_state.get_pipeline_model_parallel_rank() == 0:
            grad_norm = None if result.grad_norm is None else round(float(result.grad_norm), 5)
            print(json.dumps({"step": step + 1, "loss": round(result.loss, 5), "grad_norm": grad_norm,
                              "skipped": not result.update_successful,
                              "step_time_s": round(time.perf_counter() - started, 3)}), flush=True)
    return losses
