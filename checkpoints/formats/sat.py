"""GLM-130B's released (SwissArmyTransformer) layout, docs/glm130b.md §6, read and written tensor by tensor.

    DIR/latest                                 the iteration, e.g. "49300"
    DIR/<iter>/mp_rank_XX_model_states.pt      torch.save({'module': state_dict}) of TP rank XX

Key names, shard shapes and splits are those of the §6 table (mappings.PARAMS' sat names);
quantised weights are int8 (INT4: two per byte, half the columns) with a fp16 "<key>_scale" per row
of the shard, as tools/convert_tp.py writes them. The head count cannot be read from the tensors
and comes from the user (--num-attention-heads).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional

import torch

from checkpoints import filecopy
from checkpoints.errors import CheckpointError
from checkpoints.formats.base import CheckpointInfo, Reader, WriteOptions, Writer, count_dtype
from checkpoints.mappings import SAT_ROTARY, ParamSpec, spec_of
from checkpoints.quantize import BITS, dequantize, quantize
from checkpoints.shapes import GLMShape
from checkpoints.torchzip import StreamingTorchReader, StreamingTorchWriter

_SHARD = re.compile(r"^mp_rank_(\d\d)_model_states\.pt$")
_LAYER = re.compile(r"^transformer\.layers\.(\d+)\.")


def is_sat(path: Path) -> bool:
    latest = path / "latest"
    if not latest.is_file():
        return False
    iteration = latest.read_text().strip()
    return (path / iteration).is_dir() and any(_SHARD.match(p.name) for p in (path / iteration).iterdir())


def shard_name(rank: int) -> str:
    return f"mp_rank_{rank:02d}_model_states.pt"


class SatReader(Reader):
    def __init__(self, path: Path, num_attention_heads: Optional[int], layernorm_epsilon: float = 1e-5,
                 rotary_base: int = 10000):
        self.path = Path(path)
        iteration = (self.path / "latest").read_text().strip()
        folder = self.path / iteration
        ranks = sorted(int(_SHARD.match(p.name).group(1)) for p in folder.iterdir() if _SHARD.match(p.name))
        for expected in range(max(ranks) + 1):
            if expected not in ranks:
                raise CheckpointError("shard is missing", folder / shard_name(expected),
                                      hint=f"a TP{max(ranks) + 1} SAT checkpoint needs mp_rank_00 .. "
                                           f"mp_rank_{max(ranks):02d}")
        self.files = [folder / shard_name(rank) for rank in ranks]
        self.shards = [StreamingTorchReader(f) for f in self.files]
        self.modules: List[Dict[str, torch.Tensor]] = []  # memory-mapped
        for file, shard in zip(self.files, self.shards):
            module = shard.obj.get("module") if isinstance(shard.obj, dict) else None
            if not isinstance(module, dict):
                raise CheckpointError("no 'module' state dict at the top level", file,
                                      hint="SAT files hold torch.save({'module': state_dict})")
            for key, value in module.items():
                if not isinstance(value, torch.Tensor):
                    raise CheckpointError(f"not a tensor but {type(value).__name__}", file, key,
                                          hint="SAT files hold torch.save({'module': state_dict})")
            self.modules.append(module)
        self.glm = self._infer_shape(num_attention_heads, layernorm_epsilon, rotary_base)
        self.bits = self._quantization()
        self._check_keys()
        step = int(iteration) if iteration.isdigit() else None
        self.info = CheckpointInfo("sat", str(self.path), step=step, tp=len(self.files),
                                   quantization=f"int{self.bits}" if self.bits else None)
        for module in self.modules:
            for ref in module.values():
                numel = 1
                for size in ref.shape:
                    numel *= size
                count_dtype(self.info, ref.dtype, numel, numel * ref.dtype.itemsize)

    def _ref(self, rank: int, key: str) -> torch.Tensor:
        ref = self.modules[rank].get(key)
        if ref is None:
            raise CheckpointError("key is missing", self.files[rank], key,
                                  hint="this is not a complete GLM SAT shard (see docs/glm130b.md §6)")
        return ref

    def _infer_shape(self, heads: Optional[int], eps: float, rotary_base: int) -> GLMShape:
        world = len(self.files)
        embedding = self._ref(0, "transformer.word_embeddings.weight")
        layers = {int(m.group(1)) for m in map(_LAYER.match, self.modules[0]) if m}
        if not layers or layers != set(range(max(layers) + 1)):
            raise CheckpointError(f"layer indices {sorted(layers)[:5]}... are not 0..N-1", self.files[0],
                                  hint="the shard is incomplete")
        fc1 = self._ref(0, "transformer.layers.0.mlp.dense_h_to_4h.weight")  # rows survive INT4 packing
        if heads is None:
            raise CheckpointError("the number of attention heads is not stored in SAT checkpoints", self.path,
                                  hint="pass --num-attention-heads (GLM-130B: 96)")
        glm = GLMShape(num_layers=max(layers) + 1, hidden_size=embedding.shape[1], num_attention_heads=heads,
                       ffn_hidden_size=fc1.shape[0] * world // 2,
                       padded_vocab_size=embedding.shape[0] * world, layernorm_epsilon=eps, rotary_base=rotary_base)
        qkv = self._ref(0, "transformer.layers.0.attention.query_key_value.weight")
        if qkv.shape[0] * world != 3 * glm.hidden_size:
            raise CheckpointError(f"{world} shards of {qkv.shape[0]} QKV rows do not make 3 x hidden "
                                  f"({3 * glm.hidden_size})", self.files[0],
                                  "transformer.layers.0.attention.query_key_value.weight",
                                  hint="a shard is missing or the shards come from different models")
        glm.validate(self.path)
        return glm

    def _quantization(self) -> Optional[int]:
        key = "transformer.layers.0.attention.query_key_value.weight"
        if key + "_scale" not in self.modules[0]:
            return None
        columns = self._ref(0, key).shape[1]
        return 8 if columns == self.glm.hidden_size else 4

    def _check_keys(self) -> None:
        expected = set()
        for _, spec, layer in self.glm.entries():
            expected.add(spec.sat_key(layer))
            if spec.quantize and self.bits:
                expected.add(spec.sat_key(layer) + "_scale")
        for file, module in zip(self.files, self.modules):
            for key in expected - set(module):
                raise CheckpointError("key is missing", file, key, hint="the shard is incomplete or not GLM")
            for key in set(module) - expected:
                if not re.fullmatch(SAT_ROTARY.replace(".", r"\.").replace("{i}", r"\d+"), key):
                    raise CheckpointError("unexpected key", file, key,
                                          hint="not a GLM-130B parameter (docs/glm130b.md §6)")

    def dtype(self, key: str) -> torch.dtype:
        spec, layer = spec_of(key)
        if spec.quantize and self.bits:
            return torch.float32
        return self._ref(0, spec.sat_key(layer)).dtype

    def read(self, key: str, spec: ParamSpec) -> torch.Tensor:
        layer = int(key.split(".")[2]) if spec.per_layer else None
        sat_key = spec.sat_key(layer)
        world = len(self.files)
        expected = list(spec.shape(self.glm))
        if spec.mapping.dim is not None:
            expected[spec.mapping.dim] //= world
        pieces, starts = [], []
        for rank, shard in enumerate(self.shards):
            ref = self._ref(rank, sat_key)
            tensor = shard.read(ref, sat_key)
            if spec.quantize and self.bits:
                scale = shard.read(self._ref(rank, sat_key + "_scale"), sat_key + "_scale")
                tensor = dequantize(tensor, scale, self.bits)
            if list(tensor.shape) != expected:
                raise CheckpointError(f"shape {tuple(tensor.shape)}, expected {tuple(expected)} for TP{world}",
                                      self.files[rank], sat_key, hint="shape mismatch: shards of another model?")
            pieces.append(tensor)
            starts.append(None if spec.quantize and self.bits else shard.file_offset(tensor))
        full = spec.mapping.merge(pieces, sat_key, self.files[0])
        if filecopy.is_active():
            filecopy.attach(full, self._extents(full, pieces, starts, spec))
        return full

    def _extents(self, full: torch.Tensor, pieces, starts, spec: ParamSpec) -> List[filecopy.Extent]:
        """Where `full`'s bytes lie in the shard files (empty: not all of them do, e.g. a column split)."""
        if None in starts or not all(piece.is_contiguous() for piece in pieces) or not full.is_contiguous():
            return []
        size = full.element_size()
        mapping, world = spec.mapping, len(pieces)
        if mapping.dim is None or world == 1:
            return [(0, full.numel() * size, str(self.files[0]), starts[0])]
        if mapping.dim != 0:
            return []
        extents = []
        for rank, piece in enumerate(pieces):
            offset = 0
            for start, length in mapping.ranges(full.shape[0], world, rank):
                target, source = full.narrow(0, start, length), piece.narrow(0, offset, length)
                extents.append((target.data_ptr() - full.data_ptr(), target.numel() * size, str(self.files[rank]),
                                starts[rank] + source.data_ptr() - piece.data_ptr()))
                offset += length
        return extents

    def close(self) -> None:
        for shard in self.shards:
            shard.close()


