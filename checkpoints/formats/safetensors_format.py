"""safetensors export for inference: consolidated (TP1) weights under our canonical names.

    DIR/config.json                          {"format": "glm-safetensors", "glm_model": {...},
                                              "quantization": null | {"bits", "scheme"}, "step"}
    DIR/model.safetensors                    one file, or with a size limit:
    DIR/model-00001-of-0000N.safetensors     + DIR/model.safetensors.index.json (weight_map)

Files are read by the safetensors package (safe_open: tensors are views of the file's memory map)
and written tensor by tensor (SafetensorsWriter says why not with save_file). Quantised weights
are int8 (INT4 packed) with a fp16 "<key>_scale" of one row each (docs/glm130b.md §5, TP1 rows).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from safetensors import safe_open

from checkpoints.errors import CheckpointError
from checkpoints.formats.base import CheckpointInfo, Reader, WriteOptions, Writer, count_dtype
from checkpoints import filecopy
from checkpoints.mappings import ParamSpec
from checkpoints.memory import contiguous
from checkpoints.quantize import BITS, dequantize, quantize
from checkpoints.shapes import GLMShape

CONFIG = "config.json"
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
FORMAT = "glm-safetensors"
_CODES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int8: "I8",
          torch.float64: "F64", torch.uint8: "U8", torch.int32: "I32", torch.int64: "I64"}
_DTYPES = {code: dtype for dtype, code in _CODES.items()}


def is_safetensors(path: Path) -> bool:
    return (path / CONFIG).is_file() and ((path / SINGLE).is_file() or (path / INDEX).is_file())


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot read JSON ({error})", path, hint="the file is corrupt") from None


class SafetensorsReader(Reader):
    """Tensors through the safetensors package (safe_open): each is a view of the file's memory map,
    nothing is read until touched (file pages, not anonymous memory)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        config = _read_json(self.path / CONFIG)
        if config.get("format") != FORMAT or "glm_model" not in config:
            raise CheckpointError(f"not a {FORMAT} config", self.path / CONFIG, "format",
                                  hint="export with glm-ckpt convert --to safetensors")
        self.glm = GLMShape.from_dict(config["glm_model"], self.path / CONFIG)
        quant = config.get("quantization")
        self.bits = quant["bits"] if quant else None
        if (self.path / INDEX).is_file():
            weight_map = _read_json(self.path / INDEX).get("weight_map", {})
        else:
            weight_map = None
        self.files: Dict[str, Path] = {}
        self._handles: Dict[Path, object] = {}
        self._starts: Dict[Path, Optional[int]] = {}
        files = sorted(set(weight_map.values())) if weight_map is not None else [SINGLE]
        for name in files:
            file = self.path / name
            if not file.is_file():
                raise CheckpointError("file listed in the index is missing", file,
                                      hint="copy every model-*.safetensors file")
            try:
                handle = self._handles[file] = safe_open(str(file), framework="pt")
            except Exception as error:  # SafetensorError: header too large, invalid, file too short
                raise CheckpointError(f"not a readable safetensors file ({error})", file,
                                      hint="the file is truncated or corrupt: copy it again") from None
            for key in handle.keys():
                self.files[key] = file
            self._starts[file] = _map_start(file, handle)
        self.info = CheckpointInfo("safetensors", str(self.path), step=config.get("step"),
                                   quantization=f"int{self.bits}" if self.bits else None)
        for key, file in self.files.items():
            view = self._handles[file].get_slice(key)
            dtype, numel = _DTYPES.get(view.get_dtype()), 1
            if dtype is None:
                raise CheckpointError(f"unsupported dtype {view.get_dtype()}", file, key)
            for size in view.get_shape():
                numel *= size
            count_dtype(self.info, dtype, numel, numel * dtype.itemsize)
        for key, spec, _ in self.glm.entries():
            if key not in self.files:
                raise CheckpointError("key is missing", self.path, key, hint="the export is incomplete")

    def _tensor(self, key: str) -> torch.Tensor:
        file = self.files[key]
        try:
            out = self._handles[file].get_tensor(key)
        except Exception as error:
            raise CheckpointError(f"cannot read the tensor ({error})", file, key, hint="the file is corrupt") from None
        start = self._starts[file]
        if start is not None and out.numel():
            filecopy.attach(out, [(0, out.numel() * out.element_size(), str(file), out.data_ptr() - start)])
        return out

    def dtype(self, key: str) -> torch.dtype:
        if key + "_scale" in self.files:
            return torch.float32
        return _DTYPES[self._handles[self.files[key]].get_slice(key).get_dtype()]

    def read(self, key: str, spec: ParamSpec) -> torch.Tensor:
        tensor = self._tensor(key)
        if spec.quantize and self.bits:
            tensor = dequantize(tensor, self._tensor(key + "_scale"), self.bits)
            filecopy.forget()
        expected = tuple(spec.shape(self.glm))
        if tuple(tensor.shape) != expected:
            raise CheckpointError(f"shape {tuple(tensor.shape)}, expected {expected}", self.files[key], key,
                                  hint="shape mismatch with config.json")
        return tensor

    def close(self) -> None:
        self._handles.clear()


