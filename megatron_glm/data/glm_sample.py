"""GLM sample layout (docs/glm130b.md §2.3): windows of Part A / Part B, positions, labels, masks.

A training sequence is a list of *windows* packed back to back and padded to the sequence length:
one 2048-token [gMASK] window, or four 512-token [MASK] / instruction windows. Inside a window,
tokens [0, prefix) (Part A, including the [MASK]/[gMASK] token) see each other bidirectionally;
tokens from `sop` on (Part B) and the window's padding are causal. Windows never see each other.

This module turns explicit choices (which spans, where the generation starts) into arrays; the
random choices of the pretraining mix are made by the sample stream on top of it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np
import torch


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of GLM's special tokens in the tokenizer in use (GLM-130B: icetk 150000..150005, pad 0)."""

    mask: int
    gmask: int
    sop: int
    eop: int
    pad: int


@dataclass
class Window:
    """One bidirectional-prefix, causal-rest block of a packed sequence."""

    tokens: np.ndarray
    labels: np.ndarray
    loss_mask: np.ndarray
    position_ids: np.ndarray
    prefix_length: int
    """Tokens [0, prefix_length) attend bidirectionally (Part A with its [MASK]/[gMASK])."""

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass
class PackedSample:
    """Arrays of one sequence plus its window boundaries (start, end, prefix_length)."""

    tokens: np.ndarray
    labels: np.ndarray
    loss_mask: np.ndarray
    position_ids: np.ndarray
    windows: List[Tuple[int, int, int]]


def gmask_window(text: Sequence[int], generation_length: int, special: SpecialTokens) -> Window:
    """[gMASK]: src + [gMASK, sop] + tgt[:-1]; targets src + [gMASK] + tgt; loss on tgt only.

    Positions are plain 0..n-1 (no eop for [gMASK]; docs/glm130b.md §2.3 b).
    """
    text = np.asarray(text, dtype=np.int64)
    if not 1 <= generation_length <= len(text):
        raise ValueError(f"generation_length must be in [1, {len(text)}], got {generation_length}")
    src, tgt = text[: len(text) - generation_length], text[len(text) - generation_length :]
    tokens = np.concatenate([src, [special.gmask, special.sop], tgt[:-1]])
    labels = np.concatenate([src, [special.gmask], tgt])
    loss_mask = np.concatenate([np.zeros(len(src) + 1, np.int64), np.ones(len(tgt), np.int64)])
    return Window(tokens, labels, loss_mask, np.arange(len(tokens)), prefix_length=len(src) + 1)


def mask_window(
    text: Sequence[int],
    spans: Sequence[Tuple[int, int]],
    span_order: Sequence[int],
    special: SpecialTokens,
) -> Window:
    """[MASK] blank infilling: each span [start, end) of `text` becomes one [MASK] in Part A; Part B
    holds the spans in `span_order` as sop + span, targets span + eop. Every Part-B token takes the
    position of its span's [MASK] in the corrupted text (docs/glm130b.md §2.3 a)."""
    text = np.asarray(text, dtype=np.int64)
    spans = sorted((int(s), int(e)) for s, e in spans)
    for (s0, e0), (s1, _) in zip(spans, spans[1:]):
        if s1 <= e0:
            raise ValueError(f"spans must not overlap or touch: {(s0, e0)} and {(s1, _)}")
    if any(not 0 <= s < e <= len(text) for s, e in spans):
        raise ValueError(f"spans must lie inside the text of length {len(text)}: {spans}")
    if sorted(span_order) != list(range(len(spans))):
        raise ValueError(f"span_order must be a permutation of 0..{len(spans) - 1}")

    part_a: List[int] = []
    mask_positions: List[int] = []
    cursor = 0
    for start, end in spans:
        part_a.extend(text[cursor:start].tolist())
        mask_positions.append(len(part_a))
        part_a.append(special.mask)
        cursor = end
    part_a.extend(text[cursor:].tolist())

    tokens, labels, positions = list(part_a), list(part_a), list(range(len(part_a)))
    loss_mask = [0] * len(part_a)
    for index in span_order:
        start, end = spans[index]
        span = text[start:end].tolist()
        tokens.extend([special.sop] + span)
        labels.extend(span + [special.eop])
        positions.extend([mask_positions[index]] * (len(span) + 1))
        loss_mask.extend([1] * (len(span) + 1))
    as_array = lambda values: np.asarray(values, dtype=np.int64)  # noqa: E731
    return Window(as_array(tokens), as_array(labels), as_array(loss_mask), as_array(positions),
                  prefix_length=len(part_a))


