"""`glm-prep tokenize`: raw corpora -> one megatron-core indexed dataset, fast and streaming.

Pipeline: the main process reads and parses documents (readers.py) into batches of a few MB;
`workers` forked processes encode batches with sentencepiece and flatten them into numpy arrays;
the main process appends the results in input order. Batches, not documents, cross the process
boundary (a few pickles per 4 MB), and at most two per worker are in flight, so memory is bounded.
Parsing and encoding never wait for one interpreter lock (a threaded version spent its time
taking turns on it: bench/RESULTS.md).

Documents: pile/wudao/jsonl text -> one sequence `tokens + [eod]` (eod optional); an instruction
example (mip) -> two sequences, text and target, so the sample builder can recover both.
Bad records are skipped and reported per file with line/record. A file that cannot be read to its
end (truncated or corrupt stream, not a WuDao array, I/O error, empty) fails the job, naming where
it broke and how much was read, unless `accept_damaged_files`; then stats.json records what each
damaged file lost. `max_error_rate` bounds the share of input *bytes* lost to bad records and
damage (a lost file is not one bad record) and turns more into a failure that publishes nothing.
Sharding (`shard=(i, n)`) takes every n-th input file starting at i (inputs sorted), so n machines
split a corpus without coordination; stats.json fingerprints the whole input list so that
`glm-prep merge` can tell a complete set of shards from one with a failed shard missing.
"""

from __future__ import annotations

import gc
import glob
import collections
import hashlib
import itertools
import logging
import multiprocessing
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Deque, Dict, List, Optional, Sequence, Tuple

import numpy as np

from data_prep.indexed_writer import IndexedDatasetWriter, token_dtype
from data_prep.metadata import publish_stats
from data_prep.readers import (Damage, Document, Skip, UnreadableInput, guess_format, is_compressed,
                               read_documents)
from megatron_glm.data.tokenizer import GLMTokenizer

log = logging.getLogger("glm-prep")

BATCH_BYTES = 2 << 20
MAX_REPORTED_SKIPS = 100
MID_FILE_CHECK_BYTES = 256 << 20
"""Inside a file the error rate is checked (every 1000 skips) only after this much input, so that
a bad first line does not stop a long file; at the end of every file it is always checked."""


class PrepError(RuntimeError):
    """A tokenisation job that must stop; the message says why and what to change."""

    exit_code = 2


class TooManyBadRecords(PrepError):
    """More input lost to bad records and damage than --max-error-rate allows; nothing was published."""

    exit_code = 3


class DamagedInput(PrepError):
    """An input file could not be read to its end and damaged files were not accepted; nothing
    was published."""

    exit_code = 3


@dataclass
class TokenizeOptions:
    inputs: Sequence[str]
    output_prefix: str
    fmt: Optional[str] = None
    json_key: str = "text"
    mip_keys: Tuple[str, str] = ("inputs", "targets")
    include_subsets: Optional[Sequence[str]] = None
    exclude_subsets: Optional[Sequence[str]] = None
    append_eod: bool = True
    workers: int = max(1, os.cpu_count() or 1)
    max_error_rate: float = 0.05
    shard: Optional[Tuple[int, int]] = None
    progress: bool = True
    accept_damaged_files: bool = False


@dataclass
class FileReport:
    documents: int = 0
    tokens: int = 0
    bytes: int = 0
    """Size on disk."""
    content_bytes: int = 0
    """Bytes read (decompressed)."""
    lost_bytes: int = 0
    """Bytes of skipped records, plus what a damage cost (from where it stopped to the end)."""
    skipped: int = 0
    filtered: int = 0
    skips: List[dict] = field(default_factory=list)
    damage: Optional[dict] = None
    """Where the file stopped being readable and what was lost (see `_record_damage`)."""

    @property
    def seen_bytes(self) -> int:
        """Bytes the error rate is taken over: read, plus what a damage left unread."""
        return self.content_bytes + (self.damage["unread_bytes"] if self.damage else 0)


