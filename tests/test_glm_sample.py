"""The sample layouts of docs/glm130b.md §2.3 built from explicit choices."""

import numpy as np
import torch

from megatron_glm.data.glm_sample import (
    SpecialTokens,
    attention_mask,
    gmask_window,
    instruction_window,
    mask_window,
    pack_windows,
)

S = SpecialTokens(mask=900, gmask=901, sop=902, eop=903, pad=0)


def test_gmask_window():
    window = gmask_window([11, 12, 13, 14, 15], generation_length=2, special=S)
    assert window.tokens.tolist() == [11, 12, 13, 901, 902, 14]
    assert window.labels.tolist() == [11, 12, 13, 901, 14, 15]
    assert window.loss_mask.tolist() == [0, 0, 0, 0, 1, 1]
    assert window.position_ids.tolist() == [0, 1, 2, 3, 4, 5]
    assert window.prefix_length == 4  # src + [gMASK] are bidirectional


def test_mask_window_positions_and_shuffled_part_b():
    text = [10, 11, 12, 13, 14, 15, 16, 17]
    window = mask_window(text, spans=[(1, 3), (5, 6)], span_order=[1, 0], special=S)
    # Part A: 10 [M] 13 14 [M] 16 17 ; spans 11 12 (first [MASK] at 1) and 15 (second at 4)
    assert window.tokens.tolist() == [10, 900, 13, 14, 900, 16, 17, 902, 15, 902, 11, 12]
    assert window.labels.tolist() == [10, 900, 13, 14, 900, 16, 17, 15, 903, 11, 12, 903]
    assert window.loss_mask.tolist() == [0] * 7 + [1] * 5
    assert window.position_ids.tolist() == [0, 1, 2, 3, 4, 5, 6, 4, 4, 1, 1, 1]
    assert window.prefix_length == 7


def test_instruction_window():
    window = instruction_window([5, 6], [7, 8], S)
    assert window.tokens.tolist() == [5, 6, 900, 902, 7, 8]
    assert window.labels.tolist() == [5, 6, 900, 7, 8, 903]
    assert window.loss_mask.tolist() == [0, 0, 0, 1, 1, 1]
    assert window.position_ids.tolist() == list(range(6))


def test_packing_pads_and_truncates():
    short = gmask_window([1, 2, 3], 1, S)
    long = gmask_window(list(range(1, 12)), 5, S)
    packed = pack_windows([short, long], window_length=6, special=S)
    assert packed.tokens[:6].tolist() == [1, 2, 901, 902, 0, 0]
    assert packed.loss_mask[4:6].tolist() == [0, 0] and packed.position_ids[4:6].tolist() == [0, 0]
    assert len(packed.tokens) == 12
    assert packed.windows == [(0, 6, 3), (6, 12, 6)]


def test_attention_mask_block_diagonal_prefix_lm():
    mask = attention_mask([(0, 4, 2), (4, 8, 1)], 8)[0]
    allowed = ~mask
    expected = np.zeros((8, 8), dtype=bool)
    for q in range(4):
        for k in range(4):
            expected[q, k] = k < 2 or k <= q
    for q in range(4, 8):
        for k in range(4, 8):
            expected[q, k] = k < 5 or k <= q
    assert torch.equal(allowed, torch.as_tensor(expected))
