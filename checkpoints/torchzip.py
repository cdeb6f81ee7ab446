"""Read and write torch.save-format files (what SAT's mp_rank_XX_model_states.pt are) tensor by
tensor, with torch's public API.

Reading: `torch.load(path, mmap=True, weights_only=True)`. Every tensor is a view of one private,
read-only memory map of the file: nothing is read until a tensor's bytes are touched, and the pages
touched are file pages (page cache), not anonymous memory. weights_only refuses anything but
tensors and plain containers.

Writing: torch.save needs every tensor of a file at once, and a shard holds hundreds of them. The
file's structure is therefore saved first, with `torch.serialization.skip_data()`: torch.save
writes the pickle and every record's zip header and leaves the space of each tensor's bytes empty
(placeholders: `torch.empty` tensors of the planned shapes and dtypes, never touched, so they take
address space but no memory). Each tensor's bytes are then written at their offset as they arrive
(`os.pwrite`, or `os.copy_file_range` for bytes that are an unchanged copy of the source, see
filecopy.py). The offsets come from loading the skeleton with mmap=True: a tensor's address minus
the map's start is its offset in the file; the start is found with the stdlib zipfile module.
Files written here load with plain torch.load. Like torch.save with
torch.utils.serialization.config.save.compute_crc32 off, the zip CRC-32 fields are not those of the
bytes (`unzip -t` reports errors; torch.load does not check them): computing them would cost a full
extra pass over every byte, and truncation is caught by the zip directory and record sizes.

A torch.save blob inside a bigger file (a torch.distributed.checkpoint chunk in a .distcp file) is
located the same way (`blob_layout`): its structure by torch.load(map_location="meta"), which
reads no tensor bytes, its storage record by zipfile.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch

from checkpoints import filecopy
from checkpoints.errors import CheckpointError
from checkpoints.memory import contiguous


def _leaves(obj: Any, path: Tuple = ()) -> Iterator[Tuple[Tuple, Any]]:
    """(path, tensor) of every tensor in nested dicts/lists/tuples, in order."""
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _leaves(value, path + (key,))
    elif isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            yield from _leaves(value, path + (index,))


def _record_data_offsets(handle) -> List[Tuple[int, int]]:
    """(offset, size) of every `data/<key>` record of the torch.save zip `handle` (a seekable binary
    file, offsets relative to its start), by offset. Records torch wrote compressed (it never does)
    raise ValueError: their bytes are not the tensor's."""
    records = []
    with zipfile.ZipFile(handle) as archive:
        for info in archive.infolist():
            parts = info.filename.split("/")
            if len(parts) < 2 or parts[-2] != "data" or not info.file_size:
                continue
            if info.compress_type != zipfile.ZIP_STORED:
                raise ValueError(f"{info.filename} is compressed")
            handle.seek(info.header_offset)
            header = handle.read(30)  # a zip local file header: name and extra-field lengths at 26..30
            if len(header) < 30 or header[:4] != b"PK\x03\x04":
                raise ValueError(f"bad local header for {info.filename}")
            name_length, extra_length = struct.unpack("<HH", header[26:30])
            records.append((info.header_offset + 30 + name_length + extra_length, info.file_size))
    return sorted(records)


class _Window(io.RawIOBase):
    """Bytes [offset, offset + length) of an open binary file, as a read-only seekable file of its
    own: what a torch.distributed.checkpoint chunk is inside a .distcp file."""

    def __init__(self, handle, offset: int, length: int) -> None:
        super().__init__()
        self._handle, self._offset, self._length, self._position = handle, offset, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._length}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer) -> int:
        count = max(0, min(len(buffer), self._length - self._position))
        if not count:
            return 0
        data = os.pread(self._handle.fileno(), count, self._offset + self._position)
        buffer[:len(data)] = data
        self._position += len(data)
        return len(data)


def blob_layout(handle, offset: int, length: int) -> Optional[Tuple[torch.Tensor, int]]:
    """Where the tensor of a torch.save blob stored at [offset, offset + length) of the open file
    `handle` lies, without reading its bytes: (a meta tensor with its shape, dtype, strides and
    storage offset; the file offset of its storage's first byte). None when the blob is not one
    tensor over one uncompressed storage record (then it must be read with torch.load).

    torch.load(map_location="meta") reads only the pickle; the stdlib zipfile module finds the
    storage record (a torch.save file is a zip archive: data.pkl, data/<key> records)."""
    window = io.BufferedReader(_Window(handle, offset, length))
    meta = torch.load(window, map_location="meta", weights_only=True)
    if not isinstance(meta, torch.Tensor):
        return None
    try:
        records = _record_data_offsets(window)
    except ValueError:
        return None
    nbytes = meta.untyped_storage().nbytes()
    if len(records) != (1 if nbytes else 0) or (records and records[0][1] != nbytes):
        return None
    return meta, offset + (records[0][0] if records else 0)


