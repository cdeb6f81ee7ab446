"""Stream torch.save-format files (what SAT's mp_rank_XX_model_states.pt are) tensor by tensor.

torch.save needs the whole state dict in memory and torch.load (even with mmap) keeps every page it
touched mapped. A .pt file is a zip archive: `data.pkl` (the pickled object, tensors referring to
storages by key) and one record `data/<key>` per storage. Both directions here use torch's own zip
reader/writer (torch._C.PyTorchFileReader/Writer): the writer pickles the dict with storage
*references* first (shapes and dtypes are known in advance), then writes each tensor's bytes as
it is produced; the reader unpickles with an allow-list (tensors, OrderedDict, plain containers),
then reads one record at a time at its offset. Files written here load with plain torch.load.

The writer skips the zip CRC32 of each record (torch.serialization's crc32 option, off): it costs a
full extra pass over every byte, torch.load does not need it, and truncation is caught by the zip
directory and record sizes. `unzip -t` would report CRC errors on these files.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Dict, Iterable, Tuple, Union

import torch

from checkpoints import filecopy
from checkpoints.errors import CheckpointError
from checkpoints.memory import contiguous, empty

_STORAGE_NAME = torch.storage._dtype_to_storage_type_map()
_STORAGE_DTYPE = {name: dtype for dtype, name in _STORAGE_NAME.items()}


def _contiguous_stride(shape: Tuple[int, ...]) -> Tuple[int, ...]:
    stride, acc = [], 1
    for size in reversed(shape):
        stride.append(acc)
        acc *= size
    return tuple(reversed(stride))


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: torch.dtype
    numel: int


@dataclass(frozen=True)
class TensorRef:
    """A tensor inside a .pt file: where its bytes are and how to view them."""

    storage: _StorageRef
    offset: int
    shape: Tuple[int, ...]
    stride: Tuple[int, ...]

    @property
    def dtype(self) -> torch.dtype:
        return self.storage.dtype

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2,
                (self.storage, self.offset, self.shape, self.stride, False, collections.OrderedDict()))


class _RefPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _StorageRef):
            return ("storage", getattr(torch, _STORAGE_NAME[obj.dtype]), obj.key, "cpu", obj.numel)
        return None


class StreamingTorchWriter:
    """Write `{'module': {name: tensor}}`-like objects whose tensors arrive one at a time.

    plan(obj_with_placeholders) fixes the structure; write(name, tensor) must then be called for every
    placeholder, in any order; close() finishes the archive."""

    def __init__(self, target: Union[Path, IO[bytes]]):
        self.path = target if isinstance(target, Path) else getattr(target, "name", "<stream>")
        self._own = None
        if filecopy.is_active():  # through _CopyingFile, so unchanged source bytes can be copied in the kernel
            if isinstance(target, Path):
                target = self._own = open(target, "wb")
            target = self._copying = _CopyingFile(target)
        else:
            self._copying = None
        self._writer = torch._C.PyTorchFileWriter(str(target) if isinstance(target, Path) else target, False,
                                                  torch.serialization._get_storage_alignment())
        self._refs: Dict[str, TensorRef] = {}
        self._written: set = set()

    def placeholder(self, name: str, shape: Tuple[int, ...], dtype: torch.dtype) -> TensorRef:
        numel = 1
        for size in shape:
            numel *= size
        storage = _StorageRef(str(len(self._refs)), dtype, numel)
        ref = TensorRef(storage, 0, tuple(shape), _contiguous_stride(tuple(shape)))
        self._refs[name] = ref
        return ref

    def plan(self, obj: Any) -> None:
        buffer = io.BytesIO()
        _RefPickler(buffer, protocol=2).dump(obj)
        data = buffer.getvalue()
        self._writer.write_record("data.pkl", data, len(data))
        self._writer.write_record(".format_version", "1", 1)
        alignment = str(torch.serialization._get_storage_alignment())
        self._writer.write_record(".storage_alignment", alignment, len(alignment))
        self._writer.write_record("byteorder", sys.byteorder, len(sys.byteorder))

    def write(self, name: str, tensor: torch.Tensor) -> None:
        ref = self._refs[name]
        if tuple(tensor.shape) != ref.shape or tensor.dtype != ref.dtype:
            raise CheckpointError(f"planned {ref.shape} {ref.dtype}, got {tuple(tensor.shape)} {tensor.dtype}",
                                  self.path, name)
        tensor = contiguous(tensor, "contig")  # a copy only for views that are not (e.g. a column split)
        start = tensor.storage_offset() * tensor.element_size()
        storage = tensor.untyped_storage()[start: start + tensor.numel() * tensor.element_size()]  # shares memory
        ranges = filecopy.source_ranges(tensor) if self._copying is not None else None
        if ranges is not None:
            self._copying.expect(tensor.data_ptr(), storage.nbytes(), ranges)
        try:
            self._writer.write_record(f"data/{ref.storage.key}", storage, storage.nbytes())
        finally:
            if self._copying is not None:
                self._copying.expect(None, 0, None)
        self._written.add(name)

    def close(self) -> None:
        missing = set(self._refs) - self._written
        if missing:
            raise CheckpointError(f"{len(missing)} planned tensors were never written", self.path,
                                  sorted(missing)[0])
        self._writer.write_end_of_file()
        if self._own is not None:
            self._own.close()


class _CopyingFile:
    """The file object torch's zip writer writes to: passes writes on to `handle`, except the one
    carrying the expected tensor's bytes, which it copies from the source file in the kernel."""

    def __init__(self, handle) -> None:
        self.handle = handle
        self._expected = None

    def expect(self, pointer, nbytes: int, ranges) -> None:
        self._expected = (pointer, nbytes, ranges) if pointer is not None else None

    def write(self, data) -> int:
        view = memoryview(data)
        if self._expected is not None and view.nbytes == self._expected[1]:
            pointer, nbytes, ranges = self._expected
            if view.nbytes and filecopy._address(view) == pointer:
                self._expected = None
                self.handle.flush()
                position = self.handle.tell()
                filecopy.copy_to(ranges, self.handle.fileno(), position)
                self.handle.seek(position + nbytes)
                return nbytes
        if view.nbytes >= filecopy.MIN_BYTES:  # a tensor's bytes: through a pipe (filecopy.write_memory)
            self.handle.flush()
            position = self.handle.tell()
            filecopy.write_memory(self.handle.fileno(), position, view)
            self.handle.seek(position + view.nbytes)
            return view.nbytes
        return self.handle.write(view)

    def flush(self) -> None:
        self.handle.flush()


