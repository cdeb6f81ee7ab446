"""GLM-130B's evaluation inputs, built exactly as its evaluation/dataset.py builds them.

Every builder returns numpy arrays: tokens and position ids [s] and an attention mask [s, s] with
True = masked (docs/glm130b.md §1.3). `collate` pads a micro-batch to a multiple of 32 with pad
token 0, position 0 and fully masked pad rows/columns. See docs/evaluation.md for the layouts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

TILE = 32


@dataclass
class MulSample:
    tokens: np.ndarray
    position_ids: np.ndarray
    attention_mask: np.ndarray  # bool [s, s], True = masked
    choices: List[List[int]]
    choice_target_ids: List[np.ndarray]
    """Per choice, the positions whose outputs predict that choice's tokens (one entry, the [sop],
    in single-token mode)."""
    single_token: bool


def truncate_mul_context(text: Sequence[int], choices: Sequence[Sequence[int]], max_seq_length: int) -> List[int]:
    """Left truncation so that the context, the mask, [sop] and the choice blocks fit."""
    target_length = sum(len(c) for c in choices)
    if target_length == len(choices):
        target_length = 1  # one [sop] only in single-token mode
    text = list(text)
    if len(text) + target_length + 2 > max_seq_length:
        keep = max_seq_length - target_length - 2
        text = text[len(text) - keep:] if keep > 0 else []
    return text


def build_multiple_choice_sample(text: Sequence[int], choices: Sequence[Sequence[int]], *, mask_id: int,
                                 sop_id: int, use_task_mask: bool, single_token: bool,
                                 multitask_encoding: bool = False) -> MulSample:
    """All choices packed into one sequence (GLM-130B `build_multiple_choice_sample`).

    The mask ([MASK], or [gMASK] with use_task_mask) is appended unless the text already holds it
    (blank filling). Choice k adds the block [sop] + c_k[:-1], whose outputs predict c_k. Block
    positions: [MASK] -> every token at the mask's position; [gMASK] -> continuing after the context
    (division, division+1, ...); every block reuses the same positions. Attention: the context
    (with the mask) is bidirectional and sees no choice; each block sees the context and a causal
    prefix of itself, never another block. single_token: one [sop] block only, whose output scores
    every (one-token) choice.
    """
    token = [int(t) for t in text]
    position = list(range(len(token)))
    blank_filling = mask_id in token
    if blank_filling:
        mask_position = token.index(mask_id)
    else:
        mask_position = len(token)
        token.append(mask_id)
        position.append(mask_position)
    division = len(token)
    blocks = [division]
    targets: List[np.ndarray] = []
    for choice in choices:
        length = len(choice)
        if use_task_mask:
            position.extend(range(division, division + length))
        elif blank_filling or not multitask_encoding:
            position.extend([mask_position] * length)
        else:
            position.extend(range(mask_position, mask_position + length))
        targets.append(np.arange(len(token), len(token) + length, dtype=np.int64))
        blocks.append(length)
        token.append(sop_id)
        token.extend(int(t) for t in choice[:-1])
        if single_token:
            break
    size = len(token)
    visible = np.zeros((size, size), dtype=bool)
    start = 0
    for index, length in enumerate(blocks):
        block = np.ones((length, length), dtype=bool) if index == 0 else np.tril(np.ones((length, length), dtype=bool))
        visible[start:start + length, start:start + length] = block
        start += length
    visible[:, :division] = True
    return MulSample(np.asarray(token, dtype=np.int64), np.asarray(position, dtype=np.int64), ~visible,
                     [list(c) for c in choices], targets, single_token)


@dataclass
class GenSample:
    tokens: np.ndarray
    position_ids: np.ndarray
    attention_mask: np.ndarray  # bool [cl, cl], True = masked
    target_position_ids: np.ndarray  # [max_gen_length]: the positions generated tokens take
    context_length: int


def truncate_gen_context(text: Sequence[int], max_seq_length: int, max_gen_length: int) -> List[int]:
    text = list(text)
    if len(text) + max_gen_length + 2 > max_seq_length:
        keep = max_seq_length - max_gen_length - 2
        text = text[len(text) - keep:] if keep > 0 else []
    return text


def build_generation_sample(text: Sequence[int], *, mask_id: int, sop_id: int, max_gen_length: int,
                            use_task_mask: bool, unidirectional: bool) -> GenSample:
    """GLM-130B `build_generation_sample`: context + mask + [sop] (or [gMASK][sop] + context when
    unidirectional); [gMASK] continues the positions, [MASK] puts [sop] and every generated token at
    the mask's position; the context (without [sop]) is bidirectional unless unidirectional."""
    token = [int(t) for t in text]
    blank_filling = mask_id in token
    if blank_filling:
        mask_position = token.index(mask_id)
        token = token + [sop_id]
    else:
        mask_position = len(token)
        token = [mask_id, sop_id] + token if unidirectional else token + [mask_id, sop_id]
    context_length = len(token)
    position = np.arange(context_length, dtype=np.int64)
    target_position = np.arange(context_length, context_length + max_gen_length, dtype=np.int64)
    if not use_task_mask:
        position[context_length - 1:] = mask_position
        target_position[:] = mask_position
    visible = np.tril(np.ones((context_length, context_length), dtype=bool))
    if not unidirectional:
        visible[: context_length - 1, : context_length - 1] = True
    return GenSample(np.asarray(token, dtype=np.int64), position, ~visible, target_position, context_length)