def expand_inputs(patterns: Sequence[str]) -> List[str]:
    """Files named or matched by globs, sorted and de-duplicated; unmatched globs are an error."""
    files: List[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        if not matches:
            raise PrepError(f"--input {pattern!r} matches no file")
        files.extend(matches)
    return sorted(dict.fromkeys(files))


def select_shard(files: Sequence[str], shard: Optional[Tuple[int, int]]) -> List[str]:
    if shard is None:
        return list(files)
    index, count = shard
    if not 0 <= index < count:
        raise PrepError(f"--shard {index}/{count}: the index must be in [0, {count})")
    return list(files[index::count])


def check_readable(files: Sequence[str]) -> None:
    """Every input is a readable file: a wrong path fails before any work, naming it."""
    for path in files:
        if os.path.isdir(path):
            raise PrepError(f"{path}: is a directory, expected a file (use a glob such as {path}/*.jsonl.zst)")
        if not os.access(path, os.R_OK):
            raise PrepError(f"{path}: cannot read this input file (missing or no permission)")


class _Batch:
    """Parsed documents waiting for encoding."""

    def __init__(self, instruction: bool):
        self.instruction = instruction
        self.texts: List[str] = []
        self.targets: List[str] = []
        self.sources: List[str] = []
        self.bytes = 0

    def add(self, document: Document) -> None:
        self.texts.append(document.text)
        self.sources.append(document.source)
        self.bytes += len(document.text)
        if self.instruction:
            self.targets.append(document.target or "")
            self.bytes += len(document.target or "")


def _flatten(ids: List[List[int]], dtype: np.dtype, eod: Optional[int]) -> Tuple[np.ndarray, np.ndarray]:
    """Token lists -> (flat tokens, per-document lengths), eod appended to each when given."""
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(lengths.sum()))
    if eod is None:
        return flat, lengths
    lengths_with_eod = lengths + 1
    ends = np.cumsum(lengths_with_eod)
    out = np.empty(int(ends[-1]) if len(ends) else 0, dtype=dtype)
    is_eod = np.zeros(len(out), dtype=bool)
    is_eod[ends - 1] = True
    out[is_eod] = eod
    out[~is_eod] = flat
    return out, lengths_with_eod


@dataclass
class _Encoded:
    """One batch, encoded in a worker process: flat tokens plus the index arrays."""

    tokens: np.ndarray
    sequence_lengths: np.ndarray
    sequences_per_document: np.ndarray
    document_tokens: np.ndarray


_worker_tokenizer: Optional[GLMTokenizer] = None


def _start_worker(model_file: str, special_ids: Dict[str, int]) -> None:
    global _worker_tokenizer
    _worker_tokenizer = GLMTokenizer(model_file, special_ids)


def _encode(texts: List[str], targets: Optional[List[str]], eod: Optional[int], dtype: str) -> _Encoded:
    """Runs in a worker process: sentencepiece, then flattening into numpy, without the GIL of the
    process that parses the input (in one process the two halves took turns on one lock)."""
    dtype = np.dtype(dtype)
    text_ids = _worker_tokenizer.encode_batch(texts)
    if targets is not None:
        target_ids = _worker_tokenizer.encode_batch(targets)
        interleaved = [seq for pair in zip(text_ids, target_ids) for seq in pair]
        tokens, sequence_lengths = _flatten(interleaved, dtype, None)
        per_document = np.full(len(text_ids), 2, dtype=np.int64)
        document_tokens = sequence_lengths[0::2] + sequence_lengths[1::2]
    else:
        tokens, sequence_lengths = _flatten(text_ids, dtype, eod)
        per_document = np.ones(len(text_ids), dtype=np.int64)
        document_tokens = sequence_lengths
    return _Encoded(tokens, sequence_lengths, per_document, document_tokens)


class _EncodingPool:
    """Batches go to `workers` processes in order; at most 2 per worker are in flight (bounded
    memory), and results are appended to the writer in input order."""

    def __init__(self, tokenizer: GLMTokenizer, writer: IndexedDatasetWriter, options: TokenizeOptions,
                 reports: Dict[str, FileReport], progress):
        self.writer, self.reports, self.progress = writer, reports, progress
        self.eod = tokenizer.special.eod if options.append_eod else None
        self.limit = 2 * options.workers
        self.pool = multiprocessing.get_context("fork").Pool(
            options.workers, initializer=_start_worker,
            initargs=(tokenizer.model_file, tokenizer.special.as_dict()))
        self.pending: Deque = collections.deque()

    def submit(self, batch: _Batch) -> None:
        targets = batch.targets if batch.instruction else None
        eod = None if batch.instruction else self.eod
        job = self.pool.apply_async(_encode, (batch.texts, targets, eod, str(self.writer.dtype)))
        self.pending.append((job, batch.sources))
        while len(self.pending) > self.limit:
            self._write_oldest()

    def _write_oldest(self) -> None:
        job, sources = self.pending.popleft()
        encoded: _Encoded = job.get()
        self.writer.add_documents(encoded.tokens, encoded.sequence_lengths, encoded.sequences_per_document)
        for source, count in zip(sources, encoded.document_tokens.tolist()):
            self.reports[source].tokens += count
        if self.progress is not None:
            self.progress.update(len(sources))

    def drain(self) -> None:
        while self.pending:
            self._write_oldest()

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()