_ALLOWED = {("collections", "OrderedDict"): collections.OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2"): None, ("builtins", "set"): set}


class _RefUnpickler(pickle.Unpickler):
    """Unpickles torch.save's object with tensors as TensorRef; refuses any other global."""

    def __init__(self, data: bytes, path: Path):
        super().__init__(io.BytesIO(data))
        self.path = path

    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return lambda storage, offset, shape, stride, *rest: TensorRef(storage, offset, tuple(shape), tuple(stride))
        if module == "torch" and name in _STORAGE_DTYPE:
            return name
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise CheckpointError(f"unsupported object {module}.{name} in the pickle", self.path,
                              hint="only plain dicts of tensors are read; re-save the file with torch.save(state_dict)")

    def persistent_load(self, saved_id):
        kind, storage_type, key, _location, numel = saved_id
        if kind != "storage":
            raise CheckpointError(f"unknown persistent id {kind!r}", self.path)
        dtype = _STORAGE_DTYPE.get(storage_type) if isinstance(storage_type, str) else None
        if dtype is None:
            raise CheckpointError(f"unsupported storage type {storage_type!r}", self.path)
        return _StorageRef(key, dtype, numel)


class StreamingTorchReader:
    """The object of a torch.save file with TensorRefs for tensors; read(ref) loads one tensor."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self._reader = torch._C.PyTorchFileReader(str(self.path))
            records = self._reader.get_all_records()
            prefix = next((r[: -len("data.pkl")] for r in records if r.endswith("data.pkl")), None)
            if prefix is None:
                raise RuntimeError("no data.pkl record")
            self._prefix = prefix
            self.obj = _RefUnpickler(self._reader.get_record(prefix + "data.pkl"), self.path).load()
        except CheckpointError:
            raise
        except Exception as error:  # a zip reader error: truncated or not a torch.save file
            raise CheckpointError(f"not a readable torch.save file ({error.__class__.__name__}: "
                                  f"{str(error).splitlines()[0] if str(error) else ''})", self.path,
                                  hint="the file is truncated or corrupt: copy it again") from None
        self._file = open(self.path, "rb")

    def read(self, ref: TensorRef, key: str, slot: str = "read") -> torch.Tensor:
        record = f"{self._prefix}data/{ref.storage.key}"
        try:
            offset = self._reader.get_record_offset(record)
        except Exception:
            raise CheckpointError(f"storage record {record} is missing", self.path, key,
                                  hint="the file is truncated or corrupt") from None
        nbytes = ref.storage.numel * ref.dtype.itemsize
        mapped = filecopy.map_bytes(str(self.path), offset, nbytes) if offset % ref.dtype.itemsize == 0 else None
        if mapped is not None:
            storage = mapped.view(ref.dtype)
        else:
            storage = empty((ref.storage.numel,), ref.dtype, slot)
            view = storage.view(torch.uint8).numpy()
            self._file.seek(offset)
            if self._file.readinto(memoryview(view)) != view.nbytes:
                raise CheckpointError("tensor data ends early", self.path, key, hint="the file is truncated")
        if ref.offset + _span(ref.shape, ref.stride) > ref.storage.numel:
            raise CheckpointError("tensor view exceeds its storage", self.path, key, hint="the file is corrupt")
        self._last = (storage.data_ptr(), offset)
        return storage.as_strided(ref.shape, ref.stride, ref.offset)

    def file_offset(self, tensor: torch.Tensor) -> int:
        """Where in the file the first byte of `tensor` (a view of the last read()) lies."""
        base, offset = self._last
        return offset + tensor.data_ptr() - base

    def close(self) -> None:
        self._file.close()


def _span(shape: Iterable[int], stride: Iterable[int]) -> int:
    shape, stride = list(shape), list(stride)
    if any(size == 0 for size in shape):
        return 0
    return 1 + sum((size - 1) * step for size, step in zip(shape, stride))


def save_tensor(tensor: torch.Tensor, handle: IO[bytes]) -> None:
    """torch.save(tensor, handle) without the CRC pass (what a dist checkpoint chunk holds)."""
    writer = StreamingTorchWriter(handle)
    writer.plan(writer.placeholder("tensor", tuple(tensor.shape), tensor.dtype))
    writer.write("tensor", tensor)
    writer.close()


class _ViewFile(io.RawIOBase):
    """A read-only, seekable file over a buffer, without copying it (for zipfile)."""

    def __init__(self, raw) -> None:
        super().__init__()
        self._view = memoryview(raw).cast("B")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        data = self._view[self._pos: self._pos + len(buffer)]
        memoryview(buffer).cast("B")[: len(data)] = data
        self._pos += len(data)
        return len(data)


def _record_start(raw: bytes, info: zipfile.ZipInfo) -> int:
    """Where a stored record's bytes begin (after its local header; read directly, so no CRC check)."""
    name_length, extra_length = struct.unpack("<HH", raw[info.header_offset + 26: info.header_offset + 30])
    return info.header_offset + 30 + name_length + extra_length


def load_tensor_blob(raw: bytes, path: object, key: str) -> torch.Tensor:
    """The tensor of a torch.save blob held in memory, viewed in place (no copy, no CRC check)."""
    try:
        archive = zipfile.ZipFile(_ViewFile(raw))  # io.BytesIO would copy the whole blob
        names = {info.filename.split("/", 1)[-1]: info for info in archive.infolist()}
        pickle_start = _record_start(raw, names["data.pkl"])
        ref = _RefUnpickler(bytes(raw[pickle_start: pickle_start + names["data.pkl"].file_size]), path).load()
        if not isinstance(ref, TensorRef):
            raise ValueError("not a tensor")
        info = names[f"data/{ref.storage.key}"]
        start = _record_start(raw, info)
        nbytes = ref.storage.numel * ref.dtype.itemsize
        if info.file_size != nbytes or start + nbytes > len(raw):
            raise ValueError("storage size mismatch")
    except CheckpointError:
        raise
    except Exception as error:
        raise CheckpointError(f"unreadable tensor blob ({error.__class__.__name__}: {error})", path, key,
                              hint="the file is corrupt") from None
    storage = torch.frombuffer(raw, dtype=torch.uint8, offset=start, count=nbytes).view(ref.dtype) if nbytes else \
        torch.empty(0, dtype=ref.dtype)
    if ref.offset + _span(ref.shape, ref.stride) > ref.storage.numel:
        raise CheckpointError("tensor view exceeds its storage", path, key, hint="the file is corrupt")
    return storage.as_strided(ref.shape, ref.stride, ref.offset)
