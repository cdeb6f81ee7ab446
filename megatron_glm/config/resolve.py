"""Derived config values, resolved once per run and kept from then on.

Several fields mean "work it out" when left empty: the LR decay length (0: the planned samples),
the dataset cache (empty: inside the run directory), the padded vocabulary and the GeGLU width
(None: from the other shapes). Worked out afresh on every start, they change under a resumed run
when anything they depend on changes: raising `train.steps` moved the decay end, and megatron-core's
scheduler rejected the checkpoint. So a run resolves them when it starts from scratch, records them
in its checkpoints (`common["resolved"]`) and config.yaml, and a resume takes them from the
checkpoint unless the config sets them explicitly or `train.override_lr_on_resume` asks for a new
schedule.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, Optional

from megatron_glm.config.schema import RunConfig
from megatron_glm.rundir import RunDir

SCHEDULE_FIELDS = {"peak_lr": "max_lr", "min_lr": "min_lr", "warmup_samples": "lr_warmup_steps",
                   "decay_samples": "lr_decay_steps"}
"""TrainConfig field -> the name megatron-core's OptimizerParamScheduler saves it under."""


class ScheduleChanged(ValueError):
    """A resume whose config changes the saved LR schedule without override_lr_on_resume."""


def resolve_run(run: RunConfig, run_dir: str, planned_samples: int,
                checkpoint_common: Optional[Dict[str, Any]] = None) -> RunConfig:
    """A copy of `run` with every derived value filled in. `checkpoint_common`: the common state
    of the checkpoint this start resumes from (None for a fresh run)."""
    resolved = copy.deepcopy(run)
    model, data, train = resolved.model, resolved.data, resolved.train
    model.ffn_hidden_size = model.resolved_ffn_hidden_size
    model.padded_vocab_size = model.resolved_padded_vocab_size
    train.min_lr = min(train.min_lr, train.peak_lr)  # what the scheduler uses
    if not data.cache_dir and not data.synthetic:
        data.cache_dir = str(RunDir(run_dir).dataset_cache)
    if checkpoint_common is None or train.override_lr_on_resume:
        train.decay_samples = train.decay_samples or max(planned_samples, train.warmup_samples + 1)
        return resolved
    saved = _saved_schedule(checkpoint_common)
    if train.decay_samples == 0:
        train.decay_samples = int(saved["decay_samples"])
    changed = [f"train.{name}={getattr(train, name)} (the run's schedule has {saved[name]})"
               for name in SCHEDULE_FIELDS if name in saved and float(getattr(train, name)) != float(saved[name])]
    if changed:
        raise ScheduleChanged("resuming with a different LR schedule: " + "; ".join(changed) +
                              ". Set train.override_lr_on_resume=true to switch to this config's schedule "
                              "from the current sample on, or restore the saved values.")
    return resolved


def _saved_schedule(common: Dict[str, Any]) -> Dict[str, float]:
    """The schedule a checkpoint trained with: its recorded resolved values, else (checkpoints
    written before they were recorded) the scheduler's own state."""
    recorded = common.get("resolved", {}).get("train", {})
    scheduler = common.get("scheduler", {})
    return {name: recorded.get(name, scheduler.get(key)) for name, key in SCHEDULE_FIELDS.items()
            if name in recorded or key in scheduler}


def resolved_values(run: RunConfig) -> Dict[str, Any]:
    """What a checkpoint records (`common["resolved"]`) of a resolved run."""
    return {"train": {name: getattr(run.train, name) for name in SCHEDULE_FIELDS},
            "model": {"padded_vocab_size": run.model.padded_vocab_size,
                      "ffn_hidden_size": run.model.ffn_hidden_size},
            "data": {"cache_dir": run.data.cache_dir}}
