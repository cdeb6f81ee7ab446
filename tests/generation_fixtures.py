"""Tiny GLM checkpoints for the inference and generation tests, and an independent float64
implementation of GLM-130B's generate.py loop (full forward per token through reference_glm)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from checkpoints.formats.base import WriteOptions
from checkpoints.formats.safetensors_format import SafetensorsWriter
from checkpoints.shapes import GLMShape
from reference_glm import reference_logits

LAYERS, HIDDEN, HEADS, FFN = 2, 64, 4, 128
SPECIAL = {"pad": 0, "eos": 2, "mask": 3, "gmask": 4, "smask": 5, "eod": 6, "sop": 7, "eop": 8}
"""The ids glm-prep's tokenizers use (megatron_glm.data.tokenizer), eos = sentencepiece's </s>."""
SPECIAL_ARG = ",".join(f"{k}={v}" for k, v in SPECIAL.items())


def tiny_shape(vocab: int) -> GLMShape:
    return GLMShape(num_layers=LAYERS, hidden_size=HIDDEN, num_attention_heads=HEADS, ffn_hidden_size=FFN,
                    padded_vocab_size=vocab, vocab_size=vocab)


def tiny_weights(glm: GLMShape, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Random weights with non-trivial LayerNorms and biases, scaled so that logits are spread."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for key, spec, _ in glm.entries():
        noise = torch.randn(tuple(spec.shape(glm)), generator=generator)
        if "layernorm" in key and key.endswith("weight"):
            out[key] = 1.0 + 0.2 * noise
        elif key.endswith("bias"):
            out[key] = 0.05 * noise
        elif "word_embeddings" in key:
            out[key] = 0.5 * noise
        else:
            out[key] = 3.0 * noise / noise.shape[-1] ** 0.5  # large enough that the output is not the input
    return out


def write_safetensors(root: Path, glm: GLMShape, weights: Dict[str, torch.Tensor]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    writer = SafetensorsWriter(root, glm, WriteOptions(), None, {k: v.dtype for k, v in weights.items()})
    for key, spec, layer in glm.entries():
        writer.write(key, spec, layer, weights[key])
    writer.close()
    return root


def reference(weights, tokens: List[int], positions: List[int], mask: torch.Tensor) -> torch.Tensor:
    """float64 logits [s, V] of one sequence (mask [s, s] bool, True = masked)."""
    return reference_logits(weights, torch.tensor([tokens]), torch.tensor([positions]), mask[None, None],
                            num_layers=LAYERS, num_heads=HEADS)[0]


def reference_generate(weights, input_ids: Sequence[int], max_new_tokens: int,
                       special: Optional[Dict[str, int]] = None) -> Dict[str, list]:
    """GLM-130B generate.py with greedy decoding, written from its description (docs/generation.md)
    without a cache: every step runs the whole sequence through the float64 reference."""
    special = special or SPECIAL
    seq = list(input_ids)
    masks = [special["mask"], special["smask"], special["gmask"]]
    kind = special["mask"] if special["mask"] in seq else special["smask"] if special["smask"] in seq \
        else special["gmask"]
    if not any(t in masks for t in seq):
        seq.append(special["gmask"])
    if seq[-1] not in masks:
        seq.append(special["eos"])
    first_input = seq + [special["sop"]]
    blanks = []
    while kind in seq:
        m = seq.index(kind)
        tokens = seq + [special["sop"]]
        context = len(tokens)
        generated: List[int] = []
        for _ in range(max_new_tokens):
            n = len(tokens)
            positions = list(range(n))
            if kind != special["gmask"]:
                positions[context - 1:] = [m] * (n - context + 1)
            visible = torch.ones(n, n, dtype=torch.bool).tril()
            visible[:, :context - 1] = True
            token = int(reference(weights, tokens, positions, ~visible)[-1].argmax())
            if token in (special["eop"], special["eos"]):
                break
            generated.append(token)
            tokens.append(token)
        blanks.append(generated)
        seq = seq[:m] + generated + seq[m + 1:]
    if seq[-1] == special["eos"]:
        seq = seq[:-1]
    return {"input_ids": first_input, "blanks": blanks, "output_ids": seq}
