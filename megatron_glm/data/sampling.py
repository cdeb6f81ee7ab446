"""The random choices of GLM-130B's pretraining mix (docs/glm130b.md §2.3, §2.6) on top of glm_sample.

`glm_sample` turns explicit choices (which spans, where the generation starts) into windows; this
module makes those choices with a `numpy.random.Generator`, so a sequence is a deterministic
function of the generator's state:

* `mask_sequence`   - a [MASK] sequence: the 2000-token row cut into 4 pieces of 500, each in its
  own 512-token window with Poisson(3) spans masked (15%) and Part B shuffled;
* `gmask_sequence`  - a [gMASK] sequence: one 2048 window, generation length uniform in [400, 2000];
* `instruction_sequence` - a multitask (MIP) sequence: 4 (text, target) examples in 512 windows;
* `glm_sequence`    - the per-sequence Bernoulli draw, 30% [MASK] vs 70% [gMASK].

MIP replaces 5% of *sequences* at the dataset level (a weighted concat of the text and MIP datasets,
docs/glm130b.md §2.6), so it is not drawn here: the data pipeline calls `instruction_sequence` for MIP
rows and `glm_sequence` for text rows.

Where this differs from LargeScale's collator (glm/collator.py @aa2401a), on purpose:

* LargeScale built each [MASK] window from the full 500-token piece and then truncated it to 512
  tokens (`pad_batch`). A window is |piece| + 2·#spans ≈ 543 tokens long, so 96% of windows lost the
  tail of Part B (≈63 instead of ≈99 loss tokens per window). The default here fits the window
  instead (see `GLMObjectiveConfig.reproduce_window_overflow` and `fitted_piece_length`); set the
  flag to True to get the original behaviour.
* Random numbers come from a numpy Generator instead of Python's `random.Random`; span lengths are
  drawn by inverting the CDF of the same restricted Poisson distribution (`rng.choices(1..39,
  weights=pmf)`), a batch at a time, which is the same distribution and much faster.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from megatron_glm.data.glm_sample import (
    PackedSample,
    SpecialTokens,
    Window,
    gmask_window,
    instruction_window,
    mask_window,
    pack_windows,
)

__all__ = [
    "GLMObjectiveConfig",
    "span_length_distribution",
    "draw_span_lengths",
    "place_spans",
    "sample_spans",
    "fitted_piece_length",
    "sample_mask_window",
    "mask_sequence",
    "gmask_sequence",
    "truncate_instruction",
    "instruction_sequence",
    "glm_sequence",
]


@dataclass(frozen=True)
class GLMObjectiveConfig:
    """GLM-130B's pretraining mix (docs/glm130b.md §2.3); field docstrings say where each number comes from."""

    seq_length: int = 2048
    """Tokens per training sequence (P Table 11 `seq_length 2048`)."""

    row_length: int = 2000
    """Tokens of raw text per sequence (`length_per_sample 2000`, docs/glm130b.md §2.2)."""

    mask_probability: float = 0.3
    """p of a [MASK] ("bert") sequence; else [gMASK] (`gpt_prob 0.7`, §2.3)."""

    mask_windows: int = 4
    """[MASK] and MIP sequences hold this many windows of seq_length // mask_windows = 512 tokens
    (`aggregated_samples_per_sequence 4`, §2.3 a, c)."""

    mask_ratio: float = 0.15
    """Spans are drawn until they cover >= int(mask_ratio * len(piece)) tokens (`mask_prob 0.15`)."""

    poisson_lambda: float = 3.0
    """Span lengths ~ Poisson(λ) restricted to 1..max_span_length (`average_block_length 3`)."""

    max_span_length: int = 39
    """Largest span length (`poisson.pmf(i, 3) for i in range(1, 40)` in the collator)."""

    short_seq_prob: float = 0.02
    """p of truncating a window's piece to a random length in [min_short_seq_length, len(piece))."""

    min_short_seq_length: int = 32
    """Lower end of the short-sequence truncation (`rng.randrange(32, len(input_ids))`)."""

    single_span_prob: float = 0.02
    """p of masking exactly one span (of Poisson length) in a window (`single_span_prob 0.02`)."""

    min_gmask_ratio: float = 0.2
    """[gMASK]: gen_len = randint(int(0.2*L), L), both ends inclusive (`min_gmask_ratio 0.2`, §2.3 b)."""

    reproduce_window_overflow: bool = False
    """LargeScale truncated each 512 window after building it (pad_batch), losing ~35 target tokens
    of Part B in 96% of windows (docs/glm130b.md §2.3 quirk).

    True: reproduce that. Each window holds the full 500-token piece; spans are drawn until they
    cover int(0.15 * 500) tokens; `pack_windows` truncates the window to 512, so the spans that come
    last in the shuffled Part B lose their tail (or vanish) from the loss.

    False (default): fit the window so that no target is lost. A window with k spans over a piece
    of n tokens is |Part A| + |Part B| = (n - masked + k) + (masked + k) = n + 2k tokens long, so the
    piece is shortened to n(k) = min(len(piece), window_length - 2k) tokens (its beginning is kept;
    the tail is simply not used). k is not known before the spans are drawn, so the stopping rule
    of the span draw uses the fitted length: draw span lengths one after another and stop at the
    first k with  sum(lengths[:k]) >= int(mask_ratio * n(k)).  Every window then satisfies
    n(k) + 2k <= window_length, its masked fraction is still 15% of the text it holds (plus the
    usual overshoot of the last span), and every masked token is a loss token. With the GLM-130B
    numbers a full window holds ≈467 text tokens and ≈94 loss tokens (vs ≈63 in the truncated
    original; the un-truncated original would have ≈100 over 500 text tokens)."""

    def __post_init__(self) -> None:
        if self.seq_length % self.mask_windows:
            raise ValueError(f"seq_length {self.seq_length} is not divisible by mask_windows {self.mask_windows}")
        if self.row_length % self.mask_windows:
            raise ValueError(f"row_length {self.row_length} is not divisible by mask_windows {self.mask_windows}")
        if self.row_length + 1 > self.seq_length:
            raise ValueError(f"a [gMASK] window of row_length + 1 = {self.row_length + 1} tokens "
                             f"does not fit seq_length {self.seq_length}")
        if not 0.0 < self.mask_ratio < 0.5:
            raise ValueError(f"mask_ratio must be in (0, 0.5), got {self.mask_ratio}")
        if self.max_span_length < 1 or self.poisson_lambda <= 0:
            raise ValueError("max_span_length must be >= 1 and poisson_lambda > 0")

    @property
    def window_length(self) -> int:
        """Length of one [MASK] / MIP window: seq_length // mask_windows (512)."""
        return self.seq_length // self.mask_windows

    @property
    def span_budget(self) -> Optional[int]:
        """Window length the spans of a [MASK] window must fit (None: no fitting, the original)."""
        return None if self.reproduce_window_overflow else self.window_length


