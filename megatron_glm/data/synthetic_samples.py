"""Synthetic GLM sequences for the CPU demo and the layout tests (no tokenizer, no corpus).

Text is a learnable toy language: runs of tokens that count upward by a per-run step, so a model
can lower its loss within a few dozen steps. Every sequence is one of GLM's two pretraining kinds
(docs/glm130b.md §2.3): a [gMASK] sequence (one window, generation cut from the end) or a [MASK]
sequence (four windows, a few spans each), chosen 30% / 70% like GLM-130B.
"""

from __future__ import annotations

from typing import List

import numpy as np

from megatron_glm.data.glm_sample import (
    PackedSample,
    SpecialTokens,
    gmask_window,
    mask_window,
    pack_windows,
)

MASK_WINDOWS = 4


def synthetic_special_tokens(vocab_size: int) -> SpecialTokens:
    """Specials at the top of the vocabulary; pad is 0 as in GLM-130B."""
    return SpecialTokens(mask=vocab_size - 5, gmask=vocab_size - 4, sop=vocab_size - 3,
                         eop=vocab_size - 2, pad=0)


def _toy_text(rng: np.random.Generator, length: int, text_vocab: int) -> np.ndarray:
    tokens: List[int] = []
    while len(tokens) < length:
        start, step, run = rng.integers(1, text_vocab), rng.integers(1, 4), rng.integers(4, 12)
        tokens.extend(int(1 + (start + step * i) % (text_vocab - 1)) for i in range(run))
    return np.asarray(tokens[:length], dtype=np.int64)


def _random_spans(rng: np.random.Generator, length: int, count: int, max_span: int) -> List[tuple]:
    spans, cursor = [], 0
    for _ in range(count):
        start = cursor + int(rng.integers(1, 4))
        end = start + int(rng.integers(1, max_span + 1))
        if end >= length:
            break
        spans.append((start, end))
        cursor = end
    return spans or [(1, 2)]


def synthetic_sample(rng: np.random.Generator, seq_length: int, vocab_size: int,
                     mask_probability: float = 0.3) -> PackedSample:
    """One packed sequence of seq_length tokens; seq_length must be a multiple of 4."""
    special = synthetic_special_tokens(vocab_size)
    text_vocab = vocab_size - 5
    if rng.random() < mask_probability:
        window_length = seq_length // MASK_WINDOWS
        text_length = window_length - 2 * 3  # room for up to 3 spans' sop/eop
        windows = []
        for _ in range(MASK_WINDOWS):
            text = _toy_text(rng, text_length, text_vocab)
            spans = _random_spans(rng, text_length, count=3, max_span=3)
            windows.append(mask_window(text, spans, rng.permutation(len(spans)).tolist(), special))
        return pack_windows(windows, window_length, special)
    text_length = seq_length - 1
    text = _toy_text(rng, text_length, text_vocab)
    generation = int(rng.integers(max(1, text_length // 5), text_length + 1))
    return pack_windows([gmask_window(text, generation, special)], seq_length, special)


def synthetic_samples(count: int, seq_length: int, vocab_size: int, seed: int = 0) -> List[PackedSample]:
    rng = np.random.default_rng(seed)
    return [synthetic_sample(rng, seq_length, vocab_size) for _ in range(count)]
