"""Write tensor bytes that are unchanged copies of source-file bytes with an in-kernel copy.

A plain copy of a checkpoint (cp, shutil.copyfile) never brings the bytes into the process: the
kernel copies page-cache pages (os.copy_file_range / os.sendfile). Most of a conversion moves bytes
unchanged: a whole tensor, a TP piece of dim 0 (a contiguous row range), a chunk. While a
conversion runs (`active()`), readers attach to the tensor they return the file ranges its bytes
lie in (`attach`: SAT and safetensors readers, whose tensors are views of the source's memory
map); writers ask `source_ranges(piece)` for a contiguous piece of that tensor with the same dtype
and, when every byte of it is covered, copy those ranges file to file (`copy_to`, os.copy_file_range)
instead of writing the buffer. Any other piece (cast, quantised, gathered from a column split, read
from a dist chunk) is written from memory with os.pwrite (`write_memory`). The bytes written are
identical either way. `Staging` holds a whole file's tensors as views of file maps for the writers
whose public API takes them all at once (safetensors.save_file, torch.distributed.checkpoint.save).

Only stdlib calls: an earlier version wrote buffers through a pipe (vmsplice(2) + splice(2), bound
from the C library), measured 9x faster than write(2) once on this project's virtual machine; re-measured on
2026-12-04 (256 MiB from a touched buffer into a new file, 7 alternating rounds, best of each:
`bench/RESULTS.md`), os.pwrite was as fast as copy_file_range and faster than the pipe, so the
pipe went.
"""

from __future__ import annotations

import contextlib
import os
from typing import Dict, Iterator, List, Optional, Tuple

import torch

MIN_BYTES = 1 << 16
"""Smaller pieces are written from memory (a syscall per range is not worth it)."""

# (tensor byte offset, nbytes, path, file offset)
Extent = Tuple[int, int, str, int]


class _State:
    def __init__(self) -> None:
        self.fds: Dict[str, int] = {}
        self.tensor: Optional[Tuple[int, int, torch.dtype]] = None  # data_ptr, nbytes, dtype
        self.extents: List[Extent] = []

    def fd(self, path: str) -> int:
        if path not in self.fds:
            self.fds[path] = os.open(path, os.O_RDONLY)
        return self.fds[path]


_state: Optional[_State] = None


@contextlib.contextmanager
def active() -> Iterator[None]:
    global _state
    previous, _state = _state, _State()
    try:
        yield
    finally:
        for fd in _state.fds.values():
            os.close(fd)
        _state = previous


def is_active() -> bool:
    return _state is not None


def attach(tensor: torch.Tensor, extents: List[Extent]) -> None:
    """`tensor` (contiguous) holds, at each extent's byte offset, the bytes of that file range."""
    if _state is None:
        return
    if not tensor.is_contiguous() or not extents:
        _state.tensor, _state.extents = None, []
        return
    _state.tensor = (tensor.data_ptr(), tensor.numel() * tensor.element_size(), tensor.dtype)
    _state.extents = sorted(extents)


def forget() -> None:
    if _state is not None:
        _state.tensor, _state.extents = None, []


def source_ranges(piece: torch.Tensor) -> Optional[List[Tuple[str, int, int]]]:
    """(path, file offset, nbytes) ranges holding exactly the bytes of `piece`, or None."""
    if _state is None or _state.tensor is None or not piece.is_contiguous():
        return None
    base, total, dtype = _state.tensor
    nbytes = piece.numel() * piece.element_size()
    start = piece.data_ptr() - base
    if piece.dtype != dtype or nbytes < MIN_BYTES or start < 0 or start + nbytes > total:
        return None
    ranges, position, end = [], start, start + nbytes
    for offset, length, path, file_offset in _state.extents:
        if offset + length <= position:
            continue
        if offset > position:
            return None  # a gap: some bytes do not come from a file
        take = min(end, offset + length) - position
        ranges.append((path, file_offset + position - offset, take))
        position += take
        if position == end:
            return ranges
    return None


def copy_to(ranges: List[Tuple[str, int, int]], dst_fd: int, dst_offset: int) -> int:
    """Copy `ranges` to dst_fd at dst_offset (the fd's position is not used or moved); bytes copied."""
    assert _state is not None
    written = 0
    for path, offset, length in ranges:
        src = _state.fd(path)
        done = 0
        while done < length:
            try:
                n = os.copy_file_range(src, dst_fd, length - done, offset + done, dst_offset + written + done)
            except OSError:  # e.g. another file system: copy through memory
                data = os.pread(src, length - done, offset + done)
                n = os.pwrite(dst_fd, data, dst_offset + written + done) if data else 0
            if n <= 0:
                raise OSError(f"{path}: unexpected end of file at byte {offset + done}")
            done += n
        written += length
    return written


def write_memory(fd: int, offset: int, data) -> int:
    """pwrite(fd, data, offset) of a contiguous buffer, every byte (the fd's position is not used)."""
    view = memoryview(data).cast("B")
    done = 0
    while done < view.nbytes:
        done += os.pwrite(fd, view[done:], offset + done)
    return view.nbytes


class Staging:
    """Tensors held for a writer that takes a whole file's tensors at once (safetensors.save_file,
    torch.distributed.checkpoint.save), as views of file mappings, not memory: a tensor whose bytes
    are one unchanged range of a source file (`source_ranges`) becomes a view of that file's map
    and is not copied now; any other is written to a spill file `spill` (in the kernel where its
    bytes come from source files) and becomes a view of the spill file's map. The maps are private
    and only read, so their pages are page cache (file pages), never anonymous memory. Sources must
    stay unchanged until the writer is done (a conversion's source is)."""

    ALIGN = 64

    def __init__(self, spill: str) -> None:
        self.spill = spill
        self._fd: Optional[int] = None
        self._size = 0
        self._entries: Dict[str, Tuple[str, int, torch.dtype, Tuple[int, ...]]] = {}

    def add(self, name: str, tensor: torch.Tensor) -> None:
        from checkpoints.memory import contiguous  # (memory imports nothing from here)

        tensor = contiguous(tensor, "contig")
        nbytes = tensor.numel() * tensor.element_size()
        ranges = source_ranges(tensor)
        if ranges is not None and len(ranges) == 1:
            path, offset, _ = ranges[0]
            self._entries[name] = (path, offset, tensor.dtype, tuple(tensor.shape))
            return
        if self._fd is None:
            self._fd = os.open(self.spill, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        offset = -(-self._size // self.ALIGN) * self.ALIGN
        if ranges is not None:
            copy_to(ranges, self._fd, offset)
        elif nbytes:
            write_memory(self._fd, offset, tensor.reshape(-1).view(torch.uint8).numpy())
        self._size = offset + nbytes
        self._entries[name] = (self.spill, offset, tensor.dtype, tuple(tensor.shape))

    def tensors(self) -> Dict[str, torch.Tensor]:
        """Every added tensor, by name, each a view of its own storage (a slice of a file map)."""
        maps: Dict[str, torch.UntypedStorage] = {}
        out = {}
        for name, (path, offset, dtype, shape) in self._entries.items():
            numel = 1
            for size in shape:
                numel *= size
            nbytes = numel * dtype.itemsize
            if not nbytes:
                out[name] = torch.empty(shape, dtype=dtype)
                continue
            if path not in maps:
                maps[path] = torch.UntypedStorage.from_file(path, False, os.path.getsize(path))
            storage = maps[path][offset: offset + nbytes]
            out[name] = torch.empty(0, dtype=dtype).set_(storage, 0, shape)
        return out

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            os.unlink(self.spill)
        self._entries.clear()
