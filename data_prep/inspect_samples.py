"""`glm-prep inspect`: training samples as the model sees them, decoded for a human.

For each window it shows Part A (the corrupted text with [MASK]/[gMASK]), every Part-B span with
the position id its tokens carry and the targets that carry loss, so that someone checking a new
corpus or tokenizer can see at a glance whether spans, positions and loss look right.
"""

from __future__ import annotations

import logging
import os
from typing import List

import numpy as np
from megatron.core.datasets.indexed_dataset import IndexedDataset

from data_prep.indexed_writer import read_index_header
from data_prep.metadata import check_kind_for_inspect
from megatron_glm.data.glm_sample import PackedSample, SpecialTokens
from megatron_glm.data.datasets import objective_for_length
from megatron_glm.data.sampling import gmask_sequence, instruction_sequence, mask_sequence
from megatron_glm.data.tokenizer import GLMTokenizer

PREVIEW_CHARS = 600
log = logging.getLogger("glm-prep")


def _short(text: str) -> str:
    text = text.replace("\n", "\\n")
    if len(text) <= PREVIEW_CHARS:
        return text
    half = PREVIEW_CHARS // 2
    return f"{text[:half]} ... [{len(text) - PREVIEW_CHARS} chars] ... {text[-half:]}"


def _positions(values: np.ndarray) -> str:
    unique = sorted(set(values.tolist()))
    if len(unique) > 2 and unique[-1] - unique[0] == len(unique) - 1:
        return f"{unique[0]}..{unique[-1]}"
    return ", ".join(map(str, unique))


def _describe_window(tokenizer: GLMTokenizer, sample: PackedSample, start: int, end: int, prefix: int) -> List[str]:
    special = tokenizer.special
    tokens, labels = sample.tokens[start:end], sample.labels[start:end]
    loss, positions = sample.loss_mask[start:end], sample.position_ids[start:end]
    lines = [f"  Part A ({prefix} tokens, bidirectional): {_short(tokenizer.decode(tokens[:prefix]))}"]
    sops = [i for i in range(prefix, end - start) if tokens[i] == special.sop]
    for n, sop in enumerate(sops):
        stop = sops[n + 1] if n + 1 < len(sops) else int(np.flatnonzero(loss[sop:] > 0)[-1]) + sop + 1
        targets = labels[sop:stop][loss[sop:stop] > 0]
        lines.append(f"  Part B span {n}: position ids {_positions(positions[sop:stop])}, "
                     f"{len(targets)} loss tokens -> {_short(tokenizer.decode(targets))}")
    padding = int(np.sum(tokens == special.pad))
    lines.append(f"  loss tokens {int(loss.sum())}, padding {padding}")
    return lines


def _render(tokenizer: GLMTokenizer, title: str, sample: PackedSample) -> str:
    lines = [f"== {title}: {len(sample.windows)} window(s), {int(sample.loss_mask.sum())} loss tokens =="]
    for number, (start, end, prefix) in enumerate(sample.windows):
        lines.append(f" window {number} [{start}, {end}):")
        lines.extend(_describe_window(tokenizer, sample, start, end, prefix))
    return "\n".join(lines)


def _check_dataset(prefix: str) -> None:
    """A clear error for a wrong --data-prefix or an empty dataset (megatron-core would assert)."""
    for suffix in (".bin", ".idx"):
        if not os.path.isfile(f"{prefix}{suffix}"):
            raise FileNotFoundError(f"{prefix}{suffix}: no such file (--data-prefix is the PREFIX of "
                                    "PREFIX.bin and PREFIX.idx)")
    if read_index_header(prefix)[2] <= 1:
        raise ValueError(f"{prefix} holds no documents: nothing to show")


def inspect(prefix: str, tokenizer: GLMTokenizer, kind: str = "mask", samples: int = 1, seed: int = 0,
            seq_length: int = 2048) -> str:
    """Decode `samples` sequences of `kind` (mask, gmask or mip) built from the dataset at `prefix`.
    The dataset must exist, hold documents, and be of the kind the samples need (text for mask and
    gmask, mip for mip) as glm-prep recorded it; without a record it is used with a note."""
    _check_dataset(prefix)
    note = check_kind_for_inspect(prefix, kind)
    if note:
        log.warning("note: %s", note)
    dataset = IndexedDataset(prefix)
    special = SpecialTokens(mask=tokenizer.special.mask, gmask=tokenizer.special.gmask,
                            sop=tokenizer.special.sop, eop=tokenizer.special.eop, pad=tokenizer.special.pad)
    objective = objective_for_length(seq_length)
    rng = np.random.default_rng(seed)
    out = []
    documents = len(dataset.document_indices) - 1
    for number in range(samples):
        if kind == "mip":
            picks = rng.integers(0, documents, objective.mask_windows)
            examples = [(np.asarray(dataset[int(dataset.document_indices[d])], np.int64),
                         np.asarray(dataset[int(dataset.document_indices[d]) + 1], np.int64)) for d in picks]
            sample = instruction_sequence(examples, objective, special)
        else:
            total = int(dataset.index.sequence_pointers[-1] // dataset.index.dtype_size
                        + dataset.index.sequence_lengths[-1])
            if total < objective.row_length:
                raise ValueError(f"{prefix} holds {total} tokens, fewer than one row of {objective.row_length}")
            start = int(rng.integers(0, total - objective.row_length + 1))
            row = np.asarray(dataset.bin_reader.read(dtype=dataset.index.dtype, count=objective.row_length,
                                                     offset=start * dataset.index.dtype_size), np.int64)
            build = mask_sequence if kind == "mask" else gmask_sequence
            sample = build(rng, row, objective, special)
        out.append(_render(tokenizer, f"sample {number} [{kind}]", sample))
    return "\n\n".join(out)
