"""Hand-built GLM inputs (docs/glm130b.md §2.3) for glm-tiny at sequence length 64, and their variants.

Each variant changes one thing that some positions must not be able to see (or that must not
matter), and records which positions must keep their logits and which must change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

import numpy as np
import torch

from megatron_glm.data.glm_sample import gmask_window, mask_window, pack_windows
from megatron_glm.data.synthetic_samples import synthetic_special_tokens

VOCAB = 1000
SEQ = 64
WINDOW = 16
SPECIAL = synthetic_special_tokens(VOCAB)


@dataclass
class Variant:
    name: str
    index: int
    same: List[int] = field(default_factory=list)
    """Positions whose logits must equal the base input's."""
    different: List[int] = field(default_factory=list)
    """Positions whose logits must change (so the check can fail)."""
    base: int = 0


def _text(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, VOCAB - 5, size=n)


def mask_sample():
    """Four 16-token windows; each 12 tokens of text with two spans."""
    windows = []
    for w in range(4):
        text = _text(10 + w, 11)
        windows.append(mask_window(text, [(1, 3), (6, 7)], [1, 0], SPECIAL))
    return pack_windows(windows, WINDOW, SPECIAL)


def gmask_sample():
    return pack_windows([gmask_window(_text(99, 50), 30, SPECIAL)], SEQ, SPECIAL)


def _as_input(sample) -> Dict[str, torch.Tensor]:
    from megatron_glm.data.glm_sample import attention_mask

    as_batch = lambda a: torch.as_tensor(np.asarray(a))[None]  # noqa: E731
    return {
        "tokens": as_batch(sample.tokens),
        "labels": as_batch(sample.labels),
        "loss_mask": as_batch(sample.loss_mask).float(),
        "position_ids": as_batch(sample.position_ids),
        "attention_mask": attention_mask(sample.windows, SEQ)[None],
    }


def build_inputs():
    """(inputs, variants): inputs[0] is a [MASK] sample, inputs[1] a [gMASK] sample."""
    masked, gmasked = mask_sample(), gmask_sample()
    inputs = [_as_input(masked), _as_input(gmasked)]
    variants: List[Variant] = []

    def add(base_index, sample_tokens=None, positions=None, name="", same=(), different=()):
        x = dict(inputs[base_index])
        if sample_tokens is not None:
            x["tokens"] = torch.as_tensor(sample_tokens)[None]
        if positions is not None:
            x["position_ids"] = torch.as_tensor(positions)[None]
        inputs.append(x)
        variants.append(Variant(name, len(inputs) - 1, list(same), list(different), base=base_index))

    all_positions = range(SEQ)
    window = lambda w: range(w * WINDOW, (w + 1) * WINDOW)  # noqa: E731
    prefix = masked.windows[1][2]  # Part A length of every window (same construction)

    # A Part-A token of window 1 is invisible to windows 0, 2, 3; visible to all of window 1.
    tokens = masked.tokens.copy()
    tokens[WINDOW + 0] = 7
    add(0, tokens, name="mask: window-1 Part A token", same=[p for p in all_positions if p not in window(1)],
        different=list(window(1))[: prefix])

    # A Part-B token of window 2 is invisible before it (Part A of window 2 included) and elsewhere.
    part_b_position = 2 * WINDOW + prefix + 2
    tokens = masked.tokens.copy()
    tokens[part_b_position] = 7
    add(0, tokens, name="mask: window-2 Part B token",
        same=[p for p in all_positions if p < part_b_position or p >= 3 * WINDOW],
        different=[part_b_position, part_b_position + 1])

    # gMASK: a generated token is invisible to everything before it.
    generated = gmasked.windows[0][2] + 5
    tokens = gmasked.tokens.copy()
    tokens[generated] = 7
    add(1, tokens, name="gmask: Part B token", same=list(range(generated)),
        different=[generated, generated + 1])

    # gMASK: Part A is bidirectional, so position 0 sees a later context token.
    tokens = gmasked.tokens.copy()
    tokens[10] = 7
    add(1, tokens, name="gmask: Part A token", different=[0, 5, 10, gmasked.windows[0][2] + 3])

    # RoPE is relative: shifting every position id of window 3 changes nothing anywhere.
    positions = masked.position_ids.copy()
    positions[3 * WINDOW: 4 * WINDOW] += 5
    add(0, positions=positions, name="mask: window-3 positions shifted", same=list(all_positions))

    # Part B takes its [MASK]'s position: giving it linear positions instead must change its logits.
    positions = masked.position_ids.copy()
    positions[prefix:WINDOW] = np.arange(prefix, WINDOW)
    add(0, positions=positions, name="mask: window-0 Part B linear positions",
        same=[p for p in all_positions if p >= WINDOW] + list(range(prefix)),
        different=list(range(prefix, prefix + 3)))
    return inputs, variants
