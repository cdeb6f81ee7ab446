"""Build the quantized GLM model and fill its quantized layers, one tensor at a time.

Two sources, per weight:
- the checkpoint already holds it quantized with the requested bits (glm-ckpt's SAT or safetensors
  export, GLM-130B's SAT files): the stored int8 / packed-int4 values and their scales are
  re-sharded for this rank without ever being dequantized. Column-parallel weights (QKV, GeGLU fc1)
  split by rows, and per-row scales go with their rows, at any TP. Row-parallel weights (attention
  dense, fc2) carry one scale per row *of each stored TP shard*; a rank can take a column slice of
  one stored shard (TP a multiple of the stored TP) but not pieces of several (TP below it).
- otherwise (full precision, or other bits): the weight is read at full precision, this rank's
  shard is cut and quantized exactly as GLM-130B does (per-row absmax of the local shard, fp16
  scales; checkpoints.quantize), and the full-precision copy is dropped before the next tensor.

Either way the only full-size tensors alive at once are one weight and its shard (per-tensor
scratch); the model itself holds int8 bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import torch

from megatron_glm.inference.model import InferenceError
from megatron_glm.quantization.layers import QuantizedParallelLinear, packed_columns

BITS = {"int8": 8, "int4": 4}


class QuantizationError(InferenceError):
    """A quantized checkpoint that does not fit the model or layout; the message names the tensor and the fix."""


def quantized_modules(model: torch.nn.Module) -> List[Tuple[str, QuantizedParallelLinear]]:
    return [(name, module) for name, module in model.named_modules() if isinstance(module, QuantizedParallelLinear)]


# -------------------------------------------------------------------------------------------------
# Raw (still quantized) tensors of the readers glm-ckpt has


def _sat_tensor(reader, rank: int, key: str) -> torch.Tensor:
    ref = reader._ref(rank, key)  # pylint: disable=protected-access
    if isinstance(ref, torch.Tensor):  # memory-mapped view of the shard file
        return reader.shards[rank].read(ref, key)
    return reader.shards[rank].read(ref, key, f"quantized{rank}").clone()  # a streaming reader's reused buffer


def stored_pieces(reader, key: str, spec) -> Optional[Tuple[List[torch.Tensor], List[torch.Tensor], List[Path]]]:
    """(int8 values per stored TP rank, scales per rank, files) of a quantized weight, or None when
    the reader does not hold it quantized."""
    if not spec.quantize or not getattr(reader, "bits", None):
        return None
    kind = getattr(reader.info, "format", "")
    if kind == "sat":
        layer = int(key.split(".")[2]) if spec.per_layer else None
        sat_key = spec.sat_key(layer)
        values = [_sat_tensor(reader, rank, sat_key) for rank in range(len(reader.files))]
        scales = [_sat_tensor(reader, rank, sat_key + "_scale") for rank in range(len(reader.files))]
        return values, scales, [Path(f) for f in reader.files]
    if kind == "safetensors":
        values, scale = reader._tensor(key), reader._tensor(key + "_scale")  # pylint: disable=protected-access
        return [values], [scale], [Path(reader.files[key])]
    return None


def _check_pieces(key: str, spec, glm, bits: int, values, scales, files) -> None:
    rows, columns = spec.shape(glm)
    stored = len(values)
    if spec.mapping.dim == 0:
        rows //= stored
    elif spec.mapping.dim == 1:
        columns //= stored
    expected = (rows, packed_columns(columns, bits))
    for rank, (value, scale, file) in enumerate(zip(values, scales, files)):
        name = f"{key} in {file}" + (f" (TP rank {rank})" if stored > 1 else "")
        if value.dtype != torch.int8 or tuple(value.shape) != expected:
            got = f"{value.dtype} {tuple(value.shape)}"
            hint = ""
            if value.dtype == torch.int8 and value.shape[0] == rows and value.shape[1] in (columns, columns // 2):
                hint = (f": its packing is INT{8 if value.shape[1] == columns else 4}, other weights' INT{bits}; "
                        "re-convert the checkpoint with one glm-ckpt convert --quantize")
            raise QuantizationError(f"{name}: expected INT{bits} values int8 {expected} for a [{rows}, {columns}] "
                                    f"shard, got {got}{hint}")
        if scale.dim() != 1 or scale.shape[0] != rows or not scale.is_floating_point():
            raise QuantizationError(f"{name}_scale: expected one floating-point scale per row [{rows}], got "
                                    f"{scale.dtype} {tuple(scale.shape)}: scales and weights do not match; "
                                    "re-convert with glm-ckpt convert --quantize")


def local_quantized(key: str, spec, glm, bits: int, values, scales, files, rank: int, world: int
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """This rank's (values, scales) of a stored quantized weight at TP `world`."""
    from megatron_glm.model.tp_shard import shard, unshard

    _check_pieces(key, spec, glm, bits, values, scales, files)
    stored = len(values)
    dim, stride = spec.mapping.dim, spec.mapping.stride
    if dim == 0:  # rows (and their scales) split freely
        if stored == world:
            return values[rank].clone(), scales[rank].clone()
        full_values = unshard(list(values), 0, stride) if stored > 1 else values[0]
        full_scales = unshard(list(scales), 0, stride) if stored > 1 else scales[0]
        return shard(full_values, rank, world, 0, stride), shard(full_scales, rank, world, 0, stride)
    columns = spec.shape(glm)[1]
    if world % stored:
        raise QuantizationError(
            f"{key} in {files[0]}: a TP{stored} quantized checkpoint has one scale per row of each of its "
            f"{stored} row-parallel shards, which TP{world} ranks cannot split (each would need parts of several "
            f"shards). Run it at TP{stored} or a multiple of it, re-convert it for TP{world} "
            f"(glm-ckpt convert SRC DST --to sat --tp {world} --quantize int{bits} from the full-precision "
            "checkpoint), or load it dequantized (--quantize none)")
    local = columns // world
    if bits == 4 and local % 2:
        raise QuantizationError(f"{key}: INT4 packs two columns per byte and TP{world} leaves {local} (odd) "
                                f"columns per rank; use another TP or INT8")
    per_piece = world // stored
    piece, part = rank // per_piece, rank % per_piece
    width = packed_columns(local, bits)
    return values[piece][:, part * width:(part + 1) * width].clone(), scales[piece].clone()


