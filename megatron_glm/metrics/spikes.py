"""Loss / grad-norm spike detection, shared by the trainer's spike guard and the dashboard.

One detector, three uses:

* **online** in the trainer (:meth:`SpikeDetector.update`, one value per step). The
  decision is pure, deterministic IEEE-754 double arithmetic on Python floats (no
  randomness, no wall clock, no torch, no reductions whose order could vary), so every
  rank given the same ``(step, loss, grad_norm)`` sequence makes the same decisions.
  :meth:`SpikeDetector.state_dict` is plain ints/floats, so a resumed run continues
  with bit-identical decisions;
* **offline** over a whole logged series (:func:`detect_spikes`);
* **incrementally** for a live dashboard: keep a :class:`SpikeDetector` and feed it the
  new points (or call :meth:`SpikeDetector.update_many`).

There is one implementation of the rule, ``_scan``: a tight loop over Python floats (about 1 s per
1,000,000 steps). The dashboard does not rescan a long run each time it opens it: it keeps the
detector's state and spikes with a columnar copy of the metrics (megatron_glm/monitor/column_cache.py)
and feeds the detector only the steps appended since.

Background (GLM-130B §4, docs/glm130b.md): grad-norm spikes preceded loss
collapse by a few steps; the run was rolled back and data skipped twice (40701-40900,
42401-42600). The detector flags both kinds of event so the guard can act early.

The rule
--------
Defaults (:class:`SpikeRule`): ``alpha=0.02`` (~50-step memory), ``warmup_steps=20``,
``loss_ratio=1.1``, ``loss_sigmas=5``, ``min_loss_delta=0.05``, ``grad_norm_ratio=10``,
``max_consecutive=50``. Measured at these defaults (``tests/test_monitor_detector.py``): recall 1.0
on injected +20..100% loss jumps, 15-100x grad-norm spikes and NaNs; <= 1 false alarm per 100,000
clean steps on four curve families.

Baselines are exponentially weighted moving (EWM) statistics over *accepted* steps:

* loss: EWM mean ``mu``, and the noise variance ``var``: the EWM of ``(x - x_prev)**2 / 2``,
  half the squared change from the previous accepted loss ``x_prev`` (std ``sigma = sqrt(var)``);
* grad norm: EWM mean ``g``.

Why step-to-step changes and not the spread around ``mu``: early in training the loss falls
steadily (5.0 -> 3.1 in 150 steps), ``mu`` lags behind the curve, and the spread around it is
mostly that lag, not noise: it grew to 0.4-0.5 there, so a +48 % jump at step 150 (1.2 above
``mu``) stayed under 5 sigma (``synthetic.early_fall``). A change between neighbouring steps
barely sees a smooth trend (only its slope, squared), so ``var`` stays the noise variance on
falling and flat curves alike (for independent noise, ``E[(x - x_prev)**2] / 2`` is exactly the
noise variance). On the synthetic suite the two estimates make the same decisions everywhere
else (every injected spike, every false alarm).

Update with weight ``a = max(alpha, 1/n)`` where ``n`` counts the values folded so far
(``mu += a*(x-mu)``), and ``var`` likewise over the ``n - 1`` changes
(``var += b*((x-x_prev)**2/2 - var)``, ``b = max(alpha, 1/(n-1))``). For the first ``1/alpha``
values these are exact arithmetic means, so the baseline has no start-up bias; afterwards they
are plain EWMs with ``alpha`` (0.02 ~ 50-step memory).

For each step, in this order:

1. **Non-finite.** If ``loss`` is NaN/±Inf, or ``grad_norm`` is given and NaN/±Inf, the
   step is a spike with reason ``"non-finite"``, ALWAYS, even during warm-up.
   Nothing is folded into the baseline and the consecutive-spike counter is untouched
   (a run of NaNs never re-anchors; it alarms for as long as it lasts).
2. **Loss spike** (only once ``warmup_steps`` finite losses have been folded in)::

       d = loss - mu
       d > min_loss_delta  AND  loss > loss_ratio * mu  AND  d > loss_sigmas * sigma

   i.e. the jump must be large in absolute terms (floor against noise on tiny losses),
   in relative terms (metaseq's "loss > EWM * ratio" skip rule) and statistically
   (more than ``loss_sigmas`` noise standard deviations above the EWM mean). Losses are
   assumed non-negative (cross-entropy). Only upward jumps are spikes.
3. **Grad-norm spike** (only if ``grad_norm`` is given and ``warmup_steps`` finite grad
   norms have been folded in)::

       grad_norm > grad_norm_ratio * g

   Adapted from Megatron-core's ``RerunStateMachine.is_unexpectedly_large`` ("value >=
   10x the max of the first 100 samples"): here the reference is the EWM mean of
   accepted grad norms instead of a frozen max, because the grad norm legitimately
   drifts by orders of magnitude over training (GLM-130B: embedding grad norm 170+
   early, far smaller later), and a mean is O(1) state that checkpoints as one float.
   A mean is below the max, so 10x the mean is somewhat stricter than 10x the max;
   normal 2-3x wiggles stay far below it.
4. Either rule triggers. Reason is ``"loss"``, ``"grad_norm"`` or ``"loss+grad_norm"``.
   ``grad_norm=None`` means "not logged": only the loss rule applies and the grad-norm
   baseline is untouched.

**Spiking values are NOT folded into the baseline** (neither the loss nor the grad norm
of a flagged step), so a plateau of spikes stays detected instead of dragging the
baseline up after it. A non-spike step folds its loss (and grad norm, if given) and
resets the consecutive-spike counter.

**Re-anchoring.** After ``max_consecutive`` consecutive finite spikes the baseline is
replaced by the statistics of that run of spikes (arithmetic mean and population variance
of the losses as ``mu`` and ``var``, its last loss as ``x_prev``, mean of the grad norms) and
the counter resets. Reason: a genuine level
shift (LR change, new data mixture, a resumed run with different settings) would
otherwise never be folded in and would alarm forever; 50 steps of a stable new level is
strong evidence the level is real, and the first ``max_consecutive`` steps are still
reported so the guard/dashboard sees the shift. ``max_consecutive=0`` disables it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from itertools import repeat
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["SpikeRule", "Spike", "SpikeDetector", "detect_spikes", "REASONS"]

REASONS = ("loss", "grad_norm", "loss+grad_norm", "non-finite")


@dataclass(frozen=True)
class SpikeRule:
    """Thresholds of the spike rule (see the module docstring for the exact rule).

    Defaults were tuned on synthetic pretraining-like curves (``tests/test_spikes.py``):
    0 false alarms on 20k-step noisy decreasing curves over several seeds, while
    catching +15%..+100% loss jumps and 15-100x grad-norm spikes.
    """

    alpha: float = 0.02
    """EWM smoothing weight; 0.02 ~ 50-step memory."""
    warmup_steps: int = 20
    """No loss (grad-norm) decision before this many finite losses (grad norms) were folded in."""
    loss_ratio: float = 1.1
    """Loss spike needs ``loss > loss_ratio * baseline`` (metaseq-style EWM ratio)."""
    loss_sigmas: float = 5.0
    """... and ``loss - baseline > loss_sigmas * noise std`` (from step-to-step changes)."""
    min_loss_delta: float = 0.05
    """... and ``loss - baseline > min_loss_delta`` (absolute floor, in loss units)."""
    grad_norm_ratio: float = 10.0
    """Grad-norm spike if ``grad_norm > grad_norm_ratio * EWM(grad_norm)`` (Megatron's 10x)."""
    max_consecutive: int = 50
    """Re-anchor the baseline after this many consecutive finite spikes (0 = never)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")
        if self.warmup_steps < 1:
            raise ValueError(f"warmup_steps must be >= 1, got {self.warmup_steps}")
        if self.loss_ratio < 1.0 or self.grad_norm_ratio < 1.0:
            raise ValueError("loss_ratio and grad_norm_ratio must be >= 1")
        if self.loss_sigmas < 0.0 or self.min_loss_delta < 0.0:
            raise ValueError("loss_sigmas and min_loss_delta must be >= 0")
        if self.max_consecutive < 0:
            raise ValueError(f"max_consecutive must be >= 0, got {self.max_consecutive}")


@dataclass(frozen=True)
class Spike:
    """One flagged step. Baselines are the values the step was compared against
    (``None`` if no finite value had been seen yet)."""

    step: int
    loss: float
    grad_norm: Optional[float]
    baseline_loss: Optional[float]
    baseline_grad_norm: Optional[float]
    reason: str

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


# State layout (all plain ints/floats), shared by the online and the offline path. Version 2;
# version 1 (before the step-to-step noise variance) had "var_loss", the EW variance around the
# mean, and no "last_loss": load_state_dict converts it (_from_version_1).
_STATE_VERSION = 2
_STATE_KEYS = (
    "n_loss",  # finite losses folded into the baseline
    "mean_loss",
    "noise_var_loss",  # EWM of (loss - last_loss)**2 / 2 over accepted steps
    "last_loss",  # the last accepted loss
    "n_grad_norm",  # finite grad norms folded into the baseline
    "mean_grad_norm",
    "run",  # current number of consecutive finite spikes
    "run_mean_loss",  # Welford stats of the losses of that run
    "run_m2_loss",
    "run_n_grad_norm",
    "run_mean_grad_norm",
    "last_step",  # last step seen (-1: none); informational, lets a resume check alignment
)
_INITIAL_STATE = (0, 0.0, 0.0, 0.0, 0, 0.0, 0, 0.0, 0.0, 0, 0.0, -1)


def _scan(rule: SpikeRule, state: Tuple, steps: Sequence, losses: Sequence, grad_norms: Iterable):
    """The one implementation of the rule. Returns ``(spikes, new_state)``.

    ``losses`` / ``grad_norms`` must already be Python floats (``grad_norms`` items may be
    ``None``); ``steps`` a sequence of ints.

    Written as a tight loop over Python floats with the state in locals: the online path calls
    it with one-element sequences, ``update_many`` with whole sequences.
    """
    (n_l, m_l, v_l, p_l, n_g, m_g, run, r_ml, r_m2, r_ng, r_mg, last) = state
    alpha = float(rule.alpha)
    warm = rule.warmup_steps
    ratio = float(rule.loss_ratio)
    k = float(rule.loss_sigmas)
    k2 = k * k
    min_d = float(rule.min_loss_delta)
    gratio = float(rule.grad_norm_ratio)
    maxc = rule.max_consecutive
    inv_alpha = 1.0 / alpha
    isfinite = math.isfinite
    out: List[Spike] = []
    append = out.append

    for s, x, g in zip(steps, losses, grad_norms):
        has_g = g is not None
        if has_g:
            if not (isfinite(x) and isfinite(g)):
                append(Spike(int(s), x, g, m_l if n_l else None, m_g if n_g else None, "non-finite"))
                continue
        elif not isfinite(x):
            append(Spike(int(s), x, None, m_l if n_l else None, m_g if n_g else None, "non-finite"))
            continue

        ls = False
        if n_l >= warm:
            d = x - m_l
            # d > k*sqrt(var)  <=>  d*d > k*k*var  for d > 0
            ls = d > min_d and x > ratio * m_l and d * d > k2 * v_l
        gs = has_g and n_g >= warm and g > gratio * m_g
        if ls or gs:
            append(Spike(int(s), x, g, m_l, m_g if n_g else None,
                         "loss+grad_norm" if (ls and gs) else ("loss" if ls else "grad_norm")))
            if maxc:
                run += 1
                dd = x - r_ml
                r_ml += dd / run
                r_m2 += dd * (x - r_ml)
                if has_g:
                    r_ng += 1
                    r_mg += (g - r_mg) / r_ng
                if run >= maxc:  # genuine level shift: adopt the run's level as the baseline
                    m_l = r_ml
                    v_l = r_m2 / run
                    p_l = x
                    if r_ng:
                        m_g = r_mg
                    run = r_ng = 0
                    r_ml = r_m2 = r_mg = 0.0
            continue

        # accepted step: fold into the baselines
        if run:
            run = r_ng = 0
            r_ml = r_m2 = r_mg = 0.0
        n_l += 1
        a = alpha if n_l >= inv_alpha else 1.0 / n_l
        m_l += a * (x - m_l)
        if n_l > 1:
            b = alpha if n_l - 1 >= inv_alpha else 1.0 / (n_l - 1)
            d = x - p_l
            v_l += b * (0.5 * d * d - v_l)
        p_l = x
        if has_g:
            n_g += 1
            a = alpha if n_g >= inv_alpha else 1.0 / n_g
            m_g += a * (g - m_g)

    if steps:
        last = int(steps[-1])
    return out, (n_l, m_l, v_l, p_l, n_g, m_g, run, r_ml, r_m2, r_ng, r_mg, last)


class SpikeDetector:
    """Online spike detector (see the module docstring for the rule)."""

    def __init__(self, rule: SpikeRule = SpikeRule()) -> None:
        self.rule = rule
        self._state: Tuple = _INITIAL_STATE

    def update(self, step: int, loss: float, grad_norm: Optional[float] = None) -> Optional[Spike]:
        """Feed one step; return the :class:`Spike` if it is one, else ``None``."""
        g = None if grad_norm is None else float(grad_norm)
        out, self._state = _scan(self.rule, self._state, (int(step),), (float(loss),), (g,))
        return out[0] if out else None

    def update_many(self, steps: Sequence, losses: Sequence, grad_norms: Optional[Sequence] = None) -> List[Spike]:
        """Feed many steps at once (e.g. new points of a live run); the same decisions as calling
        :meth:`update` on each."""
        steps, x, gv, given = _as_arrays(steps, losses, grad_norms)
        out, self._state = _scan(self.rule, self._state, *_lists(steps, x, gv, given, 0, len(x)))
        return out

    @property
    def baseline_loss(self) -> Optional[float]:
        return self._state[1] if self._state[0] else None

    @property
    def baseline_grad_norm(self) -> Optional[float]:
        return self._state[5] if self._state[4] else None

    @property
    def last_step(self) -> Optional[int]:
        return None if self._state[-1] == -1 else self._state[-1]

    def state_dict(self) -> Dict[str, Any]:
        """Plain ints/floats (plus the rule, for information)."""
        sd: Dict[str, Any] = dict(zip(_STATE_KEYS, self._state))
        sd["version"] = _STATE_VERSION
        sd["rule"] = asdict(self.rule)
        return sd

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore the baseline. The stored ``rule`` is informational and not applied:
        the detector keeps its own rule (so thresholds may be changed on resume). A version-1
        state (checkpoints written before the noise variance) is converted."""
        version = state.get("version", 1)
        if version == 1:
            state = _from_version_1(state)
        elif version != _STATE_VERSION:
            raise ValueError(f"unsupported spike-detector state version {version}")
        vals = []
        for key, init in zip(_STATE_KEYS, _INITIAL_STATE):
            v = state[key]
            vals.append(int(v) if isinstance(init, int) else float(v))
        self._state = tuple(vals)


def _from_version_1(state: Dict[str, Any]) -> Dict[str, Any]:
    """A version-1 state as version 2. Version 1 kept the variance around the mean, which is at
    least the noise variance (it adds the trend's lag), so it starts the noise variance: the
    detector is as strict as before right after a resume and sharpens within ~1/alpha steps.
    The last accepted loss was not kept; the mean stands in for it for one step."""
    converted = {k: v for k, v in state.items() if k != "var_loss"}
    converted["noise_var_loss"] = state["var_loss"]
    converted["last_loss"] = state["mean_loss"]
    return converted


def _as_arrays(steps, losses, grad_norms):
    """``(steps, losses, grad_norms, given)`` as numpy arrays (float64 values). ``grad_norms`` is
    ``None`` if none were logged; ``given`` is ``None`` if all were, else the mask of the steps
    whose grad norm is not ``None`` (the others hold 0.0). NaN stays NaN (= a spike)."""
    losses = np.asarray(losses, dtype=np.float64).ravel()
    steps = np.asarray(steps).ravel()
    if len(steps) != len(losses):
        raise ValueError(f"steps ({len(steps)}) and losses ({len(losses)}) differ in length")
    if grad_norms is None:
        return steps, losses, None, None
    given = None
    if isinstance(grad_norms, np.ndarray) and grad_norms.dtype != object:
        gv = grad_norms.astype(np.float64, copy=False).ravel()
    else:  # may have ``None`` holes ("not logged" at those steps)
        gl = list(grad_norms)
        given = np.array([g is not None for g in gl], dtype=bool)
        gv = np.array([0.0 if g is None else float(g) for g in gl], dtype=np.float64)
        if given.all():
            given = None
    if len(gv) != len(losses):
        raise ValueError(f"grad_norms ({len(gv)}) and losses ({len(losses)}) differ in length")
    return steps, losses, gv, given


def _lists(steps, x, gv, given, lo: int, hi: int):
    """Rows ``lo:hi`` as the Python ints / floats / ``None`` that ``_scan`` takes."""
    if gv is None:
        g = repeat(None, hi - lo)
    elif given is None:
        g = gv[lo:hi].tolist()
    else:
        g = [v if h else None for v, h in zip(gv[lo:hi].tolist(), given[lo:hi].tolist())]
    return steps[lo:hi].tolist(), x[lo:hi].tolist(), g


def detect_spikes(steps, losses, grad_norms=None, rule: SpikeRule = SpikeRule()) -> List[Spike]:
    """All spikes of a whole series (same decisions as feeding :meth:`SpikeDetector.update`
    step by step from a fresh detector). ``grad_norms=None``: loss rule only."""
    return SpikeDetector(rule).update_many(steps, losses, grad_norms)
