"""Streaming readers for the raw corpora that `glm-prep tokenize` turns into indexed datasets.

A tokenize job reads hundreds of GB (the Pile: ~30 `.jsonl.zst` shards; WuDao: thousands of JSON
array files; the MIP mix: `.jsonl` of inputs/targets pairs). At that scale some input is always
bad: a shard cut short by an interrupted download, a line of mojibake, a record without its text.
None of that may crash a multi-hour job or silently lose the good data around it, so every reader
here yields `Document`s interleaved with `Skip`s: each bad record is skipped and reported with its
file, line (JSON lines) or record index (WuDao) and size, and the caller counts and prints them.
A file that cannot be read to its end (a truncated or corrupt compressed stream, a WuDao file that
is not one array, an I/O error, no content at all) ends with one `Damage`, which says where the
readable data stopped and how much came after it: losing the rest of a file is not one bad record,
and the caller decides whether to accept it.
Only a file that cannot be opened at all raises (`UnreadableInput`): that is a setup mistake (a
wrong path), not bad data, and the caller should say so rather than report an empty corpus.

Nothing here loads a whole file: lines and WuDao array elements are decoded one at a time.
"""

from __future__ import annotations

import codecs
import gzip
import io
import json
import os
import re
import zlib
from typing import Dict, Iterator, NamedTuple, Optional, Sequence, Tuple, Union

import zstandard

FORMATS = ("pile", "wudao", "mip", "jsonl")

_CHUNK = 1 << 20
"""Bytes read at a time (WuDao text chunks; buffer size of the decompressed line streams)."""
_ZSTD_INPUT_CHUNK = 1 << 17
"""Compressed bytes fed to zstd at a time: small, since one call returns all their output."""
_MAX_RECORD_CHARS = 1 << 28
"""A WuDao record still incomplete after this many characters is treated as malformed (a missing
quote or bracket would otherwise pull the rest of a multi-GB file into memory)."""

_NOT_AN_ARRAY = "not a JSON array (WuDao files hold one array of records)"
_WS = re.compile(r"[ \t\n\r]*")
_WS_AND_COMMAS = re.compile(r"[ \t\n\r,]*")
_SURROGATE = re.compile("[\ud800-\udfff]")


class Document(NamedTuple):
    """One text to tokenize, with where it came from (for error reports and dataset statistics).

    A NamedTuple rather than a frozen dataclass: one is built per input record, and the frozen
    dataclass constructor alone cost 7% of glm-prep's main thread."""

    text: str
    """pile/jsonl: the json_key field; wudao: title + "\\n" + content (content alone without a
    title); mip: the inputs."""
    source: str
    """The input file path as given."""
    location: int
    """JSON-lines formats: 1-based line number; wudao: 0-based record index in the array."""
    target: Optional[str] = None
    """mip only: the targets string."""
    subset: Optional[str] = None
    """pile only: meta.pile_set_name when present."""


class Skip(NamedTuple):
    """A record that was not read, and why; reading goes on with the next one."""

    source: str
    location: int
    """Same convention as Document.location."""
    reason: str
    size: int = 0
    """Bytes of the record in the (decompressed) file: what was lost, for the caller's error rate."""


class Damage(NamedTuple):
    """The rest of the file could not be read; always the last item of its file.

    Byte counts are of the decompressed content (the file itself when it is not compressed)."""

    source: str
    location: int
    """The line/record being read when the damage was hit (Document.location's convention)."""
    reason: str
    offset: int
    """Where the readable data ends: every record before this byte was read (or skipped alone)."""
    unread: int
    """Bytes after the damage never decoded: exact for an uncompressed file, estimated from the
    compression ratio so far for a compressed one, 0 when reading reached the end of the file."""
    cut_short: bool
    """The file ends early (truncated stream or array, no content at all): more data is missing
    than the bytes on disk can tell."""


class UnreadableInput(Exception):
    """The file cannot be opened at all (missing, permission denied, a directory).

    str() names the file. Raised eagerly by `read_documents` (so a CLI can reject a wrong path
    before starting work), and also if the file disappears before iteration starts; an I/O error
    while reading is a `Damage` instead (the data before it was read).
    """