def _read_all(files, formats, options: TokenizeOptions, reports: Dict[str, FileReport],
              encoders: _EncodingPool, instruction_data: bool) -> None:
    """Parse every input into batches for the encoders, recording skips and damage per file."""
    batch = _Batch(instruction_data)
    for path in files:
        counters: Dict[str, int] = {}
        report = reports[path]
        for item in read_documents(path, formats[path], json_key=options.json_key, mip_keys=options.mip_keys,
                                   include_subsets=options.include_subsets,
                                   exclude_subsets=options.exclude_subsets, counters=counters):
            if not isinstance(item, Document):
                if isinstance(item, Skip):
                    _record_skip(report, item, counters, reports, options)
                else:
                    _record_damage(report, item, counters, formats[path], options)
                continue
            report.documents += 1
            batch.add(item)
            if batch.bytes >= BATCH_BYTES:
                encoders.submit(batch)
                batch = _Batch(instruction_data)
        report.filtered = counters["filtered"]
        report.content_bytes = counters["bytes"]
        _check_error_rate(reports, options.max_error_rate)
    if not any(report.documents for report in reports.values()):
        raise PrepError(f"no documents in {len(files)} input file(s) ({sum(r.filtered for r in reports.values())} "
                        "filtered by subset): nothing to publish; check --input, --format and the subset filters")
    if batch.texts:
        encoders.submit(batch)


def _record_skip(report: FileReport, skip: Skip, counters: Dict[str, int], reports: Dict[str, FileReport],
                 options: TokenizeOptions) -> None:
    report.skipped += 1
    report.lost_bytes += skip.size
    if len(report.skips) < MAX_REPORTED_SKIPS:
        report.skips.append({"location": skip.location, "reason": skip.reason, "bytes": skip.size})
    if report.skipped % 1000 == 0:
        report.content_bytes = counters["bytes"]
        _check_error_rate(reports, options.max_error_rate, min_bytes=MID_FILE_CHECK_BYTES)


def _record_damage(report: FileReport, damage: Damage, counters: Dict[str, int], fmt: str,
                   options: TokenizeOptions) -> None:
    """Record what the damage cost; without --accept-damaged-files, fail the job (DamagedInput)."""
    lost = counters["bytes"] - damage.offset + damage.unread
    report.damage = {
        "location": damage.location, "reason": damage.reason, "offset": damage.offset,
        "documents_read": report.documents, "lost_bytes": lost, "unread_bytes": damage.unread,
        "cut_short": damage.cut_short,
    }
    report.lost_bytes += lost
    message = describe_damage(damage, report.documents, counters["bytes"], fmt)
    if not options.accept_damaged_files:
        raise DamagedInput(f"{message}. Nothing was published. {DAMAGE_ADVICE} (stats.json then records what "
                           "was lost).")
    log.warning("%s; accepted (--accept-damaged-files)", message)


DAMAGE_ADVICE = "Replace the file (download or copy it again), or pass --accept-damaged-files to keep what was read"


def describe_damage(damage: Damage, documents: int, read_bytes: int, fmt: str) -> str:
    """Where a file broke, how much was read before, and what was lost: for errors and warnings."""
    if damage.offset == 0 and damage.cut_short and not documents:
        return f"{damage.source}: damaged file: {damage.reason}"  # nothing readable: no place to name
    compressed = is_compressed(damage.source)
    where = f"{'decompressed ' if compressed else ''}byte {damage.offset:,} " \
            f"({'record' if fmt == 'wudao' else 'line'} {damage.location:,})"
    lost = read_bytes - damage.offset + damage.unread
    if damage.cut_short:
        cost = f"{lost:,} bytes after it not usable, and the file ends early: how much more is missing is unknown"
    else:
        cost = f"{'about ' if compressed and damage.unread else ''}{lost:,} bytes after it not read"
    return (f"{damage.source}: damaged file: {damage.reason}, at {where}; read {documents:,} documents "
            f"({damage.offset:,} bytes) before it, {cost}")