def _map_start(path: Path, obj: Any) -> Optional[int]:
    """The address at which torch.load(mmap=True) mapped `path`, from the tensors of `obj` (what it
    returned): their storages in address order are the data records in file order. None when they
    do not line up (then no file offsets are known and bytes are written from memory)."""
    storages = {}
    for _, tensor in _leaves(obj):
        storage = tensor.untyped_storage()
        if storage.nbytes():
            storages[storage.data_ptr()] = storage.nbytes()
    try:
        with open(path, "rb") as handle:
            records = _record_data_offsets(handle)
    except (OSError, ValueError, zipfile.BadZipFile):
        return None
    pointers = sorted(storages.items())
    if len(pointers) != len(records) or not records:
        return None
    start = pointers[0][0] - records[0][0]
    if any(pointer - start != offset or size != nbytes
           for (pointer, size), (offset, nbytes) in zip(pointers, records)):
        return None
    return start


class StreamingTorchReader:
    """The object of a torch.save file, its tensors memory-mapped; read() checks and returns one."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.obj = torch.load(self.path, map_location="cpu", mmap=True, weights_only=True)
        except pickle.UnpicklingError as error:
            first = str(error).splitlines()[0] if str(error) else ""
            raise CheckpointError(f"unsupported object in the pickle ({first})", self.path,
                                  hint="only plain dicts of tensors are read; re-save the file with "
                                       "torch.save(state_dict)") from None
        except Exception as error:  # the zip reader: truncated or not a torch.save file
            first = str(error).splitlines()[0] if str(error) else ""
            raise CheckpointError(f"not a readable torch.save file ({error.__class__.__name__}: {first})", self.path,
                                  hint="the file is truncated or corrupt: copy it again") from None
        self._start = _map_start(self.path, self.obj)

    def read(self, tensor: torch.Tensor, key: str) -> torch.Tensor:
        """`tensor` (one of self.obj's), checked to lie inside the file."""
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"not a tensor but {type(tensor).__name__}", self.path, key,
                                  hint="SAT shards hold a dict of tensors")
        return tensor

    def file_offset(self, tensor: torch.Tensor) -> Optional[int]:
        """Where in the file the first byte of `tensor` (a view of one of self.obj's) lies, or None."""
        if self._start is None:
            return None
        return tensor.data_ptr() - self._start

    def close(self) -> None:
        self.obj = None  # the map goes away with the last tensor that views it


class StreamingTorchWriter:
    """Write `{'module': {name: tensor}}`-like objects whose tensors arrive one at a time.

    placeholder() for every tensor, plan(obj_with_placeholders) writes the structure; write(name,
    tensor) must then be called for every placeholder, in any order; close() finishes the file."""

    def __init__(self, target: Path):
        self.path = Path(target)
        self._planned: Dict[str, torch.Tensor] = {}
        self._shapes: Dict[str, Tuple[Tuple[int, ...], torch.dtype]] = {}
        self._offsets: Dict[str, int] = {}
        self._written: set = set()
        self._fd: Optional[int] = None

    def placeholder(self, name: str, shape: Tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        tensor = torch.empty(tuple(shape), dtype=dtype)  # never written to: no memory behind it
        self._planned[name] = tensor
        return tensor

    def plan(self, obj: Any) -> None:
        with torch.serialization.skip_data():
            torch.save(obj, self.path)
        names = {id(tensor): name for name, tensor in self._planned.items()}
        skeleton = torch.load(self.path, map_location="cpu", mmap=True, weights_only=True)
        start = _map_start(self.path, skeleton)
        planned = dict(_leaves(obj))
        for path, tensor in _leaves(skeleton):
            name = names.get(id(planned.get(path)))
            if name is not None and start is not None:
                self._offsets[name] = tensor.data_ptr() - start
        del skeleton
        if start is None or len(self._offsets) != len(self._planned):
            raise CheckpointError("cannot locate the tensor records of the file just written", self.path,
                                  hint="every planned tensor must be a placeholder() of this writer")
        self._shapes = {name: (tuple(t.shape), t.dtype) for name, t in self._planned.items()}
        self._planned.clear()  # the placeholders' address space goes
        self._fd = os.open(self.path, os.O_WRONLY)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        shape, dtype = self._shapes[name]
        if tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise CheckpointError(f"planned {shape} {dtype}, got {tuple(tensor.shape)} {tensor.dtype}", self.path, name)
        tensor = contiguous(tensor, "contig")  # a copy only for views that are not (e.g. a column split)
        offset = self._offsets[name]
        ranges = filecopy.source_ranges(tensor)
        if ranges is not None:  # unchanged bytes of the source: copied file to file in the kernel
            filecopy.copy_to(ranges, self._fd, offset)
        elif tensor.numel():
            filecopy.write_memory(self._fd, offset, tensor.reshape(-1).view(torch.uint8).numpy())
        self._written.add(name)

    def close(self) -> None:
        missing = set(self._shapes) - self._written
        if missing:
            raise CheckpointError(f"{len(missing)} planned tensors were never written", self.path,
                                  sorted(missing)[0])
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