def load_quantized_weights(model: torch.nn.Module, reader, quantize: str) -> dict:
    """Fill every quantized layer of `model` (this rank's TP shard of this stage's layers) from
    `reader`; returns {"stored": n, "quantized_on_load": m} weights."""
    from megatron.core import parallel_state

    from megatron_glm.quantization.kernels import quantize_rows

    from megatron_glm.model.tp_shard import _full_key, shard

    bits = BITS[quantize]
    specs = {key: spec for key, spec, _ in reader.glm.entries()}
    rank = parallel_state.get_tensor_model_parallel_rank()
    world = parallel_state.get_tensor_model_parallel_world_size()
    counts = {"stored": 0, "quantized_on_load": 0}
    for name, module in quantized_modules(model):
        key = _full_key(model, name + ".weight")
        spec = specs.get(key)
        if spec is None or not spec.quantize:
            raise QuantizationError(f"the model has a quantized weight {key!r} that the checkpoint does not map")
        pieces = stored_pieces(reader, key, spec) if getattr(reader, "bits", None) == bits else None
        with torch.no_grad():
            if pieces is not None:
                values, scales = local_quantized(key, spec, reader.glm, bits, *pieces, rank, world)
                counts["stored"] += 1
            else:
                full = reader.read(key, spec)
                local = shard(full, rank, world, spec.mapping.dim, spec.mapping.stride) if world > 1 else full
                del full
                values, scales = quantize_rows(local.float(), bits)
                del local
                counts["quantized_on_load"] += 1
            try:
                module.set_quantized(values.to(module.weight.device), scales.to(module.weight.device), key)
            except ValueError as error:
                raise QuantizationError(f"{error}; the checkpoint does not match its config") from None
    return counts
