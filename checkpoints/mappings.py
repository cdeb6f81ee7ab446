"""Typed per-parameter mappings: how each GLM parameter is named in every format and split over TP.

A mapping class says how one whole (TP1) tensor becomes TP pieces and back; a ParamSpec ties a
canonical name (our megatron-core TP1 x PP1 name) to its GLM-130B/SAT name, its mapping and its
shape. Every format and the resharder go through this one table (docs/glm130b.md §6):

    column-parallel    rows split contiguously              (dim 0)
    row-parallel       columns split contiguously           (dim 1)
    vocab-parallel     embedding rows split contiguously    (dim 0)
    interleaved QKV    rows [head][q,k,v][d]; a contiguous split is a head split (dim 0, by head)
    GLU fc1            whole = [X1; X2], rank r holds [X1_r; X2_r] (dim 0, stride 2)
    replicated         every rank holds the whole tensor
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence, Tuple

import torch

from checkpoints.errors import CheckpointError
from checkpoints.memory import empty

if TYPE_CHECKING:
    from checkpoints.shapes import GLMShape


class TensorMapping:
    """Split/merge rule of one parameter over `world` tensor-parallel ranks."""

    dim: Optional[int] = None
    stride: int = 1
    kind = "replicated"

    def units(self, size: int, glm: "GLMShape") -> int:
        """Indivisible units along `dim` (rows; heads for QKV)."""
        return size

    def splits(self, shape: Sequence[int], world: int, glm: "GLMShape") -> bool:
        """Whether `world` ranks can hold equal pieces of a tensor of `shape`."""
        return self.dim is None or world == 1 or self.units(shape[self.dim], glm) % (world * self.stride) == 0

    def check(self, shape: Sequence[int], world: int, glm: "GLMShape", key: str, path: object = None,
              hint: str = "choose a --tp that divides it") -> None:
        """Raise if `world` ranks cannot hold equal pieces of a tensor of `shape`."""
        if self.splits(shape, world, glm):
            return
        size = shape[self.dim]
        if isinstance(self, InterleavedQKV):
            what = f"{self.units(size, glm)} attention heads (each rank holds whole heads)"
        elif self.stride > 1:
            what = f"dimension {self.dim} (2 GLU halves of {size // 2})"
        else:
            what = f"dimension {self.dim} (size {size})"
        raise CheckpointError(f"cannot split {what} into --tp {world} equal tensor-parallel pieces", path, key,
                              hint=hint)

    def ranges(self, size: int, world: int, rank: int) -> List[Tuple[int, int]]:
        """(start, length) pieces of `dim` that `rank` holds, in the order it stores them."""
        part = size // (world * self.stride)
        return [(k * world * part + rank * part, part) for k in range(self.stride)]

    def split(self, full: torch.Tensor, world: int, slot: Optional[str] = None) -> List[torch.Tensor]:
        if self.dim is None or world == 1:
            return [full] * world
        pieces = []
        for rank in range(world):
            parts = [full.narrow(self.dim, start, length) for start, length in
                     self.ranges(full.shape[self.dim], world, rank)]
            if len(parts) == 1:
                pieces.append(parts[0])  # a view
            elif slot is None:
                pieces.append(torch.cat(parts, dim=self.dim))
            else:  # into a reused buffer (see memory.BufferPool): valid until the next split
                shape = list(parts[0].shape)
                shape[self.dim] = sum(part.shape[self.dim] for part in parts)
                pieces.append(torch.cat(parts, dim=self.dim, out=empty(shape, full.dtype, f"{slot}{rank}")))
        return pieces

    def merge(self, pieces: Sequence[torch.Tensor], key: str = "", path: object = None) -> torch.Tensor:
        world = len(pieces)
        if self.dim is None or world == 1:
            for rank, piece in enumerate(pieces[1:], start=1):
                if piece.shape != pieces[0].shape or not torch.equal(piece, pieces[0]):
                    raise CheckpointError(f"replicated tensor differs between rank 0 and rank {rank}", path, key,
                                          hint="the shards come from different checkpoints")
            return pieces[0]
        shape = list(pieces[0].shape)
        for rank, piece in enumerate(pieces):
            if list(piece.shape) != shape:
                raise CheckpointError(f"rank {rank} holds shape {tuple(piece.shape)}, rank 0 {tuple(shape)}",
                                      path, key, hint="the shards come from different checkpoints")
        size = shape[self.dim] * world
        shape[self.dim] = size
        full = empty(shape, pieces[0].dtype, "merged")
        for rank, piece in enumerate(pieces):
            offset = 0
            for start, length in self.ranges(size, world, rank):
                full.narrow(self.dim, start, length).copy_(piece.narrow(self.dim, offset, length))
                offset += length
        return full


class Replicated(TensorMapping):
    kind = "replicated"


class ColumnParallel(TensorMapping):
    dim, kind = 0, "column-parallel"


class RowParallel(TensorMapping):
    dim, kind = 1, "row-parallel"


class VocabParallel(TensorMapping):
    dim, kind = 0, "vocab-parallel"


class InterleavedQKV(ColumnParallel):
    """Rows [head][q, k, v][head_dim]: TP ranks hold whole heads, so the split counts heads."""

    kind = "qkv-interleaved"

    def units(self, size: int, glm: "GLMShape") -> int:
        return glm.num_attention_heads


class GLUColumnParallel(ColumnParallel):
    """GeGLU fc1: rank r of k holds chunks r and k + r of 2k (docs/glm130b.md §6 merge_weights)."""

    stride, kind = 2, "glu-column-parallel"


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: canonical and SAT names ({i} = layer), TP mapping, shape, quantisable."""

    name: str
    sat_name: str
    mapping: TensorMapping
    shape: Callable[["GLMShape"], Tuple[int, ...]]
    quantize: bool = False
    first: bool = False
    """Outside the layers and before them (the embedding); other non-layer params come last."""

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.name

    def key(self, layer: Optional[int]) -> str:
        return self.name.format(i=layer)

    def sat_key(self, layer: Optional[int]) -> str:
        return self.sat_name.format(i=layer)