# ------------------------------------------------------------------------------------------------
# [MASK] spans


@functools.lru_cache(maxsize=16)
def _span_length_cdf(poisson_lambda: float, max_span_length: int) -> np.ndarray:
    pmf = span_length_distribution(poisson_lambda, max_span_length)
    cdf = np.cumsum(pmf)
    cdf[-1] = 1.0  # no draw can fall past the last length through rounding
    cdf.setflags(write=False)
    return cdf


def span_length_distribution(poisson_lambda: float = 3.0, max_span_length: int = 39) -> np.ndarray:
    """P(length = k) for k = 1..max_span_length: Poisson(λ) pmf restricted to 1..max and normalised.

    Entry i is the probability of length i + 1 (what `rng.choices(range(1, 40), weights=pmf)` does).
    """
    ks = range(1, max_span_length + 1)
    pmf = np.array([math.exp(-poisson_lambda) * poisson_lambda**k / math.factorial(k) for k in ks])
    return pmf / pmf.sum()


def _draw_lengths(rng: np.random.Generator, cdf: np.ndarray, count: int) -> np.ndarray:
    return np.searchsorted(cdf, rng.random(count), side="right").astype(np.int64) + 1


def fitted_piece_length(length: int, num_spans: int, config: GLMObjectiveConfig) -> int:
    """How many text tokens of a `length`-token piece a [MASK] window with `num_spans` spans holds.

    Default mode: min(length, window_length - 2 * num_spans), so that Part A + Part B =
    n + 2·num_spans <= window_length and no target is lost. reproduce_window_overflow: length.
    """
    budget = config.span_budget
    if budget is None:
        return length
    return max(0, min(length, budget - 2 * num_spans))


