"""Write tensor bytes that are unchanged copies of source-file bytes with an in-kernel copy.

A plain copy of a checkpoint (cp, shutil.copyfile) never brings the bytes into the process: the
kernel copies page-cache pages (copy_file_range / sendfile). Writing the same bytes from a user
buffer with write() was measured 1.5-8x slower here (the kernel must fault in every destination
page and copy from user memory). Most of a conversion moves bytes unchanged: a whole tensor, a TP
piece of dim 0 (a contiguous row range), a chunk. While a conversion runs (`active()`), readers
attach to the tensor they return the file ranges its bytes were read from (`attach`); writers ask
`source_ranges(piece)` for a contiguous piece of that tensor with the same dtype and, when every
byte of it is covered, copy those ranges file to file (`copy_to`) instead of writing the buffer.
Any piece that was cast, quantised, or gathered from a column split is written from memory as
before. The bytes written are identical either way (they are the bytes the reader read).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import mmap
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
        self.splicer = None  # a _Splicer once used, False where vmsplice failed

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
        if _state.splicer:
            _state.splicer.close()
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


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Splicer:
    """Writes a buffer to a file through a pipe: vmsplice(2) the user pages in, splice(2) them out.

    On this project's machines write(2) from a user buffer ran at ~0.4 GB/s while the kernel copied
    page-cache pages at ~3.5 GB/s (copy_file_range, the plain copy); moving the user pages into a
    pipe and splicing them to the file takes the kernel's fast path (measured 9x faster than
    write(2) for 256 MiB). The buffer must not change until write() returns (it is synchronous)."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self._vmsplice = libc.vmsplice
        self._vmsplice.argtypes = [ctypes.c_int, ctypes.POINTER(_IoVec), ctypes.c_ulong, ctypes.c_uint]
        self._vmsplice.restype = ctypes.c_ssize_t
        self._read, self._write = os.pipe()
        try:
            fcntl.fcntl(self._write, 1031, 1 << 20)  # F_SETPIPE_SZ: 1 MiB per round trip
        except OSError:
            pass
        self._size = fcntl.fcntl(self._write, 1032)  # F_GETPIPE_SZ

    def write(self, fd: int, offset: int, address: int, nbytes: int) -> None:
        done = 0
        while done < nbytes:
            vec = _IoVec(address + done, min(self._size, nbytes - done))
            moved = self._vmsplice(self._write, ctypes.byref(vec), 1, 0)
            if moved <= 0:
                raise OSError(ctypes.get_errno(), "vmsplice failed")
            out = 0
            while out < moved:
                n = os.splice(self._read, fd, moved - out, offset_dst=offset + done + out)
                if n <= 0:
                    raise OSError("splice wrote nothing")
                out += n
            done += moved

    def close(self) -> None:
        os.close(self._read)
        os.close(self._write)


def write_memory(fd: int, offset: int, data) -> int:
    """pwrite(fd, data, offset) (data: a contiguous buffer), through a pipe while a conversion runs."""
    view = memoryview(data).cast("B")
    nbytes = view.nbytes
    if _state is not None and nbytes >= MIN_BYTES and _state.splicer is not False:
        try:
            if _state.splicer is None:
                _state.splicer = _Splicer()
            _state.splicer.write(fd, offset, _address(view), nbytes)
            return nbytes
        except (OSError, AttributeError):  # no vmsplice/splice here: plain writes (of every byte) from now on
            if _state.splicer:
                _state.splicer.close()
            _state.splicer = False
    done = 0
    while done < nbytes:
        done += os.pwrite(fd, view[done:], offset + done)
    return nbytes


def _address(view: memoryview) -> int:
    import numpy
    return int(numpy.frombuffer(view, dtype=numpy.uint8).ctypes.data) if view.nbytes else 0


def map_bytes(path: str, offset: int, nbytes: int) -> Optional[torch.Tensor]:
    """The bytes [offset, offset + nbytes) of `path` as a uint8 tensor over a private memory map of
    just that range, while a conversion runs (else None: read them). Nothing is read until touched,
    so bytes that writers copy file to file (source_ranges) never enter the process; the mapping
    goes away with the last tensor that views it."""
    if _state is None or nbytes < MIN_BYTES:
        return None
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size < offset + nbytes:
            return None  # truncated: the caller's read reports it
        mapping = mmap.mmap(handle.fileno(), offset - start + nbytes, access=mmap.ACCESS_COPY, offset=start)
    return torch.frombuffer(mapping, dtype=torch.uint8, offset=offset - start, count=nbytes)
