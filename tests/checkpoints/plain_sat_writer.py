"""An independent GLM-130B SAT writer for the tests, written from docs/glm130b.md §6 in plain PyTorch.

It shares nothing with checkpoints/: its own name table and split rules straight from the §6 table
(word embeddings, QKV and GLU fc1 on dim 0 -- fc1 split GLU-aware as tools/convert_tp.py does --,
dense and dense_4h_to_h on dim 1, the rest replicated, plus the rotary inv_freq buffer), and
torch.save({'module': ...}) per rank.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import torch

LAYER_NAMES = {  # our canonical layer suffix -> SAT layer suffix, split dim (None: replicated)
    "input_layernorm.weight": ("input_layernorm.weight", None),
    "input_layernorm.bias": ("input_layernorm.bias", None),
    "self_attention.linear_qkv.weight": ("attention.query_key_value.weight", 0),
    "self_attention.linear_qkv.bias": ("attention.query_key_value.bias", 0),
    "self_attention.linear_proj.weight": ("attention.dense.weight", 1),
    "self_attention.linear_proj.bias": ("attention.dense.bias", None),
    "pre_mlp_layernorm.weight": ("post_attention_layernorm.weight", None),
    "pre_mlp_layernorm.bias": ("post_attention_layernorm.bias", None),
    "mlp.linear_fc1.weight": ("mlp.dense_h_to_4h.weight", "glu"),
    "mlp.linear_fc1.bias": ("mlp.dense_h_to_4h.bias", "glu"),
    "mlp.linear_fc2.weight": ("mlp.dense_4h_to_h.weight", 1),
    "mlp.linear_fc2.bias": ("mlp.dense_4h_to_h.bias", None),
}


def _split(tensor: torch.Tensor, how, rank: int, world: int) -> torch.Tensor:
    if how is None:
        return tensor.clone()
    if how == "glu":  # convert_tp.py: chunks = chunk(W, 2k); rank gets cat(chunks[r], chunks[k + r])
        chunks = torch.chunk(tensor, 2 * world, dim=0)
        return torch.cat([chunks[rank], chunks[world + rank]], dim=0).clone()
    return torch.chunk(tensor, world, dim=how)[rank].clone()


def write_sat(weights: Dict[str, torch.Tensor], root: Path, world: int, iteration: int, num_layers: int,
              head_dim: int) -> None:
    (root / str(iteration)).mkdir(parents=True)
    (root / "latest").write_text(str(iteration))
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    for rank in range(world):
        module = {"transformer.word_embeddings.weight":
                  _split(weights["embedding.word_embeddings.weight"], 0, rank, world)}
        for layer in range(num_layers):
            for ours, (sat, how) in LAYER_NAMES.items():
                module[f"transformer.layers.{layer}.{sat}"] = _split(weights[f"decoder.layers.{layer}.{ours}"], how,
                                                                    rank, world)
            module[f"transformer.layers.{layer}.attention.rotary_emb.inv_freq"] = inv_freq.clone()
        for part in ("weight", "bias"):
            module[f"transformer.final_layernorm.{part}"] = weights[f"decoder.final_layernorm.{part}"].clone()
        torch.save({"module": module}, root / str(iteration) / f"mp_rank_{rank:02d}_model_states.pt")