def draw_span_lengths(
    rng: np.random.Generator,
    length: int,
    config: GLMObjectiveConfig,
    single_span: bool = False,
) -> np.ndarray:
    """Span lengths for a piece of `length` tokens, in the order they were drawn.

    Lengths are i.i.d. from `span_length_distribution` (Poisson(3) restricted to 1..39). With
    `single_span` exactly one is drawn. Otherwise they are drawn until the first k for which
    sum(lengths[:k]) >= int(mask_ratio * fitted_piece_length(length, k)) (the collator's
    `while masked_count < int(0.15 * len)`, with the window fitting of the default mode; see
    GLMObjectiveConfig.reproduce_window_overflow). Within one window the lengths are shaped by
    that stopping rule (the crossing draw tends to be long), but pooled over windows every length
    occurs in proportion to its probability, because whether draw i happens depends only on the
    draws before it: a histogram of all spans follows the restricted Poisson.

    Lengths are drawn in batches (vectorised inverse CDF); draws past the stopping point are
    discarded, which keeps them i.i.d. and the result deterministic given the generator.
    """
    cdf = _span_length_cdf(float(config.poisson_lambda), int(config.max_span_length))
    if single_span:
        return _draw_lengths(rng, cdf, 1)
    mean_length = float(np.dot(np.arange(1, len(cdf) + 1), np.diff(cdf, prepend=0.0)))
    batch = int(config.mask_ratio * length / mean_length * 1.5) + 8
    drawn = np.zeros(0, dtype=np.int64)
    while True:
        drawn = np.concatenate([drawn, _draw_lengths(rng, cdf, batch)])
        num_spans = np.arange(len(drawn) + 1)
        masked = np.concatenate([[0], np.cumsum(drawn)])
        if config.span_budget is None:
            fitted = np.full(len(num_spans), length)
        else:
            fitted = np.clip(np.minimum(length, config.span_budget - 2 * num_spans), 0, None)
        # float64 product then floor: the same number as Python's int(mask_ratio * n).
        needed = np.floor(config.mask_ratio * fitted.astype(np.float64)).astype(np.int64)
        done = np.flatnonzero(masked >= needed)
        if done.size:
            return drawn[: done[0]]


def place_spans(rng: np.random.Generator, lengths: Sequence[int], length: int) -> List[Tuple[int, int]]:
    """Put spans of the given lengths uniformly at random into [0, length), in random order, without
    overlap and with at least one unmasked token between two spans (LargeScale's `sample_spans`:
    the lengths are shuffled, then the length - sum - (k - 1) free tokens are distributed over the
    k + 1 gaps by k sorted uniform draws). Returns spans sorted by start."""
    lengths = np.asarray(lengths, dtype=np.int64)
    k = len(lengths)
    if k == 0:
        return []
    free = length - int(lengths.sum()) - (k - 1)
    if free < 0:
        raise ValueError(f"spans of lengths {lengths.tolist()} do not fit {length} tokens with gaps")
    lengths = lengths[rng.permutation(k)]
    places = np.sort(rng.integers(0, free + 1, size=k))
    starts = places + np.concatenate([[0], np.cumsum(lengths[:-1] + 1)])
    return list(zip(starts.tolist(), (starts + lengths).tolist()))


def sample_spans(rng: np.random.Generator, length: int, config: GLMObjectiveConfig) -> List[Tuple[int, int]]:
    """The spans of one [MASK] window over a piece of `length` tokens (after any short-sequence cut).

    Draws the single-span flag (p = single_span_prob), the span lengths (`draw_span_lengths`) and
    their places (`place_spans`). In the default mode the spans lie inside the first
    `fitted_piece_length(length, len(spans), config)` tokens, and only those tokens go into the
    window; with reproduce_window_overflow they lie anywhere in [0, length).

    If the drawn lengths cannot be placed with gaps (sum + k - 1 > fitted length; only possible for
    tiny pieces and absurdly long spans, never in practice with the GLM-130B numbers) the lengths
    are drawn again.
    """
    single_span = bool(rng.random() < config.single_span_prob)
    for _ in range(100):
        lengths = draw_span_lengths(rng, length, config, single_span=single_span)
        fitted = fitted_piece_length(length, len(lengths), config)
        if int(lengths.sum()) + len(lengths) - 1 <= fitted:
            return place_spans(rng, lengths, fitted)
    raise ValueError(f"cannot place spans in a piece of {length} tokens with {config}")


def sample_mask_window(
    rng: np.random.Generator, piece: np.ndarray, config: GLMObjectiveConfig, special: SpecialTokens
) -> Window:
    """One [MASK] window from one piece of text (docs/glm130b.md §2.3 a).

    In order: with p short_seq_prob cut the piece to rng.integers(32, len) tokens (kept from its
    beginning; skipped for pieces of <= 32 tokens); `sample_spans`; keep the fitted length of the
    piece (default mode); shuffle the spans' order in Part B (a random permutation); `mask_window`.
    """
    piece = np.asarray(piece, dtype=np.int64)
    if rng.random() < config.short_seq_prob and len(piece) > config.min_short_seq_length:
        piece = piece[: int(rng.integers(config.min_short_seq_length, len(piece)))]
    spans = sample_spans(rng, len(piece), config)
    piece = piece[: fitted_piece_length(len(piece), len(spans), config)]
    order = rng.permutation(len(spans)).tolist()
    return mask_window(piece, spans, order, special)


