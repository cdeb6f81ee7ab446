"""What every format's reader and writer offer the converter, and the options a writer takes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch

from checkpoints.mappings import ParamSpec
from checkpoints.shapes import GLMShape

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class CheckpointInfo:
    """What `glm-ckpt inspect` reports; readers fill what their format knows."""

    format: str
    path: str
    step: Optional[int] = None
    consumed_samples: Optional[int] = None
    tp: int = 1
    pp: int = 1
    has_optimizer: bool = False
    quantization: Optional[str] = None
    dtypes: Dict[str, int] = field(default_factory=dict)
    """dtype name -> number of parameters stored in it."""
    bytes: int = 0
    common: Dict[str, Any] = field(default_factory=dict)
    """Training state carried by dist checkpoints (loop, scheduler, optimizer param groups)."""


@dataclass
class WriteOptions:
    tp: int = 1
    pp: int = 1
    dtype: Optional[str] = None
    """fp32/fp16/bf16, None: keep each tensor's dtype (fp16 for non-quantised tensors with --quantize)."""
    quantize: Optional[str] = None
    """int8 / int4 weight-only quantisation of the four linear weights per layer."""
    model_only: bool = False
    max_shard_bytes: Optional[int] = None
    """safetensors: split into files of at most this many bytes (plus an index JSON)."""

    def target_dtype(self, tensor: torch.Tensor) -> torch.dtype:
        if self.dtype is not None:
            return DTYPES[self.dtype]
        if self.quantize is not None:
            return torch.float16
        return tensor.dtype


class Reader:
    """Whole (TP1) tensors by canonical key, whatever the layout on disk."""

    info: CheckpointInfo
    glm: GLMShape

    def read(self, key: str, spec: ParamSpec) -> torch.Tensor:
        raise NotImplementedError

    def dtype(self, key: str) -> torch.dtype:
        """The dtype read(key) returns (float32 for dequantised weights), without reading."""
        raise NotImplementedError

    def extra_keys(self) -> List[str]:
        """Optimizer tensors (dist only), keyed "optimizer.state.<name>.<canonical param>"."""
        return []

    def close(self) -> None:
        pass


class Writer:
    """Takes whole tensors in GLMShape.entries() order (then optimizer extras) and writes them under
    `root`: write_all() takes them from the converter; formats that write tensor by tensor implement
    write() (and write_extra() if they hold optimizer state) and close()."""

    def write_all(self, tensors: Iterable[Tuple[str, ParamSpec, Optional[int], torch.Tensor, bool]]) -> None:
        """Write every (key, spec, layer, tensor, is optimizer state) the converter yields, then
        finish the files. A tensor is valid only until the next one is taken (buffers are reused)."""
        for key, spec, layer, full, extra in tensors:
            (self.write_extra if extra else self.write)(key, spec, layer, full)
        self.close()

    def write(self, key: str, spec: ParamSpec, layer: Optional[int], full: torch.Tensor) -> None:
        raise NotImplementedError

    def write_extra(self, key: str, spec: ParamSpec, layer: Optional[int], full: torch.Tensor) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def count_dtype(info: CheckpointInfo, dtype: torch.dtype, numel: int, nbytes: int) -> None:
    name = dtype_name(dtype)
    info.dtypes[name] = info.dtypes.get(name, 0) + numel
    info.bytes += nbytes
