"""The CPU demo job until the real training loop exists: GLM steps at the configured layout.

Every rank builds its chunks, wraps them in megatron-core DDP, builds the DistributedOptimizer and
runs `steps` global batches through the configured pipeline schedule. Data: the run's `data`
section when it names sources (the glm-prep datasets, blended, with a validation split evaluated
before and after training), else synthetic GLM sequences. Rank 0 prints one JSON line per step.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Callable

from megatron.core import parallel_state

from megatron_glm.config.schema import RunConfig
from megatron_glm.model.build import build_model_chunks
from megatron_glm.training.batches import DatasetBatches, SyntheticBatches
from megatron_glm.training.step import build_optimizer, evaluate, train_step, wrap_for_training


def _is_reporting_rank() -> bool:
    return (parallel_state.get_data_parallel_rank() == 0 and parallel_state.get_tensor_model_parallel_rank() == 0
            and parallel_state.get_pipeline_model_parallel_rank() == 0)


def run_smoke(run: RunConfig, steps: int, global_batch: int, micro_batch: int, seq_length: int,
              lr: float, report: Callable[[dict], None] = lambda line: print(json.dumps(line), flush=True)) -> dict:
    """Train `steps` global batches; returns first/last training loss and validation losses."""
    dp_size = parallel_state.get_data_parallel_world_size()
    if global_batch % (dp_size * micro_batch):
        raise ValueError(f"global batch {global_batch} must be a multiple of data-parallel size "
                         f"{dp_size} x micro batch {micro_batch}")
    if run.data.sources:
        if not run.data.cache_dir:  # smoke runs on one machine: its temporary directory is shared
            run.data.cache_dir = os.path.join(tempfile.gettempdir(), "glm-smoke-dataset-cache")
        data = DatasetBatches(run, steps * global_batch, global_batch, micro_batch)
        seq_length = run.model.seq_length
    else:
        data = SyntheticBatches(run, global_batch, micro_batch, seq_length)
    model = wrap_for_training(build_model_chunks(run), overlap_grad_reduce=run.parallel.overlap_grad_reduce)
    optimizer = build_optimizer(model, lr=lr)
    num_micro = global_batch // parallel_state.get_data_parallel_world_size() // micro_batch
    validation = data.validation_batches()
    summary: dict = {}
    if validation is not None:
        summary["first_val_loss"] = evaluate(model, validation, num_micro, micro_batch, seq_length)
    losses = []
    for step in range(steps):
        started = time.perf_counter()
        result = train_step(model, optimizer, data.batches_at(step * global_batch), num_micro, micro_batch, seq_length)
        losses.append(result.loss)
        if _is_reporting_rank():
            grad_norm = None if result.grad_norm is None else round(float(result.grad_norm), 5)
            report({"step": step + 1, "loss": round(result.loss, 5), "grad_norm": grad_norm,
                    "skipped": not result.update_successful,
                    "step_time_s": round(time.perf_counter() - started, 3)})
    summary.update(first_loss=losses[0], last_loss=losses[-1])
    if validation is not None:
        summary["last_val_loss"] = evaluate(model, validation, num_micro, micro_batch, seq_length)
        summary["val_relative_drop"] = 1.0 - summary["last_val_loss"] / summary["first_val_loss"]
    summary["relative_drop"] = 1.0 - losses[-1] / losses[0]
    return summary
