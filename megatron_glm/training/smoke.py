"""`glm-train smoke`: the training loop itself for a few steps, on a throw-away run directory.

A quick check of the parallel engine at a layout (TP x PP x DP, virtual pipeline, recompute)
without choosing a run directory: it is the Trainer that `glm-train --config --run-dir` runs (the
same step, spike guard, validation and checkpoint at the end), on a temporary directory that is
removed afterwards. Data: the run's glm-prep datasets when its `data` section names them,
otherwise synthetic GLM sequences. The learning rate is constant (no warm-up, no decay) and the
spike guard only logs, so that a few steps of a tiny model show the loss falling. Single machine:
the temporary directory is the one of global rank 0's machine.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from pathlib import Path

import torch.distributed as dist

from megatron_glm.config.schema import RunConfig
from megatron_glm.rundir import EVENTS_FILE, METRICS_FILE, ExitCode


def smoke_config(run: RunConfig, steps: int, global_batch: int, micro_batch: int, seq_length: int,
                 lr: float) -> RunConfig:
    """The run config the smoke test trains: the given layout and model, a short constant-LR run."""
    run = copy.deepcopy(run)
    train = run.train
    train.steps, train.global_batch_size, train.micro_batch_size = steps, global_batch, micro_batch
    train.rampup_batch_size = []
    train.peak_lr = train.min_lr = lr
    train.warmup_samples, train.decay_samples = 0, 0
    train.eval_interval, train.save_interval, train.tensorboard = 0, 0, False
    train.spike_policy = "log"
    train.init_from = ""
    if not (run.data.sources or run.data.instruction_prefix):
        run.data.synthetic = True
        run.model.seq_length = seq_length
    return run


def summarize(run_dir: Path) -> dict:
    """First/last training loss and validation loss of the run's metrics and start event."""
    lines = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines() if line.strip()]
    losses = [line["loss"] for line in lines if "loss" in line]
    summary = {"steps": len(losses), "first_loss": losses[0], "last_loss": losses[-1],
               "relative_drop": 1.0 - losses[-1] / losses[0]}
    events = [json.loads(line) for line in (run_dir / EVENTS_FILE).read_text().splitlines() if line.strip()]
    first_val = next((e["val_loss"] for e in events if e.get("kind") == "start" and "val_loss" in e), None)
    last_val = next((line["val_loss"] for line in reversed(lines) if "val_loss" in line), None)
    if first_val is not None and last_val is not None:
        summary.update(first_val_loss=first_val, last_val_loss=last_val,
                       val_relative_drop=1.0 - last_val / first_val)
    return summary


def run_smoke(run: RunConfig, steps: int, global_batch: int, micro_batch: int, seq_length: int,
              lr: float) -> dict:
    """Collective (process groups initialised): train, then return summarize() on every rank."""
    from megatron_glm.training.loop import run_training

    path = [tempfile.mkdtemp(prefix="glm-smoke-") if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(path, src=0)
    run_dir = Path(path[0])
    try:
        code = run_training(smoke_config(run, steps, global_batch, micro_batch, seq_length, lr), str(run_dir))
        if code != ExitCode.DONE:
            raise RuntimeError(f"the smoke run ended with exit code {int(code)}")
        dist.barrier()  # the writer rank's metrics are complete
        summary = summarize(run_dir)
        dist.barrier()  # every rank has read them
        return summary
    finally:  # no collective here: a rank that failed must not wait for the others
        if dist.get_rank() == 0:
            shutil.rmtree(run_dir, ignore_errors=True)
