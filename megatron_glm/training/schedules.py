"""Sample-based learning-rate schedule and global-batch ramp-up (docs/glm130b.md §3), on megatron-core.

LR: linear warmup from 0 over `warmup_samples`, cosine from the peak to `min_lr` ending at
`decay_samples` (counted from sample 0, like Megatron: the cosine spans warmup_samples ..
decay_samples), then constant `min_lr`. megatron-core's OptimizerParamScheduler does the work; it
is stepped with `scheduler.step(increment=<samples consumed by the step>)`, which is what
Megatron-LM does when training is sample-based (`--train-samples`), so its "steps" are samples.

Batch ramp-up: megatron-core's num_microbatches_calculator with `rampup_batch_size =
[start, increment, ramp_samples]` (GLM-130B: `--rampup-batch-size 192 24 5493164`).

The Embedding Gradient Shrink alpha schedule lives in megatron_glm/model/grad_shrink.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from megatron.core import num_microbatches_calculator as nmc
from megatron.core.num_microbatches_calculator import RampupBatchsizeNumMicroBatchesCalculator
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler


@dataclass
class LRScheduleConfig:
    """GLM-130B's LR schedule (docs/glm130b.md §3; LargeScale configs/wudao/wudao-130B.sh): peak 8e-5,
    min 8e-6, warmup 1,098,632 samples (0.5% of the 219,726,562 planned), cosine decay until sample
    197,753,905 (90% of planned), then min_lr. Warmup starts from 0 as in the code (the paper's
    "from 1e-7" is not what ran).

    Resuming (`load_state_dict` of a saved scheduler) and the two mid-run changes GLM-130B made
    with `--override-lr-scheduler` (step 26000: lr 4e-5; step 42700: min_lr 4e-6):

    - override_on_resume=True  -> megatron override_opt_param_scheduler=True: this config's
      peak/min LR, warmup, decay length, style and weight decay replace the checkpoint's; only the
      consumed-sample counter comes from the checkpoint, so the cosine is recomputed at the current
      position with the new peak/min (how GLM-130B's LR got "roughly halved").
    - override_on_resume=False, use_checkpoint_on_resume=False (default, Megatron-LM's default
      flags) -> megatron asserts that every value matches the checkpoint: a changed peak/min LR
      raises AssertionError at load time instead of being silently ignored. (Under `python -O`
      asserts are stripped and the checkpoint's values win silently.)
    - override_on_resume=False, use_checkpoint_on_resume=True -> the checkpoint's values win
      silently, whatever this config says.
    """

    peak_lr: float = 8e-5
    min_lr: float = 8e-6
    warmup_samples: int = 1_098_632
    decay_samples: int = 197_753_905
    """Where the cosine ends, counted from sample 0 (Megatron's --lr-decay-samples)."""
    override_on_resume: bool = False
    use_checkpoint_on_resume: bool = False
    """Only without override: take every schedule value from the checkpoint instead of asserting."""
    weight_decay: float = 0.1
    """Constant weight decay written into each param group (GLM-130B: 0.1). Param groups with a
    `wd_mult` (e.g. 0 for biases and LayerNorm) get weight_decay * wd_mult."""
    decay_style: str = "cosine"

    def __post_init__(self) -> None:
        if self.override_on_resume and self.use_checkpoint_on_resume:
            raise ValueError("override_on_resume and use_checkpoint_on_resume are exclusive")
        if not 0.0 <= self.min_lr <= self.peak_lr:
            raise ValueError(f"need 0 <= min_lr ({self.min_lr}) <= peak_lr ({self.peak_lr})")
        if not 0 <= self.warmup_samples < self.decay_samples:
            raise ValueError(f"need 0 <= warmup_samples ({self.warmup_samples}) < decay_samples "
                             f"({self.decay_samples})")


def build_lr_scheduler(optimizer, config: LRScheduleConfig) -> OptimizerParamScheduler:
    """megatron-core's OptimizerParamScheduler for `config`, counting samples.

    `optimizer` only needs `param_groups` (a list of dicts): a MegatronOptimizer, a torch optimizer,
    or anything alike. Call `scheduler.step(increment=global_batch_size)` after each optimizer step
    (the batch size of that step, which changes during the ramp-up). The constructor already sets
    each group's lr to the value at sample 0 (i.e. 0.0).
    """
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=config.peak_lr,
        min_lr=config.min_lr,
        lr_warmup_steps=config.warmup_samples,
        lr_decay_steps=config.decay_samples,
        lr_decay_style=config.decay_style,
        start_wd=config.weight_decay,
        end_wd=config.weight_decay,
        wd_incr_steps=config.decay_samples,
        wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=config.use_checkpoint_on_resume,
        override_opt_param_scheduler=config.override_on_resume,
    )


def lr_at_samples(config: LRScheduleConfig, consumed_samples: float) -> float:
    """Closed form of the schedule (cosine style), for checks and plots; matches the scheduler."""
    if config.decay_style != "cosine":
        raise ValueError("lr_at_samples implements the cosine style only")
    peak, low = config.peak_lr, config.min_lr
    if config.warmup_samples > 0 and consumed_samples <= config.warmup_samples:
        return peak * consumed_samples / config.warmup_samples
    if consumed_samples > config.decay_samples:
        return low
    ratio = (consumed_samples - config.warmup_samples) / (config.decay_samples - config.warmup_samples)
    return low + 0.5 * (math.cos(math.pi * ratio) + 1.0) * (peak - low)


@dataclass
class BatchRampup:
    """GLM-130B's global batch ramp-up (docs/glm130b.md §3): Megatron `--rampup-batch-size 192 24 5493164`
    with global batch 4224 = 176 micro-batches x 24 DP (micro batch 1).

    megatron-core: (4224 - 192) / 24 = 168 increments, one per ramp_samples / 168 = 32,697.40476...
    samples (a float, not rounded); the batch at `consumed` samples is
    start + int(consumed / 32697.40476...) * increment while consumed <= ramp_samples, the full
    batch after. So 192 up to sample 32,697, 216 from 32,698, 2208 at the midpoint 2,746,582 and
    4224 at exactly 5,493,164 (int(168.0)). The ramp-up takes 4,296 optimizer steps.
    """

    start: int = 192
    increment: int = 24
    ramp_samples: int = 5_493_164
    global_batch_size: int = 4224

    def as_megatron_list(self) -> list:
        """The `rampup_batch_size` argument of megatron-core: [start, increment, ramp_samples]."""
        return [self.start, self.increment, self.ramp_samples]

    @property
    def num_increments(self) -> int:
        return (self.global_batch_size - self.start) // self.increment

    @property
    def samples_per_increment(self) -> float:
        return self.ramp_samples / self.num_increments


def _calculator(rampup: BatchRampup, micro_batch_size: int, data_parallel_size: int,
                decrease_batch_size_if_needed: bool = False) -> RampupBatchsizeNumMicroBatchesCalculator:
    """A private megatron-core ramp-up calculator (not the global singleton)."""
    return RampupBatchsizeNumMicroBatchesCalculator(
        rampup.global_batch_size, micro_batch_size, data_parallel_size, decrease_batch_size_if_needed,
        1, rampup.start, rampup.increment, rampup.ramp_samples)


def global_batch_size_at(consumed_samples: int, rampup: Optional[BatchRampup] = None,
                         micro_batch_size: int = 1, data_parallel_size: int = 1) -> int:
    """Global batch size megatron-core uses once `consumed_samples` samples have been trained on.

    Uses a private RampupBatchsizeNumMicroBatchesCalculator, so the global calculator (if any) is
    untouched. Asserts (megatron) when a batch size on the ramp is not divisible by
    micro_batch_size x data_parallel_size.
    """
    rampup = rampup or BatchRampup()
    calc = _calculator(rampup, micro_batch_size, data_parallel_size)
    calc.update(consumed_samples, consistency_check=True)
    return calc.get_current_global_batch_size()


def rampup_steps(rampup: Optional[BatchRampup] = None) -> int:
    """Optimizer steps taken at less than the full global batch (GLM-130B: 4,296)."""
    rampup = rampup or BatchRampup()
    calc = _calculator(rampup, 1, 1)
    consumed, steps = 0, 0
    while True:
        calc.update(consumed, consistency_check=False)
        batch = calc.get_current_global_batch_size()
        if batch >= rampup.global_batch_size:
            return steps
        consumed += batch
        steps += 1


def init_num_microbatches(rampup: Optional[BatchRampup], global_batch_size: int, micro_batch_size: int,
                          data_parallel_size: int, rank: int = 0,
                          decrease_batch_size_if_needed: bool = False) -> None:
    """Initialise megatron-core's global num-microbatches calculator (a process-wide singleton).

    rampup None: constant `global_batch_size`. Otherwise rampup.global_batch_size must equal
    `global_batch_size`. Then call `update_num_microbatches(consumed_samples)` before each step and
    read `get_num_microbatches()` / `get_current_global_batch_size()`; call
    `destroy_num_microbatches()` at the end (tests must).
    """
    if rampup is not None and rampup.global_batch_size != global_batch_size:
        raise ValueError(f"rampup.global_batch_size {rampup.global_batch_size} != global_batch_size "
                         f"{global_batch_size}")
    nmc.init_num_microbatches_calculator(
        rank, None if rampup is None else rampup.as_megatron_list(), global_batch_size,
        micro_batch_size, data_parallel_size, decrease_batch_size_if_needed)


def update_num_microbatches(consumed_samples: int, consistency_check: bool = True) -> None:
    nmc.update_num_microbatches(consumed_samples, consistency_check=consistency_check)


def get_num_microbatches() -> int:
    return nmc.get_num_microbatches()


def get_current_global_batch_size() -> int:
    return nmc.get_current_global_batch_size()


def destroy_num_microbatches() -> None:
    """Drop megatron-core's global calculator so another one can be initialised."""
    nmc.destroy_num_microbatches_calculator()


class BatchSizeSchedule:
    """The global batch size of every step of a run: constant, or megatron-core's ramp-up.

    The loop asks `at(consumed_samples)` before each step; `samples_before_step(k)` answers where
    step k starts in an undisturbed run (for planning the LR decay and the dataset size, and for
    the test-only fault injector)."""

    def __init__(self, global_batch_size: int, micro_batch_size: int, data_parallel_size: int,
                 rampup: Optional[BatchRampup] = None):
        self.global_batch_size = global_batch_size
        self._calc = None if rampup is None else _calculator(rampup, micro_batch_size, data_parallel_size)

    def at(self, consumed_samples: int) -> int:
        if self._calc is None:
            return self.global_batch_size
        self._calc.update(consumed_samples, consistency_check=True)
        return self._calc.get_current_global_batch_size()

    def samples_before_step(self, step: int) -> int:
        consumed = 0
        for _ in range(step):
            consumed += self.at(consumed)
        return consumed