def _map_start(file: Path, handle) -> Optional[int]:
    """The address of byte 0 of `file` in safe_open's memory map, or None (then no file copies).

    A safetensors file ends with its tensors' bytes, back to back without holes (the format's rule),
    so the first tensor in file order starts at file size - the sum of their sizes; tensors that are
    views of one map lie at those offsets."""
    tensors = sorted((handle.get_tensor(key) for key in handle.keys()), key=lambda t: t.data_ptr())
    sizes = [t.numel() * t.element_size() for t in tensors]
    offset = file.stat().st_size - sum(sizes)
    start = None
    for tensor, size in zip(tensors, sizes):
        if size:
            if start is None:
                start = tensor.data_ptr() - offset
            elif tensor.data_ptr() - start != offset:
                return None
        offset += size
    return start


class SafetensorsWriter(Writer):
    """Streams each file: its header (computed from the planned shapes, in the format's own layout:
    8-byte little-endian length, JSON of dtype/shape/data_offsets, padded to 8 bytes) is written
    first, then each tensor's bytes as it arrives, in the kernel where they are unchanged source
    bytes (filecopy.copy_to), else from memory (filecopy.write_memory).

    Not safetensors.save_file, which takes a whole file's tensors at once: a conversion would have to
    hold them until the file's last one arrives, as views of file maps with the computed ones in a
    spill file, so their bytes are written twice and read back through a memory map. Measured
    2026-12-04 on the 2-core machine (1.11 GB fp32 model,
    `python bench/ckpt_convert_throughput.py`, before/after alternated in one sitting, bench/RESULTS.md):
    dist TP2xPP2 -> safetensors took 3.7-6.4 s with save_file against 1.0-2.3 s streamed (medians of
    six runs each 5.0 s and 1.7 s; 0.11-0.18x the speed of `cp -r` against 0.27-0.90x): save_file
    cost about two thirds of the conversion time. The files are read by safe_open and, in the tests, by
    safetensors.torch.load_file."""

    def __init__(self, root: Path, glm: GLMShape, options: WriteOptions, step: Optional[int],
                 dtypes: Dict[str, torch.dtype]):
        if options.tp != 1 or options.pp != 1:
            raise CheckpointError(f"--to safetensors --tp {options.tp} --pp {options.pp}: safetensors exports are "
                                  "consolidated (TP1 x PP1)", hint="drop --tp/--pp or use --to dist / --to sat")
        self.root, self.glm, self.options = root, glm, options
        self.bits = BITS[options.quantize] if options.quantize else None
        plan: List[Tuple[str, torch.dtype, Tuple[int, ...]]] = []
        for key, spec, _ in glm.entries():
            shape = tuple(spec.shape(glm))
            if self.bits and spec.quantize:
                plan.append((key, torch.int8, (shape[0], shape[1] // 2 if self.bits == 4 else shape[1])))
                plan.append((key + "_scale", torch.float16, (shape[0],)))
            else:
                plan.append((key, options.target_dtype(torch.empty(0, dtype=dtypes[key])), shape))
        self.files = self._assign_files(plan)
        self.order = [name for file in self.files for name in file[1]]
        self.plan = {name: (dtype, shape) for name, dtype, shape in plan}
        self._next = 0
        self._handle = None
        self._file_index = -1
        config = {"format": FORMAT, "glm_model": glm.to_dict(), "step": step,
                  "quantization": {"bits": self.bits, "scheme": "per-row symmetric absmax, fp16 scales"}
                  if self.bits else None}
        (root / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        if len(self.files) > 1:
            index = {"metadata": {"total_size": sum(_nbytes(d, s) for _, d, s in plan)},
                     "weight_map": {name: file for file, names in self.files for name in names}}
            (root / INDEX).write_text(json.dumps(index, indent=2) + "\n")

    def _assign_files(self, plan) -> List[Tuple[str, List[str]]]:
        limit = self.options.max_shard_bytes
        groups: List[List[str]] = [[]]
        size = 0
        for name, dtype, shape in plan:
            nbytes = _nbytes(dtype, shape)
            if limit and groups[-1] and size + nbytes > limit:
                groups.append([])
                size = 0
            groups[-1].append(name)
            size += nbytes
        if len(groups) == 1:
            return [(SINGLE, groups[0])]
        return [(f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors", g) for i, g in enumerate(groups)]

    def _emit(self, name: str, tensor: torch.Tensor) -> None:
        if self._next >= len(self.order) or self.order[self._next] != name:
            raise CheckpointError("tensor arrived out of the planned order", self.root, name)
        while self._handle is None or name not in self.files[self._file_index][1]:
            self._open_next()
        dtype, shape = self.plan[name]
        if tensor.dtype != dtype or tuple(tensor.shape) != shape:
            raise CheckpointError(f"planned {shape} {dtype}, got {tuple(tensor.shape)} {tensor.dtype}", self.root, name)
        data = contiguous(tensor, "contig")
        ranges = filecopy.source_ranges(data)
        if ranges is not None:  # unchanged bytes of the source: copied file to file in the kernel
            self._handle.flush()
            position = self._handle.tell()
            position += filecopy.copy_to(ranges, self._handle.fileno(), position)
            self._handle.seek(position)
        else:
            self._handle.flush()
            position = self._handle.tell()
            position += filecopy.write_memory(self._handle.fileno(), position, data.view(-1).view(torch.uint8).numpy())
            self._handle.seek(position)
        self._next += 1

    def _open_next(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self._file_index += 1
        file, names = self.files[self._file_index]
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name in names:
            dtype, shape = self.plan[name]
            nbytes = _nbytes(dtype, shape)
            header[name] = {"dtype": _CODES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)
        self._handle = open(self.root / file, "wb")
        self._handle.write(struct.pack("<Q", len(encoded)) + encoded)

    def write(self, key: str, spec: ParamSpec, layer: Optional[int], full: torch.Tensor) -> None:
        if self.bits and spec.quantize:
            values, scale = quantize(full, self.bits)
            self._emit(key, values)
            self._emit(key + "_scale", scale)
        else:
            self._emit(key, full.to(self.plan[key][0]))

    def close(self) -> None:
        if self._next != len(self.order):
            raise CheckpointError("not every planned tensor was written", self.root, self.order[self._next])
        if self._handle is not None:
            self._handle.close()


def _nbytes(dtype: torch.dtype, shape) -> int:
    numel = 1
    for size in shape:
        numel *= size
    return numel * dtype.itemsize
