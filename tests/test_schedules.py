"""LR schedule and batch ramp-up (megatron_glm/training/schedules.py) on megatron-core."""

from __future__ import annotations

import pytest
import torch

from megatron_glm.training import schedules
from megatron_glm.training.schedules import (
    BatchRampup,
    LRScheduleConfig,
    build_lr_scheduler,
    global_batch_size_at,
    lr_at_samples,
    rampup_steps,
)

SMALL = LRScheduleConfig(peak_lr=1e-3, min_lr=1e-4, warmup_samples=100, decay_samples=1100)


def _optimizer():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=123.0)


def _lr_after(config, samples, increments=None):
    opt = _optimizer()
    sched = build_lr_scheduler(opt, config)
    for inc in increments or [samples]:
        sched.step(increment=inc)
    return opt.param_groups[0]["lr"], sched, opt


def test_defaults_are_glm130b():
    c = LRScheduleConfig()
    assert (c.peak_lr, c.min_lr, c.warmup_samples, c.decay_samples) == (8e-5, 8e-6, 1_098_632, 197_753_905)
    assert c.override_on_resume is False and c.weight_decay == 0.1


def test_warmup_linear_from_zero():
    opt = _optimizer()
    sched = build_lr_scheduler(opt, SMALL)
    assert opt.param_groups[0]["lr"] == 0.0  # the constructor applies sample 0
    assert opt.param_groups[0]["weight_decay"] == 0.1
    for consumed in (10, 25, 50, 99):
        sched.step(increment=consumed - sched.num_steps)
        assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * consumed / 100, rel=1e-12)
    # variable increments (batch ramp-up) only matter through the total consumed
    assert _lr_after(SMALL, 0, [7, 13, 30])[0] == pytest.approx(5e-4)


def test_cosine_points():
    peak, low = SMALL.peak_lr, SMALL.min_lr
    assert _lr_after(SMALL, 100)[0] == pytest.approx(peak)  # warmup end = peak
    assert _lr_after(SMALL, 600)[0] == pytest.approx((peak + low) / 2)  # midpoint of 100..1100
    assert _lr_after(SMALL, 1100)[0] == pytest.approx(low)  # decay end (counted from 0)
    assert _lr_after(SMALL, 1101)[0] == low
    assert _lr_after(SMALL, 10 ** 9)[0] == low
    for consumed in (0, 50, 100, 101, 350, 600, 999, 1100, 1101, 5000):
        assert _lr_after(SMALL, consumed)[0] == pytest.approx(lr_at_samples(SMALL, consumed), rel=1e-12)


def test_glm130b_schedule_points():
    c = LRScheduleConfig()
    assert _lr_after(c, 549_316)[0] == pytest.approx(8e-5 * 549_316 / 1_098_632)
    assert _lr_after(c, 1_098_632)[0] == pytest.approx(8e-5)
    mid = 1_098_632 + (197_753_905 - 1_098_632) / 2
    assert lr_at_samples(c, mid) == pytest.approx(4.4e-5)
    assert _lr_after(c, 197_753_905)[0] == pytest.approx(8e-6)
    assert _lr_after(c, 219_726_562)[0] == 8e-6


def _resume(saved_at, new_config, old_config=SMALL):
    _, old, _ = _lr_after(old_config, saved_at)
    state = old.state_dict()
    opt = _optimizer()
    sched = build_lr_scheduler(opt, new_config)
    sched.load_state_dict(state)
    return opt.param_groups[0]["lr"], sched


def test_resume_same_config_restores_position():
    lr, sched = _resume(600, SMALL)
    assert sched.num_steps == 600 and lr == pytest.approx((SMALL.peak_lr + SMALL.min_lr) / 2)


