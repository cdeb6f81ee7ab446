"""Embedding Gradient Shrink (docs/glm130b.md §4.2): x * alpha + x.detach() * (1 - alpha).

The forward value is unchanged; the gradient that flows back through x is multiplied by alpha.
GLM-130B applies it to the word-embedding output and (from step ~22.8k) to the tied weight used for
the logits. alpha follows a piecewise-linear schedule of [step, alpha] knots.
"""

from __future__ import annotations

import bisect
from typing import Sequence, Tuple

import torch


def shrink_gradient(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """Identity in the forward pass; scales the gradient by alpha. alpha == 1 is a no-op."""
    if alpha == 1.0:
        return x
    return x * alpha + x.detach() * (1.0 - alpha)


class GradShrinkSchedule:
    """alpha as a function of the optimizer step.

    Knots are (step, alpha) pairs, linearly interpolated between neighbours and held constant before
    the first and after the last. Two knots at the same step make a jump (the later one wins from
    that step on). No knots: the constant `alpha`.
    """

    def __init__(self, alpha: float = 1.0, knots: Sequence[Tuple[int, float]] = ()):
        self.constant = float(alpha)
        self.steps = [int(step) for step, _ in knots]
        self.alphas = [float(a) for _, a in knots]
        if self.steps != sorted(self.steps):
            raise ValueError(f"grad-shrink schedule steps must be non-decreasing: {self.steps}")

    def alpha_at(self, step: int) -> float:
        if not self.steps:
            return self.constant
        if step < self.steps[0]:
            return self.alphas[0]
        right = bisect.bisect_right(self.steps, step)  # first knot strictly after `step`
        left = right - 1  # the last knot at or before `step` (the later one of a jump)
        if right == len(self.steps) or self.steps[left] == step:
            return self.alphas[left]
        s0, s1 = self.steps[left], self.steps[right]
        a0, a1 = self.alphas[left], self.alphas[right]
        return a0 + (a1 - a0) * (step - s0) / (s1 - s0)