def instruction_window(text: Sequence[int], target: Sequence[int], special: SpecialTokens) -> Window:
    """Multitask (MIP) example: text + [MASK, sop] + target; targets text + [MASK] + target + eop.

    Positions are linear 0..n-1, LargeScale's convention at the start and end of training
    (docs/glm130b.md §2.3 c).
    """
    text = np.asarray(text, dtype=np.int64)
    target = np.asarray(target, dtype=np.int64)
    tokens = np.concatenate([text, [special.mask, special.sop], target])
    labels = np.concatenate([text, [special.mask], target, [special.eop]])
    loss_mask = np.concatenate([np.zeros(len(text) + 1, np.int64), np.ones(len(target) + 1, np.int64)])
    return Window(tokens, labels, loss_mask, np.arange(len(tokens)), prefix_length=len(text) + 1)


def pack_windows(windows: Sequence[Window], window_length: int, special: SpecialTokens) -> PackedSample:
    """Each window padded to window_length (pad id, no loss, position 0) and concatenated.

    Longer windows are truncated to window_length, as LargeScale's pad_batch does.
    """
    arrays = {name: [] for name in ("tokens", "labels", "loss_mask", "position_ids")}
    bounds: List[Tuple[int, int, int]] = []
    for index, window in enumerate(windows):
        n = min(len(window), window_length)
        pad = window_length - n
        arrays["tokens"].append(np.concatenate([window.tokens[:n], np.full(pad, special.pad)]))
        arrays["labels"].append(np.concatenate([window.labels[:n], np.full(pad, special.pad)]))
        arrays["loss_mask"].append(np.concatenate([window.loss_mask[:n], np.zeros(pad, np.int64)]))
        arrays["position_ids"].append(np.concatenate([window.position_ids[:n], np.zeros(pad, np.int64)]))
        start = index * window_length
        bounds.append((start, start + window_length, min(window.prefix_length, n)))
    packed = {name: np.concatenate(parts).astype(np.int64) for name, parts in arrays.items()}
    return PackedSample(windows=bounds, **packed)


def mask_layout(windows: Sequence[Tuple[int, int, int]], seq_length: int) -> Tuple[np.ndarray, np.ndarray]:
    """The mask in O(s): per position, its window id and the absolute end of its window's prefix.

    Samples carry this compact form (two int arrays instead of s x s booleans); the dense mask is
    built per micro-batch by `attention_mask_from_layout`, on whatever device the batch lives.
    """
    window_ids = np.full(seq_length, -1, dtype=np.int64)
    prefix_ends = np.zeros(seq_length, dtype=np.int64)
    for number, (start, end, prefix) in enumerate(windows):
        window_ids[start:end] = number
        prefix_ends[start:end] = start + prefix
    if (window_ids < 0).any():
        raise ValueError("windows must cover the whole sequence")
    return window_ids, prefix_ends


@functools.lru_cache(maxsize=4)
def _future_positions(seq: int, device: str) -> torch.Tensor:
    """True strictly above the diagonal: the keys a causal query may not see."""
    return torch.ones(seq, seq, dtype=torch.bool, device=device).triu(1)


def attention_mask_from_layout(window_ids: torch.Tensor, prefix_ends: torch.Tensor) -> torch.Tensor:
    """[..., s] layouts -> boolean [..., 1, s, s], True = masked.

    Key k is visible to query q when both lie in one window and k is in that window's prefix
    (bidirectional Part A) or k <= q (causal Part B and padding). Windows are contiguous, so the
    mask is filled block by block (7x faster on CPU than comparing full [s, s] broadcasts).
    """
    *batch, seq = window_ids.shape
    ids, ends = window_ids.reshape(-1, seq), prefix_ends.reshape(-1, seq)
    out = torch.ones(ids.shape[0], seq, seq, dtype=torch.bool, device=window_ids.device)
    future = _future_positions(seq, str(window_ids.device))
    for row in range(ids.shape[0]):
        cuts = (torch.nonzero(ids[row, 1:] != ids[row, :-1]).flatten() + 1).tolist()
        for start, end in zip([0] + cuts, cuts + [seq]):
            block = out[row, start:end, start:end]
            block.copy_(future[: end - start, : end - start])
            block[:, : int(ends[row, start]) - start] = False
    return out.reshape(*batch, 1, seq, seq)


def attention_mask(windows: Sequence[Tuple[int, int, int]], seq_length: int) -> torch.Tensor:
    """Boolean [1, s, s], True = masked: block-diagonal windows, bidirectional prefix, causal rest."""
    window_ids, prefix_ends = mask_layout(windows, seq_length)
    return attention_mask_from_layout(torch.from_numpy(window_ids), torch.from_numpy(prefix_ends))
