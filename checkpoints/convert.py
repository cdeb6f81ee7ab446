"""Open any supported checkpoint, and convert one into another format/layout, tensor by tensor.

Conversion reads one whole tensor, hands it to the target writer (which splits, casts or quantises
it and writes it out) and drops it before the next, so memory stays at a few of the largest
tensors. The destination is built in a hidden sibling directory and renamed into place at the end:
a failure at any point leaves no partial DST, and an existing DST is kept unless --force.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from tqdm import tqdm

from checkpoints.errors import CheckpointError
from checkpoints.formats.base import Reader, WriteOptions, Writer
from checkpoints.formats.dist import DistReader, DistWriter, checkpoint_dir, spec_for
from checkpoints.formats.safetensors_format import SafetensorsReader, SafetensorsWriter, is_safetensors
from checkpoints.formats.sat import SatReader, SatWriter, is_sat
from checkpoints.mappings import ParamSpec, check_layout
from checkpoints import filecopy
from checkpoints.memory import BufferPool

FORMATS = ("dist", "sat", "safetensors")


@dataclass
class ReadOptions:
    """What a format may not record and the user supplies (GLM-130B: 96 heads, eps 1e-5, base 1e4)."""

    num_attention_heads: Optional[int] = None
    layernorm_epsilon: float = 1e-5
    rotary_base: int = 10000


def open_checkpoint(path: str, options: Optional[ReadOptions] = None) -> Reader:
    """A reader for whatever format `path` holds."""
    options = options or ReadOptions()
    path = Path(path)
    if not path.exists():
        raise CheckpointError("does not exist", path)
    if is_safetensors(path):
        return SafetensorsReader(path)
    if is_sat(path):
        return SatReader(path, options.num_attention_heads, options.layernorm_epsilon, options.rotary_base)
    if checkpoint_dir(path) is not None:
        return DistReader(path, options.num_attention_heads, options.layernorm_epsilon, options.rotary_base)
    raise CheckpointError("not a recognised checkpoint", path,
                          hint="expected a dist checkpoint (latest + iter_*/.metadata), a SAT directory "
                               "(latest + <iter>/mp_rank_XX_model_states.pt) or a safetensors export (config.json)")


def _writer(to: str, root: Path, reader: Reader, options: WriteOptions, dtypes: Dict[str, torch.dtype],
            extras: List[str]) -> Writer:
    step = reader.info.step
    if to == "dist":
        return DistWriter(root, reader.glm, options, step, dtypes, reader.info.common, reader.info.format, extras)
    if to == "sat":
        return SatWriter(root, reader.glm, options, step, dtypes)
    if to == "safetensors":
        return SafetensorsWriter(root, reader.glm, options, step, dtypes)
    raise CheckpointError(f"unknown target format {to!r}", hint=f"use one of {', '.join(FORMATS)}")


def convert(src: str, dst: str, to: str, options: WriteOptions, read_options: Optional[ReadOptions] = None,
            force: bool = False, progress: bool = True) -> Dict[str, object]:
    """Write SRC as `to` into DST; returns a summary (tensors, bytes, optimizer carried)."""
    dst_path = Path(dst)
    if dst_path.exists() and not force:
        raise CheckpointError("destination exists", dst_path, hint="pass --force to replace it")
    if dst_path.resolve() == Path(src).resolve():
        raise CheckpointError("source and destination are the same directory", dst_path)
    reader = open_checkpoint(src, read_options)
    try:
        check_layout(reader.glm, options.tp, options.pp, dst_path)
        entries = reader.glm.entries()
        extras: List[str] = []
        if to == "dist" and not options.model_only:
            extras = reader.extra_keys()
        dtypes = {key: reader.dtype(key) for key in [key for key, _, _ in entries] + extras}
        dst_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst_path.parent / f".{dst_path.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            with BufferPool.active(), filecopy.active():
                source = _SourceTensors(reader, entries, extras, f"convert to {to}", progress)
                _writer(to, tmp, reader, options, dtypes, extras).write_all(source)
            _publish(tmp, dst_path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        reader.close()
    return {"tensors": len(entries), "optimizer_tensors": len(extras), "bytes_read": source.bytes_read,
            "optimizer_dropped": reader.info.has_optimizer and not extras, "destination": str(dst_path)}


class _SourceTensors:
    """The source's tensors in the order writers take them (the model's, then optimizer state),
    each read when the writer asks for it and dropped before the next is read: buffers are reused,
    and unchanged source bytes are copied file to file (memory.BufferPool, filecopy)."""

    def __init__(self, reader: Reader, entries, extras: List[str], description: str, progress: bool):
        self.reader, self.entries, self.extras = reader, entries, extras
        self.description, self.progress = description, progress
        self.bytes_read = 0

    def __iter__(self) -> Iterator[Tuple[str, ParamSpec, Optional[int], torch.Tensor, bool]]:
        bar = {"unit": "tensor", "leave": False, "disable": None if self.progress else True}
        for key, spec, layer in tqdm(self.entries, desc=self.description, **bar):
            filecopy.forget()
            full = self.reader.read(key, spec)
            self.bytes_read += full.numel() * full.element_size()
            yield key, spec, layer, full, False
        for key in tqdm(self.extras, desc="optimizer state", **bar):
            spec, layer = spec_for(key)
            filecopy.forget()
            yield key, spec, layer, self.reader.read(key, spec), True


def _publish(tmp: Path, dst: Path) -> None:
    """Rename the finished tmp directory to DST (moving an old DST aside first, then deleting it)."""
    old = None
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{os.getpid()}"
        os.replace(dst, old)
    os.replace(tmp, dst)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()