class SatWriter(Writer):
    """Plans every shard file up front, then streams each tensor's TP pieces into them."""

    def __init__(self, root: Path, glm: GLMShape, options: WriteOptions, step: Optional[int],
                 dtypes: Dict[str, torch.dtype]):
        if options.pp != 1:
            raise CheckpointError(f"--to sat --pp {options.pp}: SAT checkpoints have no pipeline split",
                                  hint="drop --pp or use --to dist")
        self.glm, self.options, self.world = glm, options, options.tp
        iteration = str(step if step is not None else 0)
        (root / iteration).mkdir(parents=True)
        (root / "latest").write_text(iteration + "\n")
        self.bits = BITS[options.quantize] if options.quantize else None
        self.files = [root / iteration / shard_name(rank) for rank in range(self.world)]
        self.writers = [StreamingTorchWriter(f) for f in self.files]
        for writer in self.writers:
            module = {}
            for key, spec, layer in glm.entries():
                shape = list(spec.shape(glm))
                if spec.mapping.dim is not None:
                    shape[spec.mapping.dim] //= self.world
                sat_key = spec.sat_key(layer)
                if self.bits and spec.quantize:
                    columns = shape[1] // 2 if self.bits == 4 else shape[1]
                    module[sat_key] = writer.placeholder(sat_key, (shape[0], columns), torch.int8)
                    module[sat_key + "_scale"] = writer.placeholder(sat_key + "_scale", (shape[0],), torch.float16)
                else:
                    module[sat_key] = writer.placeholder(sat_key, tuple(shape), self._dtype(dtypes[key]))
                if spec.sat_name.endswith("dense_4h_to_h.bias"):  # last key of a layer: the rotary buffer
                    rotary = SAT_ROTARY.format(i=layer)
                    module[rotary] = writer.placeholder(rotary, (glm.head_dim // 2,), self._dtype(torch.float32))
            writer.plan({"module": module})

    def _dtype(self, source: torch.dtype) -> torch.dtype:
        return self.options.target_dtype(torch.empty(0, dtype=source))

    def write(self, key: str, spec: ParamSpec, layer: Optional[int], full: torch.Tensor) -> None:
        sat_key = spec.sat_key(layer)
        for writer, piece in zip(self.writers, spec.mapping.split(full, self.world, "split")):
            if self.bits and spec.quantize:
                values, scale = quantize(piece, self.bits)
                writer.write(sat_key, values)
                writer.write(sat_key + "_scale", scale)
            else:
                writer.write(sat_key, piece.to(self._dtype(full.dtype)))
        if spec.sat_name.endswith("dense_4h_to_h.bias"):
            d = self.glm.head_dim
            inv_freq = 1.0 / (self.glm.rotary_base ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
            for writer in self.writers:
                writer.write(SAT_ROTARY.format(i=layer), inv_freq.to(self._dtype(torch.float32)))

    def close(self) -> None:
        for writer in self.writers:
            writer.close()
