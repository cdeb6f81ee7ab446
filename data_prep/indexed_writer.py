"""Write and merge megatron-core indexed datasets (.bin/.idx) with bounded memory, atomically.

The format is megatron-core's (read by `megatron.core.datasets.indexed_dataset.IndexedDataset`):
.bin holds every token back to back; .idx holds a header ("MMIDIDX\\0\\0", version 1, dtype code),
the sequence and document counts, then int32 sequence lengths, int64 byte pointers and int64
document boundaries (sequence indices, starting with 0). A document is one or more sequences
(an instruction example is two: its text and its target).

Why not megatron-core's IndexedDatasetBuilder: it keeps every length in Python lists (gigabytes for
the Pile) and merges by reading whole indices into lists. Here lengths and boundaries stream to
temporary files and the index is written in chunks; outputs are published by renaming .bin first and
.idx last, so a killed job never leaves an .idx that loads as if complete.
"""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path
from typing import List, Sequence

import numpy as np

INDEX_HEADER = b"MMIDIDX\x00\x00"
DTYPE_CODES = {np.dtype(np.uint8): 1, np.dtype(np.int8): 2, np.dtype(np.int16): 3, np.dtype(np.int32): 4,
               np.dtype(np.int64): 5, np.dtype(np.float64): 6, np.dtype(np.float32): 7, np.dtype(np.uint16): 8}
CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}
CHUNK = 1 << 22  # index entries per streamed chunk


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (vocabularies below 65,500, as Megatron-LM), else int32."""
    return np.dtype(np.uint16) if vocab_size < 65500 else np.dtype(np.int32)


def _publish(tmp_bin: Path, tmp_idx: Path, prefix: Path) -> None:
    os.replace(tmp_bin, f"{prefix}.bin")
    os.replace(tmp_idx, f"{prefix}.idx")


def _write_index(idx_file: Path, dtype: np.dtype, lengths_file: Path, boundaries_file: Path) -> None:
    """Stream the .idx from raw int32 lengths and int64 document boundaries on disk."""
    lengths = np.memmap(lengths_file, dtype=np.int32, mode="r") if lengths_file.stat().st_size else np.zeros(0, np.int32)
    boundaries = (np.memmap(boundaries_file, dtype=np.int64, mode="r")
                  if boundaries_file.stat().st_size else np.zeros(0, np.int64))
    with open(idx_file, "wb") as out:
        out.write(INDEX_HEADER)
        out.write(struct.pack("<Q", 1))
        out.write(struct.pack("<B", DTYPE_CODES[dtype]))
        out.write(struct.pack("<Q", len(lengths)))
        out.write(struct.pack("<Q", len(boundaries) + 1))
        for start in range(0, len(lengths), CHUNK):
            out.write(np.ascontiguousarray(lengths[start:start + CHUNK]).tobytes())
        offset = 0
        for start in range(0, len(lengths), CHUNK):
            chunk = lengths[start:start + CHUNK].astype(np.int64) * dtype.itemsize
            pointers = np.cumsum(chunk) - chunk + offset
            offset += int(chunk.sum())
            out.write(pointers.tobytes())
        out.write(np.zeros(1, np.int64).tobytes())
        for start in range(0, len(boundaries), CHUNK):
            out.write(np.ascontiguousarray(boundaries[start:start + CHUNK]).tobytes())
    del lengths, boundaries


class IndexedDatasetWriter:
    """Append documents; `finish()` publishes prefix.bin/.idx, `abort()` leaves nothing behind."""

    def __init__(self, prefix: str, dtype: np.dtype):
        self.prefix = Path(prefix)
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        self.dtype = np.dtype(dtype)
        stem = f"{self.prefix}.tmp{os.getpid()}"
        self._bin_path = Path(f"{stem}.bin")
        self._idx_path = Path(f"{stem}.idx")
        self._lengths_path = Path(f"{stem}.lengths")
        self._boundaries_path = Path(f"{stem}.documents")
        self._bin = open(self._bin_path, "wb")
        self._lengths = open(self._lengths_path, "wb")
        self._boundaries = open(self._boundaries_path, "wb")
        self.sequences = 0
        self.documents = 0
        self.tokens = 0

    def add_documents(self, tokens: np.ndarray, sequence_lengths: np.ndarray, sequences_per_document: np.ndarray) -> None:
        """Vectorised append: `tokens` back to back, split into sequences, grouped into documents."""
        tokens = np.ascontiguousarray(tokens, dtype=self.dtype)
        sequence_lengths = np.asarray(sequence_lengths, dtype=np.int64)
        if int(sequence_lengths.sum()) != len(tokens) or int(np.sum(sequences_per_document)) != len(sequence_lengths):
            raise ValueError("tokens, sequence lengths and sequences per document do not add up")
        self._bin.write(tokens.tobytes())
        self._lengths.write(sequence_lengths.astype(np.int32).tobytes())
        ends = self.sequences + np.cumsum(np.asarray(sequences_per_document, dtype=np.int64))
        self._boundaries.write(ends.tobytes())
        self.sequences += len(sequence_lengths)
        self.documents += len(sequences_per_document)
        self.tokens += len(tokens)

    def _close_files(self) -> None:
        for handle in (self._bin, self._lengths, self._boundaries):
            if not handle.closed:
                handle.close()

    def finish(self) -> None:
        self._close_files()
        _write_index(self._idx_path, self.dtype, self._lengths_path, self._boundaries_path)
        _publish(self._bin_path, self._idx_path, self.prefix)
        self._cleanup()

    def abort(self) -> None:
        self._close_files()
        for path in (self._bin_path, self._idx_path):
            path.unlink(missing_ok=True)
        self._cleanup()

    def _cleanup(self) -> None:
        self._lengths_path.unlink(missing_ok=True)
        self._boundaries_path.unlink(missing_ok=True)


def read_index_header(prefix: str):
    """(dtype, sequence count, document count) of prefix.idx; ValueError naming it if it is not one."""
    with open(f"{prefix}.idx", "rb") as handle:
        header = handle.read(9 + 8 + 1 + 8 + 8)
    if header[:9] != INDEX_HEADER or len(header) < 34:
        raise ValueError(f"{prefix}.idx is not a megatron-core index (bad or truncated header)")
    (version,) = struct.unpack("<Q", header[9:17])
    if version != 1:
        raise ValueError(f"{prefix}.idx has index version {version}; only version 1 is supported")
    if header[17] not in CODE_DTYPES:
        raise ValueError(f"{prefix}.idx has an unknown token dtype code {header[17]}")
    dtype = CODE_DTYPES[header[17]]
    sequences, documents = struct.unpack("<QQ", header[18:34])
    return dtype, sequences, documents


def merge_datasets(prefixes: Sequence[str], output_prefix: str) -> dict:
    """Concatenate indexed datasets of one dtype into one, streaming both .bin and .idx."""
    if not prefixes:
        raise ValueError("nothing to merge")
    headers = [read_index_header(prefix) for prefix in prefixes]
    dtypes = {str(dtype) for dtype, _, _ in headers}
    if len(dtypes) != 1:
        raise ValueError(f"cannot merge token dtypes {sorted(dtypes)}: tokenise every shard with one tokenizer")
    dtype = np.dtype(headers[0][0])
    out = Path(output_prefix)
    out.parent.mkdir(parents=True, exist_ok=True)
    stem = f"{out}.tmp{os.getpid()}"
    tmp_bin, tmp_idx = Path(f"{stem}.bin"), Path(f"{stem}.idx")
    lengths_path, boundaries_path = Path(f"{stem}.lengths"), Path(f"{stem}.documents")
    sequences = 0
    try:
        with open(tmp_bin, "wb") as bin_out, open(lengths_path, "wb") as lengths_out, \
                open(boundaries_path, "wb") as boundaries_out:
            for prefix, (_, count, documents) in zip(prefixes, headers):
                with open(f"{prefix}.bin", "rb") as bin_in:
                    shutil.copyfileobj(bin_in, bin_out, 1 << 24)
                index = np.memmap(f"{prefix}.idx", mode="r", dtype=np.uint8)
                body = 34
                lengths = index[body: body + 4 * count].view(np.int32)
                bounds_start = body + 4 * count + 8 * count
                bounds = index[bounds_start: bounds_start + 8 * documents].view(np.int64)
                for start in range(0, count, CHUNK):
                    lengths_out.write(np.ascontiguousarray(lengths[start:start + CHUNK]).tobytes())
                for start in range(1, documents, CHUNK):  # skip the leading 0 of each input
                    boundaries_out.write((bounds[start:start + CHUNK] + sequences).tobytes())
                sequences += count
                del index, lengths, bounds
        _write_index(tmp_idx, dtype, lengths_path, boundaries_path)
        _publish(tmp_bin, tmp_idx, out)
    finally:
        for path in (tmp_bin, tmp_idx, lengths_path, boundaries_path):
            path.unlink(missing_ok=True)
    _, total_sequences, total_documents = read_index_header(str(out))
    return {"output": str(out), "inputs": list(prefixes), "sequences": total_sequences,
            "documents": total_documents - 1}


def list_shard_prefixes(pattern_prefixes: List[str]) -> List[str]:
    """Expand prefixes given as globs ("out/pile_shard*") to the prefixes that have an .idx."""
    import glob

    found: List[str] = []
    for pattern in pattern_prefixes:
        matches = sorted(path[: -len(".idx")] for path in glob.glob(f"{pattern}.idx") + glob.glob(pattern)
                         if path.endswith(".idx"))
        found.extend(matches or [pattern])
    return list(dict.fromkeys(found))
