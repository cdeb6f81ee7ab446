"""Move whole (TP1, PP1) state dicts onto a rank's shard of a model chunk, and back.

megatron-core marks every tensor-parallel parameter with `partition_dim` and `partition_stride`.
A stride-2 parameter is GeGLU's fc1: the full matrix is [X1; X2] and rank r of k holds
[X1_r; X2_r], i.e. chunks r and k + r of 2k (docs/glm130b.md §6, GLU-aware split). Stride 1 covers
everything else, including the per-head-interleaved QKV, whose contiguous split is the head split.
Layer keys are global in a whole state dict ("decoder.layers.<global index>") and local in a chunk.
"""

from __future__ import annotations

import re
from typing import Dict

import torch
import torch.distributed as dist
from megatron.core import parallel_state

_LAYER_KEY = re.compile(r"^decoder\.layers\.(\d+)\.")


def shard(full: torch.Tensor, rank: int, world: int, dim: int, stride: int = 1) -> torch.Tensor:
    """This rank's piece of `full` along `dim` (stride > 1: the interleaved GLU split)."""
    chunks = torch.chunk(full, world * stride, dim=dim)
    return torch.cat([chunks[k * world + rank] for k in range(stride)], dim=dim).clone()


def unshard(pieces, dim: int, stride: int = 1) -> torch.Tensor:
    """Inverse of shard over all ranks' pieces (in rank order)."""
    world = len(pieces)
    per_rank = [torch.chunk(piece, stride, dim=dim) for piece in pieces]
    return torch.cat([per_rank[r][k] for k in range(stride) for r in range(world)], dim=dim)


def _global_key(chunk: torch.nn.Module, local_key: str) -> str:
    match = _LAYER_KEY.match(local_key)
    if not match:
        return local_key
    layer = chunk.decoder.layers[int(match.group(1))]
    return f"decoder.layers.{layer.layer_number - 1}." + local_key[match.end():]


def _full_key(chunk: torch.nn.Module, local_key: str) -> str:
    """The key in a whole-model state dict; the last stage's own copy of the tied output weight
    is the word embedding."""
    if local_key == "output_layer.weight":
        return "embedding.word_embeddings.weight"
    return _global_key(chunk, local_key)


def load_full_state_dict(chunk: torch.nn.Module, full: Dict[str, torch.Tensor]) -> None:
    """Copy a whole-model state dict into this rank's chunk (its TP shard of its PP layers)."""
    rank = parallel_state.get_tensor_model_parallel_rank()
    world = parallel_state.get_tensor_model_parallel_world_size()
    with torch.no_grad():
        for local_key, param in chunk.named_parameters():
            value = full[_full_key(chunk, local_key)]
            if getattr(param, "tensor_model_parallel", False):
                value = shard(value, rank, world, param.partition_dim, param.partition_stride)
            param.copy_(value.to(param.dtype))


def gather_full_tensors(chunk: torch.nn.Module, tensors: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """All-gather per-parameter tensors (weights or gradients, keyed by the chunk's local names)
    over TP and return them under whole-model names."""
    world = parallel_state.get_tensor_model_parallel_world_size()
    group = parallel_state.get_tensor_model_parallel_group()
    params = dict(chunk.named_parameters())
    out = {}
    for local_key, value in tensors.items():
        param = params[local_key]
        if world > 1 and getattr(param, "tensor_model_parallel", False):
            pieces = [torch.empty_like(value) for _ in range(world)]
            dist.all_gather(pieces, value.contiguous(), group=group)
            value = unshard(pieces, param.partition_dim, param.partition_stride)
        out[_full_key(chunk, local_key)] = value
    return out