def mask_sequence(
    rng: np.random.Generator, text: np.ndarray, config: GLMObjectiveConfig, special: SpecialTokens
) -> PackedSample:
    """A [MASK] sequence: the row of row_length (2000) tokens cut into mask_windows (4) consecutive
    pieces of 500, each made into a window by `sample_mask_window`, packed into windows of
    seq_length // mask_windows (512) tokens and padded (pad id, no loss, position 0).

    Default mode: every window fits 512 tokens and every masked token is a target. With
    reproduce_window_overflow, `pack_windows` truncates windows longer than 512 (the original).
    """
    text = np.asarray(text, dtype=np.int64)
    if len(text) != config.row_length:
        raise ValueError(f"expected a row of {config.row_length} tokens, got {len(text)}")
    pieces = text.reshape(config.mask_windows, -1)
    windows = [sample_mask_window(rng, piece, config, special) for piece in pieces]
    return pack_windows(windows, config.window_length, special)


# ------------------------------------------------------------------------------------------------
# [gMASK]


def gmask_sequence(
    rng: np.random.Generator, text: np.ndarray, config: GLMObjectiveConfig, special: SpecialTokens
) -> PackedSample:
    """A [gMASK] sequence (docs/glm130b.md §2.3 b): L = len(text) = row_length (2000);
    gen_len = rng.integers(int(min_gmask_ratio * L), L, endpoint=True) (uniform on [400, 2000]);
    src = text[:L-gen_len], tgt = text[L-gen_len:]; one window of seq_length (2048) holding
    src + [gMASK, sop] + tgt[:-1] (L + 1 tokens), positions 0..n-1, no eop, loss on tgt only."""
    text = np.asarray(text, dtype=np.int64)
    if len(text) != config.row_length:
        raise ValueError(f"expected a row of {config.row_length} tokens, got {len(text)}")
    length = len(text)
    generation_length = int(rng.integers(int(config.min_gmask_ratio * length), length, endpoint=True))
    window = gmask_window(text, generation_length, special)
    return pack_windows([window], config.seq_length, special)


# ------------------------------------------------------------------------------------------------
# MIP


def truncate_instruction(
    text: np.ndarray, target: np.ndarray, window_length: int
) -> Tuple[np.ndarray, np.ndarray]:
    """LargeScale's `_get_single_multitask_data` truncation (docs/glm130b.md §2.3 c).

    If |text| + |target| + 2 > window_length, the text is cut to
    max(window_length // 4, window_length - |target| - 2) tokens (128 for a 512 window), keeping its
    BEGINNING (`text[:text_length]`, as the collator does; prompts put the instruction first); then,
    if it still does not fit, the target is cut to window_length - |text| - 2 tokens (its beginning).
    The result satisfies |text| + |target| + 2 <= window_length: the window (text + [MASK, sop] +
    target) and its labels (text + [MASK] + target + eop) fit without truncation.
    """
    text = np.asarray(text, dtype=np.int64)
    target = np.asarray(target, dtype=np.int64)
    if len(text) + len(target) + 2 > window_length:
        text = text[: max(int(0.25 * window_length), window_length - len(target) - 2)]
    if len(text) + len(target) + 2 > window_length:
        target = target[: window_length - len(text) - 2]
    return text, target


def instruction_sequence(
    examples: Sequence[Tuple[np.ndarray, np.ndarray]], config: GLMObjectiveConfig, special: SpecialTokens
) -> PackedSample:
    """A multitask (MIP) sequence (docs/glm130b.md §2.3 c, §2.6): exactly mask_windows (4) (text, target)
    examples, each truncated by `truncate_instruction` and made into a window of 512 by
    `instruction_window` (text + [MASK, sop] + target; labels text + [MASK] + target + eop; loss on
    target + eop; bidirectional over text + [MASK]).

    Positions are linear 0..n-1 in every window: LargeScale's convention at the start of training
    and in the Dec-2023 release (the 06-29 "[MASK]-position" variant was reverted the next day;
    which one the last ~1200 steps used is unconfirmed). Nothing is random here: which examples
    form a sequence is the MIP dataset's choice, so there is no generator argument.
    """
    if len(examples) != config.mask_windows:
        raise ValueError(f"a MIP sequence holds {config.mask_windows} examples, got {len(examples)}")
    windows = []
    for text, target in examples:
        text, target = truncate_instruction(text, target, config.window_length)
        windows.append(instruction_window(text, target, special))
    return pack_windows(windows, config.window_length, special)


# ------------------------------------------------------------------------------------------------
# The per-sequence mix


def glm_sequence(
    rng: np.random.Generator, text: np.ndarray, config: GLMObjectiveConfig, special: SpecialTokens
) -> Tuple[str, PackedSample]:
    """One self-supervised sequence from a row of text: with p mask_probability (0.3) a [MASK]
    sequence, else a [gMASK] sequence. Returns ("mask" | "gmask", sample). The first draw of the
    generator is the Bernoulli draw (`rng.random() < 0.3`), as in the collator."""
    if rng.random() < config.mask_probability:
        return "mask", mask_sequence(rng, text, config, special)
    return "gmask", gmask_sequence(rng, text, config, special)
