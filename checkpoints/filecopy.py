"""Write tensor bytes that are unchanged copies of source-file bytes with an in-kernel copy.

A plain copy of a checkpoint (cp, shutil.copyfile) never brings the bytes into the process: the
kernel copies page-cache pages (os.copy_file_range / os.sendfile). Most of a conversion moves bytes
unchanged: a whole tensor, a TP piece of dim 0 (a contiguous row range), a chunk. While a
conversion runs (`active()`), readers attach to the tensor they return the file ranges its bytes
lie in (`attach`: SAT, safetensors and dist readers, whose tensors are views of memory maps of the
source files, or are assembled from such views); writers ask `source_ranges(piece)` for a
contiguous piece of that tensor with the same dtype and, when every byte of it is covered, copy
those ranges file to file (`copy_to`, os.copy_file_range) instead of writing the buffer. Any other
piece (cast, quantised, gathered from a column split) is written from memory (`write_memory`,
os.pwrite in pieces of the kernel copy's size). The bytes written are identical either way.
`KernelCopyFile` does the same for a serializer that writes into a file object (torch.save
inside torch.distributed.checkpoint.save). Only stdlib calls.
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy
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


WRITE_CHUNK = 1 << 16
"""Bytes per write(2) of a buffer: the size of the kernel's own file-to-file copies (see write_memory)."""


def write_memory(fd: int, offset: int, data) -> int:
    """pwrite(fd, data, offset) of a contiguous buffer, every byte (the fd's position is not used),
    in WRITE_CHUNK pieces.

    Why pieces: the page cache allocates the pages of a write in folios as large as the write allows
    (Linux 6.x, ext4 and others), and on a virtual machine that hands free memory back to its host
    (virtio-balloon free page reporting; this project's CI machines report free blocks of 128 KiB
    and up) large free blocks are exactly the memory the host has taken back, so every page of them
    costs a host fault. Measured 2026-12-05 on the 2-core CI machine (bench/RESULTS.md, `glm-ckpt
    convert` of a 1.11 GB model, alternated): whole-buffer writes ran at 0.10-0.16 GB/s and made the
    conversions 2.9-6.2 s; 64 KiB writes, the size copy_file_range and cp move at a time, made them
    0.9-1.4 s (a plain copy: 0.55-0.65 s). On memory that is not handed back, the pieces cost
    ~0.1 s per GB of syscalls."""
    view = memoryview(data).cast("B")
    for start in range(0, view.nbytes, WRITE_CHUNK):
        piece = view[start: start + WRITE_CHUNK]
        done = 0
        while done < piece.nbytes:
            done += os.pwrite(fd, piece[done:], offset + start + done)
    return view.nbytes


class KernelCopyFile(io.RawIOBase):
    """A file opened for writing that a serializer (torch.save inside dcp.save) writes into: a write
    whose bytes `locate(address, nbytes)` places in source files (torch.save hands over a tensor
    storage's own memory, so address and size identify the tensor) is done as a copy of those file
    ranges, in the kernel (copy_to); other large writes go through write_memory, small ones to the
    file as they are. The bytes written are identical either way."""

    def __init__(self, raw, locate: Callable[[int, int], Optional[List[Tuple[str, int, int]]]]) -> None:
        super().__init__()
        self.raw, self.locate = raw, locate

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data)
        if view.nbytes < MIN_BYTES:
            return self.raw.write(view)
        self.raw.flush()
        position = self.raw.tell()
        address = numpy.frombuffer(view.cast("B"), dtype=numpy.uint8).__array_interface__["data"][0]
        ranges = self.locate(address, view.nbytes)  # None unless a conversion is active (source_ranges)
        if ranges is not None:
            copy_to(ranges, self.raw.fileno(), position)
        else:
            write_memory(self.raw.fileno(), position, view)
        self.raw.seek(position + view.nbytes)
        return view.nbytes

    def tell(self) -> int:
        return self.raw.tell()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self.raw.seek(offset, whence)

    def flush(self) -> None:
        if not self.raw.closed:
            self.raw.flush()

    def fileno(self) -> int:
        return self.raw.fileno()

    def close(self) -> None:
        if not self.closed:
            self.raw.close()
        super().close()