def guess_format(path: str) -> str:
    """Format from the file name alone (never the content: guessing must not open GB-sized files).

    *.json -> "wudao"; *.jsonl / *.jsonl.zst / *.jsonl.gz whose base name contains "mip"
    (any case) -> "mip"; other *.jsonl, *.jsonl.zst, *.jsonl.gz, *.zst, *.gz -> "pile".
    Anything else raises ValueError naming the file and the --format choices.
    """
    name = os.path.basename(os.fspath(path)).lower()
    if name.endswith(".json"):
        return "wudao"
    if name.endswith((".jsonl", ".jsonl.zst", ".jsonl.gz")):
        return "mip" if "mip" in name else "pile"
    if name.endswith((".zst", ".gz")):
        return "pile"
    raise ValueError(
        f"cannot guess the format of {os.fspath(path)!r} from its name; "
        f"pass --format with one of: {', '.join(FORMATS)}"
    )


def read_documents(
    path: str,
    fmt: str,
    *,
    json_key: str = "text",
    mip_keys: Sequence[str] = ("inputs", "targets"),
    include_subsets: Optional[Sequence[str]] = None,
    exclude_subsets: Optional[Sequence[str]] = None,
    counters: Optional[Dict[str, int]] = None,
) -> Iterator[Union[Document, Skip]]:
    """Documents of one file, in file order, with a `Skip` for every record that was not read.

    fmt is one of FORMATS. pile/jsonl take the text from `json_key`; pile also reads
    meta.pile_set_name into Document.subset and, with include_subsets / exclude_subsets, drops
    records by subset. A dropped record is a choice, not bad data, so it is not a Skip; when
    `counters` is given, counters["filtered"] counts them, and counters["bytes"] the
    (decompressed) bytes read so far, updated as reading goes. The subset filter runs before the
    text checks: a dropped record is not reported even if its text is missing. The subset
    arguments are ignored for the other formats (they have no subsets), so one job can mix Pile
    and WuDao files with a single --exclude-subsets.
    mip reads both `mip_keys` (inputs, targets); both must be non-empty strings.

    The arguments are checked and the file opened once eagerly: a bad fmt raises ValueError and a
    missing/unreadable path raises UnreadableInput here, not at the first next(). The file itself
    is opened (again) when iteration starts and closed when the iterator ends or is closed.
    A file that cannot be read to its end yields a `Damage` last.
    """
    path = os.fspath(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choices: {', '.join(FORMATS)}")
    if fmt == "mip" and len(mip_keys) != 2:
        raise ValueError(f"mip_keys must name the inputs and targets fields, got {list(mip_keys)}")
    _Input(path).close()
    counters = {} if counters is None else counters
    counters.setdefault("filtered", 0)
    counters["bytes"] = 0
    if fmt == "wudao":
        return _wudao_documents(path, counters)
    include = frozenset(include_subsets) if include_subsets is not None else None
    exclude = frozenset(exclude_subsets or ())
    return _line_documents(path, fmt, json_key, tuple(mip_keys), include, exclude, counters)


def is_compressed(path: str) -> bool:
    """Read through zstd or gzip (by extension, as the readers do)."""
    return path.lower().endswith((".zst", ".gz"))


# --- opening and damage ------------------------------------------------------------------------


class _ZstdTruncated(Exception):
    """The compressed input ended inside a zstd frame."""


class _ZstdRaw(io.RawIOBase):
    """Decompressed bytes of a (multi-frame) .zst file, raising _ZstdTruncated on a cut-off frame.

    zstandard's stream_reader simply reports EOF when the input ends mid-frame (zstandard 0.25), so
    a truncated shard would look complete and its half-written last line would read as bad JSON.
    decompressobj() tells us whether a frame finished (`eof`), so frames are decoded one by one.
    """

    def __init__(self, source: io.BufferedIOBase):
        self._source = source
        self._dctx = zstandard.ZstdDecompressor()
        self._frame = None  # decompressobj of the frame in progress, None between frames
        self._input = b""  # compressed bytes read but not yet fed (the next frame's start)
        self._output = memoryview(b"")
        self.consumed = 0
        """Compressed bytes decoded without error (where a damage report says decoding stopped)."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._output:
            if not self._input:
                self._input = self._source.read(_ZSTD_INPUT_CHUNK)
                if not self._input:
                    if self._frame is not None:
                        raise _ZstdTruncated()
                    return 0
            if self._frame is None:
                self._frame = self._dctx.decompressobj()
            data, self._input = self._input, b""
            self._output = memoryview(self._frame.decompress(data))
            self.consumed += len(data)
            if self._frame.eof:
                self._input, self._frame = self._frame.unused_data, None
                self.consumed -= len(self._input)
        n = min(len(buffer), len(self._output))
        buffer[:n] = self._output[:n]
        self._output = self._output[n:]
        return n

    def close(self) -> None:
        if not self.closed:
            self._source.close()
        super().close()


_STREAM_DAMAGE = (_ZstdTruncated, zstandard.ZstdError, EOFError, gzip.BadGzipFile, zlib.error, OSError)
"""What reading an open file can raise (BadGzipFile is an OSError too: _damage_reason tells them apart)."""
_CUT_SHORT = (_ZstdTruncated, EOFError)
_EMPTY = "the file is empty (no records at all: an interrupted download or copy?)"


def _damage_reason(exc: BaseException) -> str:
    if isinstance(exc, _ZstdTruncated):
        return "truncated zstd stream"
    if isinstance(exc, zstandard.ZstdError):
        return f"corrupt zstd stream: {exc}"
    if isinstance(exc, EOFError):
        return "truncated gzip stream"
    if isinstance(exc, (gzip.BadGzipFile, zlib.error)):
        return f"corrupt gzip stream: {exc}"
    return f"read error: {exc.strerror or exc}"


class _Input:
    """An input file open for reading: `stream` is its decompressed content (by extension), and
    `raw` the file on disk, whose position tells how much of it a damage left unread."""

    def __init__(self, path: str):
        try:
            self.raw = open(path, "rb")
            self.size = os.fstat(self.raw.fileno()).st_size
        except OSError as exc:
            raise UnreadableInput(f"{path}: cannot open: {exc.strerror or exc}") from exc
        self.compressed = is_compressed(path)
        self._zstd = _ZstdRaw(self.raw) if path.lower().endswith(".zst") else None
        if self._zstd is not None:
            self.stream = io.BufferedReader(self._zstd, _CHUNK)
        elif self.compressed:
            self.stream = gzip.GzipFile(fileobj=self.raw, mode="rb")
        else:
            self.stream = self.raw

    def damage(self, path: str, location: int, reason: str, offset: int, read: int,
               cut_short: bool = False) -> Damage:
        """The Damage for a stop at content byte `offset`, after `read` content bytes were read."""
        return Damage(path, location, reason, offset, self._unread(read), cut_short)

    def _unread(self, read: int) -> int:
        if not self.compressed:
            return max(0, self.size - read)
        try:  # gzip: the file position, ahead of the damage by at most a read-ahead block
            stored = self._zstd.consumed if self._zstd is not None else self.raw.tell()
        except (OSError, ValueError):
            stored = 0
        if not (stored and read):  # nothing decoded: the whole file is lost, at 1:1 as far as is known
            return self.size
        return round(max(0, self.size - stored) * read / stored)

    def close(self) -> None:
        self.stream.close()
        self.raw.close()

    def __enter__(self) -> "_Input":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- JSON lines: pile, jsonl, mip --------------------------------------------------------------


def _text_field(record: dict, key: str, empty: str = "empty text") -> Tuple[Optional[str], str]:
    """(value, "") for a usable text field, else (None, reason)."""
    if key not in record:
        return None, f"missing key '{key}'"
    value = record[key]
    if not isinstance(value, str):
        return None, f"'{key}' is not a string"
    if not value.strip():
        return None, empty
    if not value.isascii() and _SURROGATE.search(value):
        # A "\ud800" JSON escape decodes to a lone surrogate, which no tokenizer can encode.
        return None, f"'{key}' holds a lone surrogate (\\uD8xx-style escape), not valid Unicode"
    return value, ""


class _LastLine(tuple):
    """(number, raw) of a last line without a newline: if it is not valid JSON, the file was cut
    inside a record (a truncated download), which is damage rather than one bad line."""


def _numbered_lines(inp: _Input, path: str, counters: Dict[str, int]) -> Iterator[Union[Tuple[int, bytes], Damage]]:
    """(1-based line number, raw bytes without the newline) pairs; damage ends the file with a
    Damage, as does a file without a single line (empty). Reads blocks with read1 (one underlying
    read each) and splits them: per-line readline calls cost a quarter of glm-prep's time, and
    read1 loses no more than readline on damage."""
    number, tail, read, content = 0, b"", 0, False
    while True:
        try:
            block = inp.stream.read1(_CHUNK)
        except _STREAM_DAMAGE as exc:
            yield inp.damage(path, number + 1, _damage_reason(exc), read - len(tail), read,
                             cut_short=isinstance(exc, _CUT_SHORT))
            return
        if not block:
            if tail.strip():
                yield _LastLine((number + 1, tail))
            elif not content:
                yield inp.damage(path, 0, _EMPTY, 0, read, cut_short=True)
            return
        read += len(block)
        counters["bytes"] = read
        content = content or bool(block.strip())
        lines = (tail + block).split(b"\n") if tail else block.split(b"\n")
        tail = lines.pop()
        for line in lines:
            number += 1
            yield number, line


def _cut(inp: _Input, path: str, last: _LastLine, counters: Dict[str, int]) -> Damage:
    number, raw = last
    return inp.damage(path, number, "the file ends inside a record (its last line has no newline and is "
                      "not valid JSON)", counters["bytes"] - len(raw), counters["bytes"], cut_short=True)


def _line_documents(path, fmt, json_key, mip_keys, include, exclude, counters):
    with _Input(path) as inp:
        for item in _numbered_lines(inp, path, counters):
            if isinstance(item, Damage):
                yield item
                return
            number, raw = item
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield _cut(inp, path, item, counters) if isinstance(item, _LastLine) else \
                    Skip(path, number, "invalid UTF-8", len(raw) + 1)
                continue
            if number == 1 and line.startswith("\ufeff"):
                line = line[1:]  # a UTF-8 byte order mark, which json.loads refuses
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                yield _cut(inp, path, item, counters) if isinstance(item, _LastLine) else \
                    Skip(path, number, f"invalid JSON: {exc.msg}", len(raw) + 1)
                continue
            except (ValueError, RecursionError) as exc:  # e.g. a 5000-digit number, deep nesting
                yield Skip(path, number, f"invalid JSON: {exc}", len(raw) + 1)
                continue
            if not isinstance(record, dict):
                yield Skip(path, number, "not a JSON object", len(raw) + 1)
                continue

            if fmt == "mip":
                inputs, reason = _text_field(record, mip_keys[0], f"empty text in '{mip_keys[0]}'")
                if inputs is not None:
                    target, reason = _text_field(record, mip_keys[1], f"empty text in '{mip_keys[1]}'")
                if reason:
                    yield Skip(path, number, reason, len(raw) + 1)
                else:
                    yield Document(inputs, path, number, target=target)
                continue

            subset = None
            if fmt == "pile":
                meta = record.get("meta")
                subset = meta.get("pile_set_name") if isinstance(meta, dict) else None
                subset = subset if isinstance(subset, str) else None
                if (include is not None and subset not in include) or subset in exclude:
                    counters["filtered"] += 1
                    continue
            text, reason = _text_field(record, json_key)
            if reason:
                yield Skip(path, number, reason, len(raw) + 1)
            else:
                yield Document(text, path, number, subset=subset)


# --- WuDao: one JSON array per file ------------------------------------------------------------


class _TextChunks:
    """Strictly UTF-8-decoded text of a binary stream, one chunk at a time.

    `problem` is set (and the stream ends) at the first invalid byte or stream damage; text up to
    that point is still returned, so the records before it are not lost. `text_end` is the byte
    offset where the text returned so far ends, `read` (and counters["bytes"]) the bytes read.
    """

    def __init__(self, stream: io.BufferedIOBase, counters: Dict[str, int]):
        self._stream = stream
        self._counters = counters
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self.read = 0
        self.text_end = 0
        self.ended = False
        self.problem: Optional[str] = None
        self.cut_short = False

    def more(self) -> str:
        """The next non-empty piece of text, or "" at the end (check `problem`)."""
        while not self.ended:
            try:
                data = self._stream.read(_CHUNK)
            except _STREAM_DAMAGE as exc:
                self.ended, self.problem, self.cut_short = True, _damage_reason(exc), isinstance(exc, _CUT_SHORT)
                return ""
            if not data:
                # Bytes of an unfinished character at EOF: the file was cut, and the parser
                # reports that as a truncated array rather than as invalid UTF-8.
                self.ended = True
                return ""
            start = self.text_end  # the decoder's pending bytes, if any, start here
            self.read += len(data)
            self._counters["bytes"] = self.read
            try:
                text = self._decoder.decode(data)
            except UnicodeDecodeError as exc:
                self.ended = True
                self.text_end = start + exc.start
                self.problem = f"invalid UTF-8 at byte offset {self.text_end}"
                return exc.object[: exc.start].decode("utf-8")
            self.text_end = self.read - len(self._decoder.getstate()[0])
            if text:
                return text
        return ""


def _wudao_documents(path: str, counters: Dict[str, int]) -> Iterator[Union[Document, Skip, Damage]]:
    """Stream the records of a WuDao file: `[{"title": ..., "content": ...}, ...]`.

    The file is one array, often pretty-printed over many lines and hundreds of MB, so it is read
    in 1 MiB chunks and each element is decoded with JSONDecoder.raw_decode from a buffer that
    keeps only the unparsed tail. Whitespace and commas between elements are skipped.

    Damage that ends the file (always after yielding every complete record before it):
    - no content at all, or a top level that is not an array (e.g. records wrapped in an object);
    - invalid UTF-8: decoding is strict, since replacing bad bytes would silently corrupt text,
      and a JSON array cannot be resynchronised past an unknown byte span: "invalid UTF-8 at byte
      offset N" at the record being read, and the rest of the file is not read;
    - malformed JSON inside the array: where the record ends is unknown, so the same applies;
    - EOF before "]": "truncated JSON array after record N" (N = last complete record);
    - data after the closing "]" (a second array, say), which is not read.
    A record that is not an object, lacks "content" or has empty content is skipped alone.
    """
    decoder = json.JSONDecoder()
    with _Input(path) as inp:
        chunks = _TextChunks(inp.stream, counters)
        buf, pos, index = "", 0, 0

        def more() -> bool:
            nonlocal buf, pos
            piece = chunks.more()
            if piece:
                buf, pos = buf[pos:] + piece, 0
            return bool(piece)

        def damage(reason: str, cut_short: bool = False) -> Damage:
            """Damage at buf[pos], the start of what was not parsed."""
            offset = chunks.text_end - len(buf[pos:].encode("utf-8"))
            return inp.damage(path, index, reason, offset, chunks.read, cut_short)

        def end(reason: str, cut_short: bool = False) -> Damage:
            """The text ended early: stream damage or invalid UTF-8 says why if there was one."""
            return damage(chunks.problem, chunks.cut_short) if chunks.problem else damage(reason, cut_short)

        def skip_to_content(pattern: re.Pattern) -> bool:
            nonlocal pos
            while True:
                pos = pattern.match(buf, pos).end()
                if pos < len(buf):
                    return True
                if not more():
                    return False

        if not skip_to_content(_WS):
            yield end(_EMPTY, cut_short=True)
            return
        if buf[pos] == "\ufeff":  # byte order mark
            pos += 1
            if not skip_to_content(_WS):
                yield end(_EMPTY, cut_short=True)
                return
        if buf[pos] != "[":
            yield damage(f"{_NOT_AN_ARRAY}; it starts with {buf[pos]!r}")
            return
        pos += 1

        while True:
            if not skip_to_content(_WS_AND_COMMAS):
                after = f"after record {index - 1}" if index else "before the first record"
                yield end(f"truncated JSON array {after}", cut_short=True)
                return
            if buf[pos] == "]":
                pos += 1
                if skip_to_content(_WS):
                    yield damage("unexpected data after the closing ']' (not read)")
                elif chunks.problem:
                    yield end("")
                return
            try:
                value, stop = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError as exc:
                # An error at the end of the buffer (or an open string) may be a record cut by the
                # chunk boundary: read more and retry. Elsewhere, more data cannot fix it.
                if exc.pos >= len(buf) - 10 or exc.msg.startswith("Unterminated string"):
                    if len(buf) - pos > _MAX_RECORD_CHARS:
                        yield end(f"record {index} is still incomplete after {len(buf) - pos} "
                                  "characters (a missing quote or bracket?); cannot resynchronise, "
                                  "rest of file skipped")
                        return
                    if more():
                        continue
                    after = f"after record {index - 1}" if index else "before the first record"
                    yield end(f"truncated JSON array {after}", cut_short=True)
                    return
                yield end(f"malformed JSON in record {index}: {exc.msg}; "
                          "cannot resynchronise, rest of file skipped")
                return
            except (ValueError, RecursionError) as exc:
                yield end(f"malformed JSON in record {index}: {exc}; "
                          "cannot resynchronise, rest of file skipped")
                return
            if stop == len(buf) and not isinstance(value, (dict, list, str)) and more():
                continue  # a number or literal may continue in the next chunk
            item = _wudao_record(path, index, value)
            if isinstance(item, Skip):
                item = item._replace(size=len(buf[pos:stop].encode("utf-8")))
            pos = stop
            yield item
            index += 1


def _wudao_record(path: str, index: int, value) -> Union[Document, Skip]:
    if not isinstance(value, dict):
        return Skip(path, index, "not a JSON object")
    content, reason = _text_field(value, "content")
    if reason:
        return Skip(path, index, reason)
    title = value.get("title")
    if isinstance(title, str) and title.strip():
        if not title.isascii() and _SURROGATE.search(title):
            return Skip(path, index, "'title' holds a lone surrogate (\\uD8xx-style escape)")
        content = title + "\n" + content
    return Document(content, path, index)
