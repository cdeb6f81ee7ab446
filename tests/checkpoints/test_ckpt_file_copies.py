"""What keeps a conversion near the speed of a plain copy (bench/ckpt_convert_throughput.py): bytes
that a conversion only moves are copied file to file in the kernel, never through memory, in every
format; dist chunks are read from memory maps of the .distcp files, and DCP's own reader (for
chunks a stream extension transformed) reads the same tensors."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import torch

from checkpoints import filecopy
from checkpoints.formats.dist import DistReader
from checkpoints.shapes import GLMShape
from checkpoints.torchzip import blob_layout
from ckpt_helpers import ckpt, write_random_safetensors

# every tensor but the norms and biases is above filecopy.MIN_BYTES
GLM = GLMShape(num_layers=2, hidden_size=256, num_attention_heads=4, ffn_hidden_size=512, padded_vocab_size=1024)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return write_random_safetensors(tmp_path_factory.mktemp("copies") / "st", GLM, step=4)


def _convert_counting(monkeypatch, src: Path, dst: Path, *args: str):
    """Convert; returns (bytes copied in the kernel, bytes written from memory)."""
    counts = {"kernel": 0, "memory": 0}
    copy_to, write_memory = filecopy.copy_to, filecopy.write_memory

    def counting_copy(ranges, fd, offset):
        counts["kernel"] += sum(length for _, _, length in ranges)
        return copy_to(ranges, fd, offset)

    def counting_write(fd, offset, data):
        counts["memory"] += memoryview(data).nbytes
        return write_memory(fd, offset, data)

    monkeypatch.setattr(filecopy, "copy_to", counting_copy)
    monkeypatch.setattr(filecopy, "write_memory", counting_write)
    code, _, err = ckpt(None, "convert", src, dst, "--quiet", "--num-attention-heads", "4", *args)
    assert code == 0, err
    monkeypatch.undo()
    return counts["kernel"], counts["memory"]


def _large_bytes(glm: GLMShape, moved) -> int:
    """Bytes of the tensors (>= MIN_BYTES) whose TP pieces `moved(spec)` says are unchanged ranges."""
    total = 0
    for _, spec, _ in glm.entries():
        nbytes = torch.Size(spec.shape(glm)).numel() * 4
        if nbytes >= 2 * filecopy.MIN_BYTES and moved(spec):
            total += nbytes
    return total


def _row_pieces(spec) -> bool:
    """TP2 pieces that are row ranges of the whole (column-parallel, QKV, vocab) or the whole."""
    return spec.mapping.dim is None or (spec.mapping.dim == 0 and spec.mapping.stride == 1)


def test_unchanged_bytes_are_copied_in_the_kernel_in_every_format(monkeypatch, tmp_path, source):
    # safetensors -> SAT TP2: whole tensors and row pieces move unchanged; column pieces and GLU
    # halves ([X1_r; X2_r]) are gathered in memory
    kernel, memory = _convert_counting(monkeypatch, source, tmp_path / "sat", "--to", "sat", "--tp", "2")
    assert kernel >= _large_bytes(GLM, _row_pieces) and memory > 0
    # SAT TP2 -> dist TP2 x PP2: DCP's writer copies every chunk that is a piece of a source shard
    # (here every TP2 piece, GLU halves included: each half is its own chunk)
    kernel, memory = _convert_counting(monkeypatch, tmp_path / "sat", tmp_path / "dist",
                                       "--to", "dist", "--tp", "2", "--pp", "2")
    assert kernel >= _large_bytes(GLM, lambda spec: spec.mapping.dim != 1)
    # dist TP2 x PP2 -> safetensors: the chunks are read from maps of the .distcp files, so row
    # pieces and whole chunks move unchanged
    kernel, memory = _convert_counting(monkeypatch, tmp_path / "dist", tmp_path / "back", "--to", "safetensors")
    assert kernel >= _large_bytes(GLM, lambda spec: spec.mapping.dim != 1)
    original = (source / "model.safetensors").read_bytes()
    assert (tmp_path / "back" / "model.safetensors").read_bytes() == original


def test_dcp_reader_reads_what_the_memory_maps_read(monkeypatch, tmp_path, source):
    code, _, err = ckpt(None, "convert", source, tmp_path / "dist", "--quiet", "--to", "dist", "--tp", "2")
    assert code == 0, err
    mapped = DistReader(tmp_path / "dist")
    through_dcp = DistReader(tmp_path / "dist")
    monkeypatch.setattr(through_dcp, "_mapped_chunk", lambda fqn, chunk: None)
    for key, spec, _ in GLM.entries():
        assert torch.equal(mapped.read(key, spec), through_dcp.read(key, spec)), key
    mapped.close()
    through_dcp.close()


def test_blob_layout_finds_a_view_saved_inside_a_larger_file(tmp_path):
    """A chunk may be saved as a view (offset, strides) of a larger storage; torch.save writes the
    whole storage, and the chunk is located at its storage offset."""
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    view = base[2:5, 1:7]  # storage offset 21, strides (10, 1)
    blob = io.BytesIO()
    torch.save(view, blob)
    path = tmp_path / "file.bin"
    prefix = b"x" * 1000
    path.write_bytes(prefix + blob.getvalue() + b"y" * 100)
    with open(path, "rb") as handle:
        meta, data_offset = blob_layout(handle, len(prefix), len(blob.getvalue()))
    assert meta.device.type == "meta" and tuple(meta.shape) == (3, 6) and meta.stride() == (10, 1)
    storage = torch.UntypedStorage.from_file(str(path), False, os.path.getsize(path))
    nbytes = meta.untyped_storage().nbytes()
    tensor = torch.empty(0).set_(storage[data_offset: data_offset + nbytes], meta.storage_offset(), meta.shape,
                                 meta.stride())
    assert torch.equal(tensor, view)