@dataclass
class LMWindow:
    tokens: np.ndarray
    targets: np.ndarray
    position_ids: np.ndarray
    attention_mask: np.ndarray  # bool [s, s], True = masked
    loss_mask: np.ndarray


def lm_num_windows(num_tokens: int, max_seq_length: int, generation_length: int) -> int:
    return max(math.ceil(max(num_tokens - (max_seq_length - 1), 0) / generation_length) + 1, 1)


def build_lm_window(document: Sequence[int], index: int, *, mask_id: int, sop_id: int, max_seq_length: int,
                    generation_length: int, unidirectional: bool) -> LMWindow:
    """Window `index` of a document (GLM-130B LanguageModelTaskDataset): tokens
    [i*G, i*G + max_seq_length - 1); window 0 scores all of them, window i > 0 has the first
    max_seq_length - 1 - G as a bidirectional prompt and scores the rest; layout prompt + [gMASK] +
    [sop] + text[:-1], linear positions, prompt and mask bidirectional, the rest causal."""
    start = index * generation_length
    window = [int(t) for t in document[start:start + max_seq_length - 1]]
    if index == 0 or unidirectional:
        prompt, text = [], window
    else:
        prompt_length = max_seq_length - 1 - generation_length
        prompt, text = window[:prompt_length], window[prompt_length:]
    length = len(prompt) + len(text) + 1
    visible = np.tril(np.ones((length, length), dtype=bool))
    visible[: len(prompt) + 1, : len(prompt) + 1] = True
    return LMWindow(
        tokens=np.asarray(prompt + [mask_id, sop_id] + text[:-1], dtype=np.int64),
        targets=np.asarray(prompt + [mask_id] + text, dtype=np.int64),
        position_ids=np.arange(length, dtype=np.int64),
        attention_mask=~visible,
        loss_mask=np.asarray([0] * (len(prompt) + 1) + [1] * len(text), dtype=np.int64),
    )


def padded_length(lengths: Sequence[int], tile: int = TILE) -> int:
    return (max(lengths) + tile - 1) // tile * tile


def collate(samples: Sequence, extra: Optional[Sequence[str]] = None) -> Dict[str, torch.Tensor]:
    """Pad tokens (0), positions (0) and masks (True = masked, rows and columns) to a multiple of 32.

    `extra` names [s] arrays of the samples padded with 0 too (targets, loss_mask)."""
    length = padded_length([len(s.tokens) for s in samples])
    b = len(samples)
    tokens = torch.zeros(b, length, dtype=torch.long)
    positions = torch.zeros(b, length, dtype=torch.long)
    mask = torch.ones(b, 1, length, length, dtype=torch.bool)
    out = {name: torch.zeros(b, length, dtype=torch.long) for name in (extra or [])}
    for i, sample in enumerate(samples):
        n = len(sample.tokens)
        tokens[i, :n] = torch.from_numpy(sample.tokens)
        positions[i, :n] = torch.from_numpy(sample.position_ids)
        mask[i, 0, :n, :n] = torch.from_numpy(sample.attention_mask)
        for name in extra or []:
            out[name][i, :n] = torch.from_numpy(np.asarray(getattr(sample, name)))
    return {"tokens": tokens, "position_ids": positions, "attention_mask": mask, **out}
