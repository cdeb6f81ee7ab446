import pytest
import torch

from megatron_glm.model.grad_shrink import GradShrinkSchedule, shrink_gradient


def test_forward_unchanged_gradient_scaled():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0)).requires_grad_()
    y = shrink_gradient(x, 0.1)
    torch.testing.assert_close(y, x, rtol=3e-7, atol=0)  # x*a + x*(1-a): equal up to two roundings
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.full((1000,), 0.1))


def test_alpha_one_is_identity():
    x = torch.randn(3, requires_grad=True)
    assert shrink_gradient(x, 1.0) is x


def test_constant_schedule():
    assert GradShrinkSchedule(alpha=0.1).alpha_at(123456) == 0.1


def test_glm130b_history_schedule():
    """docs/glm130b.md §4.2: 0.1 until 6000, ramp to 1 by 6500, 1.0, then 0.165 -> 1 over 6000 steps."""
    schedule = GradShrinkSchedule(knots=[(0, 0.1), (6000, 0.1), (6500, 1.0), (22850, 1.0),
                                         (22850, 0.165), (28850, 1.0), (35200, 1.0), (35200, 0.1)])
    assert schedule.alpha_at(0) == 0.1
    assert schedule.alpha_at(6000) == 0.1
    assert schedule.alpha_at(6250) == pytest.approx(0.55)
    assert schedule.alpha_at(10000) == 1.0
    assert schedule.alpha_at(22849) == 1.0
    assert schedule.alpha_at(22850) == 0.165  # a jump: the later knot wins at its step
    assert schedule.alpha_at(25850) == pytest.approx(0.5825)
    assert schedule.alpha_at(35200) == 0.1
    assert schedule.alpha_at(49300) == 0.1


def test_unsorted_knots_rejected():
    with pytest.raises(ValueError):
        GradShrinkSchedule(knots=[(10, 0.5), (5, 1.0)])