def tokenize(options: TokenizeOptions, tokenizer: GLMTokenizer) -> dict:
    """Run the job; returns the stats also written to <output_prefix>.stats.json."""
    files = select_shard(expand_inputs(options.inputs), options.shard)
    if not files:
        raise PrepError(f"shard {options.shard} of {len(expand_inputs(options.inputs))} input files is empty")
    check_readable(files)
    formats = {path: options.fmt or guess_format(path) for path in files}
    instruction = {fmt == "mip" for fmt in formats.values()}
    if len(instruction) != 1:
        raise PrepError("instruction (mip) and text inputs go to separate outputs: run glm-prep twice")
    instruction_data = instruction.pop()
    for path, fmt in formats.items():
        log.info("%s: format %s%s", path, fmt, "" if options.fmt else " (guessed from the file name)")

    writer = IndexedDatasetWriter(options.output_prefix, token_dtype(tokenizer.vocab_size))
    reports = {path: FileReport(bytes=os.path.getsize(path)) for path in files}
    started = time.perf_counter()
    progress = _progress(options)
    encoders = _EncodingPool(tokenizer, writer, options, reports, progress)
    # Millions of short-lived token lists trigger the cyclic GC for nothing (18% of encoding time,
    # measured); nothing here builds reference cycles.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        _read_all(files, formats, options, reports, encoders, instruction_data)
        encoders.drain()
        writer.finish()
    except UnreadableInput as error:
        writer.abort()
        raise PrepError(str(error)) from error
    except BaseException:
        writer.abort()
        raise
    finally:
        encoders.close()
        if gc_was_enabled:
            gc.enable()
        if progress is not None:
            progress.close()
    stats = _stats(options, tokenizer, writer, reports, instruction_data, time.perf_counter() - started)
    if options.shard:
        stats["inputs_fingerprint"] = _inputs_fingerprint(expand_inputs(options.inputs))
    publish_stats(options.output_prefix, stats)
    return stats


def _inputs_fingerprint(files: Sequence[str]) -> str:
    """Names and sizes of every input of the job (before sharding): shards of one job share it,
    whatever machine or mount point they ran on, so `glm-prep merge` can group them."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{os.path.basename(path)}\0{os.path.getsize(path)}\n".encode())
    return digest.hexdigest()[:16]


def _progress(options: TokenizeOptions):
    if not options.progress:
        return None
    from tqdm import tqdm

    return tqdm(unit=" docs", desc=Path(options.output_prefix).name, mininterval=1.0)


def _check_error_rate(reports: Dict[str, FileReport], max_rate: float, min_bytes: int = 1) -> None:
    """Fail when the share of input bytes lost (skipped records, damaged files) exceeds max_rate
    (checked only once min_bytes were seen). Bytes, not records: a file lost after its first record
    is most of its data, not one bad line."""
    lost = sum(r.lost_bytes for r in reports.values())
    seen = sum(r.seen_bytes for r in reports.values())
    if seen >= min_bytes and lost > max_rate * seen:
        worst_path, worst = max(reports.items(), key=lambda item: item[1].lost_bytes)
        example = worst.damage or (worst.skips[0] if worst.skips else {})
        skipped = sum(r.skipped for r in reports.values())
        damaged = sum(1 for r in reports.values() if r.damage)
        raise TooManyBadRecords(
            f"{lost:,} of {seen:,} input bytes lost ({lost / seen:.1%} > --max-error-rate {max_rate:.1%}) to "
            f"{skipped} skipped record(s) and {damaged} damaged file(s); most in {worst_path} (e.g. line/record "
            f"{example.get('location')}: {example.get('reason')}). Nothing was published. "
            "Fix the input or raise --max-error-rate."
        )


def _stats(options, tokenizer, writer, reports, instruction_data, seconds) -> dict:
    return {
        "output_prefix": options.output_prefix,
        "kind": "mip" if instruction_data else "text",
        "documents": writer.documents,
        "sequences": writer.sequences,
        "tokens": writer.tokens,
        "input_bytes": sum(r.bytes for r in reports.values()),
        "skipped": sum(r.skipped for r in reports.values()),
        "filtered": sum(r.filtered for r in reports.values()),
        "lost_bytes": sum(r.lost_bytes for r in reports.values()),
        "damaged": {path: r.damage for path, r in reports.items() if r.damage},
        "seconds": round(seconds, 3),
        "tokens_per_s": round(writer.tokens / seconds, 1) if seconds > 0 else None,
        "dtype": str(writer.dtype),
        "append_eod": options.append_eod and not instruction_data,
        "shard": list(options.shard) if options.shard else None,
        "tokenizer": {"model": tokenizer.model_file, "vocab_size": tokenizer.vocab_size,
                      "special_ids": tokenizer.special.as_dict()},
        "files": {path: vars(report) for path, report in reports.items()},
    }