def test_override_on_resume_applies_new_peak_and_min():
    """GLM-130B at step 26k: --lr 4e-5 with --override-lr-scheduler. The consumed samples come from the
    checkpoint, the new peak/min apply and the cosine is recomputed at the current position."""
    new = LRScheduleConfig(peak_lr=5e-4, min_lr=5e-5, warmup_samples=100, decay_samples=1100,
                           override_on_resume=True)
    lr, sched = _resume(600, new)
    assert sched.num_steps == 600
    assert (sched.max_lr, sched.min_lr) == (5e-4, 5e-5)
    assert lr == pytest.approx((5e-4 + 5e-5) / 2)
    sched.step(increment=600)
    assert sched.optimizer.param_groups[0]["lr"] == 5e-5


def test_without_override_megatron_asserts_on_changed_lr():
    """Default (Megatron-LM's default flags): a changed peak LR is refused at load time."""
    new = LRScheduleConfig(peak_lr=5e-4, min_lr=1e-4, warmup_samples=100, decay_samples=1100)
    with pytest.raises(AssertionError, match="do not match"):
        _resume(600, new)
    new_min = LRScheduleConfig(peak_lr=1e-3, min_lr=5e-5, warmup_samples=100, decay_samples=1100)
    with pytest.raises(AssertionError, match="do not match"):
        _resume(600, new_min)


def test_use_checkpoint_on_resume_keeps_checkpoint_values():
    new = LRScheduleConfig(peak_lr=5e-4, min_lr=5e-5, warmup_samples=100, decay_samples=1100,
                           use_checkpoint_on_resume=True)
    lr, sched = _resume(600, new)
    assert (sched.max_lr, sched.min_lr) == (SMALL.peak_lr, SMALL.min_lr)
    assert lr == pytest.approx((SMALL.peak_lr + SMALL.min_lr) / 2)
    with pytest.raises(ValueError):
        LRScheduleConfig(override_on_resume=True, use_checkpoint_on_resume=True)


def test_rampup_glm130b():
    r = BatchRampup()
    assert r.as_megatron_list() == [192, 24, 5_493_164]
    assert r.num_increments == 168
    assert r.samples_per_increment == pytest.approx(32_697.4047619, abs=1e-6)  # not rounded
    expected = {0: 192, 32_697: 192, 32_698: 216, 65_394: 216, 65_395: 240,
                2_746_582: 192 + 84 * 24, 5_493_163: 4200, 5_493_164: 4224, 5_493_165: 4224,
                10 ** 9: 4224}
    for consumed, batch in expected.items():
        assert global_batch_size_at(consumed) == batch, consumed
        assert batch == (4224 if consumed > 5_493_164 else 192 + int(consumed / (5_493_164 / 168)) * 24)
    # GLM-130B's DP 24, micro batch 1: every ramp value is divisible (megatron checks it)
    assert global_batch_size_at(1_000_000, micro_batch_size=1, data_parallel_size=24) == 912
    with pytest.raises(AssertionError):
        global_batch_size_at(32_698, micro_batch_size=1, data_parallel_size=48)  # 216 % 48 != 0
    assert rampup_steps() == 4296


def test_global_calculator_wrapper():
    schedules.init_num_microbatches(BatchRampup(), 4224, micro_batch_size=1, data_parallel_size=24)
    try:
        assert schedules.get_current_global_batch_size() == 192
        assert schedules.get_num_microbatches() == 8
        schedules.update_num_microbatches(32_698)
        assert schedules.get_current_global_batch_size() == 216 and schedules.get_num_microbatches() == 9
        schedules.update_num_microbatches(6_000_000)
        assert schedules.get_current_global_batch_size() == 4224 and schedules.get_num_microbatches() == 176
    finally:
        schedules.destroy_num_microbatches()
    schedules.init_num_microbatches(None, 64, micro_batch_size=2, data_parallel_size=4)
    try:
        assert schedules.get_num_microbatches() == 8
    finally:
        schedules.destroy_num_microbatches()
    with pytest.raises(ValueError):
        schedules.init_num_microbatches(BatchRampup(), 2048, 1, 1)