def _hidden(g):
    return (g.hidden_size,)


_L, _S = "decoder.layers.{i}.", "transformer.layers.{i}."

PARAMS: List[ParamSpec] = [
    ParamSpec("embedding.word_embeddings.weight", "transformer.word_embeddings.weight", VocabParallel(),
              lambda g: (g.padded_vocab_size, g.hidden_size), first=True),
    ParamSpec(_L + "input_layernorm.weight", _S + "input_layernorm.weight", Replicated(), _hidden),
    ParamSpec(_L + "input_layernorm.bias", _S + "input_layernorm.bias", Replicated(), _hidden),
    ParamSpec(_L + "self_attention.linear_qkv.weight", _S + "attention.query_key_value.weight", InterleavedQKV(),
              lambda g: (3 * g.hidden_size, g.hidden_size), quantize=True),
    ParamSpec(_L + "self_attention.linear_qkv.bias", _S + "attention.query_key_value.bias", InterleavedQKV(),
              lambda g: (3 * g.hidden_size,)),
    ParamSpec(_L + "self_attention.linear_proj.weight", _S + "attention.dense.weight", RowParallel(),
              lambda g: (g.hidden_size, g.hidden_size), quantize=True),
    ParamSpec(_L + "self_attention.linear_proj.bias", _S + "attention.dense.bias", Replicated(), _hidden),
    ParamSpec(_L + "pre_mlp_layernorm.weight", _S + "post_attention_layernorm.weight", Replicated(), _hidden),
    ParamSpec(_L + "pre_mlp_layernorm.bias", _S + "post_attention_layernorm.bias", Replicated(), _hidden),
    ParamSpec(_L + "mlp.linear_fc1.weight", _S + "mlp.dense_h_to_4h.weight", GLUColumnParallel(),
              lambda g: (2 * g.ffn_hidden_size, g.hidden_size), quantize=True),
    ParamSpec(_L + "mlp.linear_fc1.bias", _S + "mlp.dense_h_to_4h.bias", GLUColumnParallel(),
              lambda g: (2 * g.ffn_hidden_size,)),
    ParamSpec(_L + "mlp.linear_fc2.weight", _S + "mlp.dense_4h_to_h.weight", RowParallel(),
              lambda g: (g.hidden_size, g.ffn_hidden_size), quantize=True),
    ParamSpec(_L + "mlp.linear_fc2.bias", _S + "mlp.dense_4h_to_h.bias", Replicated(), _hidden),
    ParamSpec("decoder.final_layernorm.weight", "transformer.final_layernorm.weight", Replicated(), _hidden),
    ParamSpec("decoder.final_layernorm.bias", "transformer.final_layernorm.bias", Replicated(), _hidden),
]

SPEC_BY_NAME = {spec.name: spec for spec in PARAMS}
SAT_ROTARY = _S + "attention.rotary_emb.inv_freq"
"""Present in GLM-130B's shards (tools/convert_tp.py lists it as replicated); SAT ignores it."""


def check_layout(glm: "GLMShape", tp: int, pp: int, path: object = None) -> None:
    """Raise unless every parameter splits into `tp` pieces and the layers into `pp` stages."""
    if tp < 1 or pp < 1:
        raise CheckpointError(f"TP {tp} x PP {pp} is not a layout", path, hint="use positive --tp/--pp")
    if glm.num_layers % pp:
        raise CheckpointError(f"{glm.num_layers} layers cannot be split into {pp} equal pipeline stages", path,
                              hint="choose a --pp that divides the number of layers")
    entries = glm.entries()
    for key, spec, _ in entries:
        if not spec.mapping.splits(spec.shape(glm), tp, glm):
            fits = [t for t in range(1, 65) if all(s.mapping.splits(s.shape(glm), t, glm) for _, s, _ in entries)]
            spec.mapping.check(spec.shape(glm), tp, glm, key, path,
                               hint=f"this model splits for --tp {', '.join(map(str, fits))}")


def spec_of(key: str) -> Tuple[ParamSpec, Optional[int]]:
    """The ParamSpec and layer of a canonical key ("decoder.layers.3.mlp.linear_fc1.weight")."""
    parts = key.split(".")
    layer = None
    if parts[:2] == ["decoder", "layers"] and len(parts) > 3 and parts[2].isdigit():
        layer, key = int(parts[2]), "decoder.layers.{i}." + ".".join(parts[3:])
    spec = SPEC_BY_NAME.get(key)
    if spec is None:
        raise CheckpointError("unknown parameter", key=key, hint="not a GLM parameter (see checkpoints/mappings.py)")
    return spec, layer
