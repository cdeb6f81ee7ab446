"""The one schema for a run's observability streams: the trainer writes with it, the monitor reads with it.

``RUN_DIR/metrics.jsonl`` -- one JSON object per logged step:

==================  ======  =====  ==============================================
key                 type    null?  meaning
==================  ======  =====  ==============================================
time                float   no     unix seconds (added by the writer if missing)
step                int     no     optimizer step just finished
consumed_samples    int     no     samples consumed so far (cumulative)
tokens              int     no     tokens consumed so far (cumulative)
loss                float   no     training loss (may be NaN/inf, see below)
grad_norm           float   yes    global gradient norm (null when unknown)
param_norm          float   yes    global parameter norm
loss_scale          float   yes    fp16 loss scale (null for bf16)
skipped             int     no     cumulative skipped steps
nan                 int     no     cumulative steps with a non-finite loss/grad
lr                  float   no     learning rate
batch_size          int     no     global batch size (samples)
step_time_s         float   no     wall time of the step
tokens_per_s        float   no     throughput, whole job
tflops_per_gpu      float   yes    achieved model TFLOP/s per GPU
mfu                 float   yes    model FLOPs utilisation, 0..1
mem_gb              float   yes    peak device memory, GiB
val_loss            float   yes    only on lines where validation ran
loss/<source>       float   yes    per-data-source loss, where known
eval/<task>/...     float   yes    downstream scores (train.eval_tasks), only on
                                   lines where that evaluation ran
==================  ======  =====  ==============================================

Other keys are allowed. ``RUN_DIR/events.jsonl`` -- rare, important happenings: ``time``, ``step``,
``kind`` (one of EVENT_KINDS), ``message`` (str), plus the kind's fields in EVENT_FIELDS:
start/restart: world_size, layout {tp, pp, dp, vpp}; checkpoint_saved/_loaded: path;
checkpoint_corrupt (a checkpoint differs from its manifest; not loaded): path, file;
checkpoint_fallback (`latest` unusable or corrupt: resuming from an older checkpoint); spike: loss,
grad_norm, baseline_loss, baseline_grad_norm, action; skip: first_sample, last_sample; rollback:
path, to_step; stop: reason, exit_code; error: nothing beyond message; downstream_eval (one per
evaluation of train.eval_tasks): metrics ({"eval/<task>/<metric>": number}, the numbers that step's
metrics line carries), seconds.

Non-finite floats: Python's json writes ``NaN``/``Infinity`` tokens, which are not JSON and which a
browser's JSON.parse rejects, and null would lose "the loss was NaN" (the very thing a spike
dashboard must show). So the writer stores them as the JSON strings ``"nan"``, ``"inf"``, ``"-inf"``
(lines stay strict JSON) and the readers turn those strings back into floats; a JS reader does
``Number(v)`` after mapping "nan"->NaN, "inf"->Infinity. A legitimate string value equal to one of
these markers would be read as a float: do not log such strings.

Who writes: exactly one process, the global rank that owns the last pipeline stage with TP rank 0 and
DP rank 0 (it has the loss). Each record is one ``os.write`` of the whole line on an O_APPEND file, so
a concurrent reader never sees half a line except after a crash mid-write; readers stop before an
unterminated last line and the writer terminates a torn line when it reopens the file.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from typing import Any, Iterable

import numpy as np

from megatron_glm.rundir import EVENT_KINDS, EVENTS_FILE, METRICS_FILE

REQUIRED_METRIC_KEYS = ("time", "step", "consumed_samples", "tokens", "loss", "grad_norm", "param_norm",
                        "loss_scale", "skipped", "nan", "lr", "batch_size", "step_time_s", "tokens_per_s",
                        "tflops_per_gpu", "mfu", "mem_gb")
INT_METRIC_KEYS = frozenset({"step", "consumed_samples", "tokens", "skipped", "nan", "batch_size"})
NULLABLE_METRIC_KEYS = frozenset({"grad_norm", "param_norm", "loss_scale", "val_loss", "mfu",
                                  "tflops_per_gpu", "mem_gb"})
REQUIRED_EVENT_KEYS = ("time", "step", "kind", "message")
# type tags: "int", "num" (int/float, non-finite ok), "num?" (also None), "str", "layout", "metrics" (a
# dict of name -> number or null).
_LAYOUT = {"world_size": "int", "layout": "layout"}
EVENT_FIELDS: dict[str, dict[str, str]] = {
    "start": _LAYOUT, "restart": _LAYOUT,
    "checkpoint_saved": {"path": "str"}, "checkpoint_loaded": {"path": "str"},
    "checkpoint_corrupt": {"path": "str", "file": "str"}, "checkpoint_fallback": {},
    "spike": {"loss": "num", "grad_norm": "num?", "baseline_loss": "num", "baseline_grad_norm": "num?",
              "action": "str"},
    "skip": {"first_sample": "int", "last_sample": "int"},
    "rollback": {"path": "str", "to_step": "int"},
    "stop": {"reason": "str", "exit_code": "int"},
    "error": {},
    "downstream_eval": {"metrics": "metrics", "seconds": "num"},
}
LAYOUT_KEYS = ("tp", "pp", "dp", "vpp")  # vpp may be null (no interleaving)
_TO_MARKER = {math.inf: "inf", -math.inf: "-inf"}
_FROM_MARKER = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class SchemaError(ValueError):
    """A record breaks the schema; the message names the file, line and field when known."""

    def __init__(self, field: str, problem: str, where: str = ""):
        self.field, self.problem, self.where = field, problem, where
        super().__init__(f"{where + ': ' if where else ''}field {field!r}: {problem}")


def _plain(v: Any) -> Any:
    """numpy/torch scalars -> Python numbers, so the trainer can pass tensors' .item()-able values."""
    return v.item() if hasattr(v, "item") and not isinstance(v, (int, float, str)) else v


def _metric_value(x: Any) -> bool:
    """A number, null, or a non-finite marker ("nan", "inf", "-inf") inside a nested metrics dict."""
    return x is None or (isinstance(x, (int, float)) and not isinstance(x, bool)) or (
        isinstance(x, str) and x in _FROM_MARKER)


def _check(rec: dict, key: str, tag: str, where: str) -> None:
    if key not in rec:
        raise SchemaError(key, "missing", where)
    v = rec[key]
    if v is None and tag.endswith("?"):
        return
    number = isinstance(v, (int, float)) and not isinstance(v, bool)
    ok = {"int": number and isinstance(v, int), "num": number, "num?": number, "str": isinstance(v, str),
          "layout": isinstance(v, dict) and all(isinstance(v.get(k), int) or (k == "vpp" and v.get(k, 0) is None)
                                                for k in LAYOUT_KEYS),
          "metrics": isinstance(v, dict) and all(isinstance(k, str) and _metric_value(x) for k, x in v.items())}[tag]
    if not ok:
        want = "dict with int " + "/".join(LAYOUT_KEYS) if tag == "layout" else tag.rstrip("?")
        raise SchemaError(key, f"expected {want}{' or null' if tag.endswith('?') else ''}, got {v!r}", where)


def validate_metric(record: dict, where: str = "") -> dict:
    """Check one metrics record; return a normalised copy (plain numbers, required keys first)."""
    if not isinstance(record, dict):
        raise SchemaError("<record>", f"expected a JSON object, got {type(record).__name__}", where)
    rec = {k: _plain(v) for k, v in record.items()}
    for k in REQUIRED_METRIC_KEYS:
        _check(rec, k, "int" if k in INT_METRIC_KEYS else "num?" if k in NULLABLE_METRIC_KEYS else "num", where)
    for k in rec:
        if not isinstance(k, str):
            raise SchemaError(repr(k), "keys must be strings", where)
        if k == "val_loss" or k.startswith(("loss/", "eval/")):
            _check(rec, k, "num?", where)
    return {**{k: rec[k] for k in REQUIRED_METRIC_KEYS}, **rec}


def validate_event(record: dict, where: str = "") -> dict:
    """Check one event record (kind known, kind's fields present); return a normalised copy."""
    if not isinstance(record, dict):
        raise SchemaError("<record>", f"expected a JSON object, got {type(record).__name__}", where)
    rec = {k: _plain(v) for k, v in record.items()}
    for k, tag in (("time", "num"), ("step", "int"), ("kind", "str"), ("message", "str")):
        _check(rec, k, tag, where)
    if rec["kind"] not in EVENT_FIELDS:
        raise SchemaError("kind", f"unknown event kind {rec['kind']!r}; expected one of {EVENT_KINDS}", where)
    for k, tag in EVENT_FIELDS[rec["kind"]].items():
        _check(rec, k, tag, where)
    if rec["kind"] == "skip" and rec["first_sample"] > rec["last_sample"]:
        raise SchemaError("last_sample", "must be >= first_sample", where)
    return {**{k: rec[k] for k in REQUIRED_EVENT_KEYS}, **rec}


def _encode(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if v != v else _TO_MARKER[v]
    if isinstance(v, dict):
        return {k: _encode(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_encode(x) for x in v]
    return v


def encode_line(record: dict) -> bytes:
    """One compact, strict-JSON line (non-finite floats as "nan"/"inf"/"-inf"), newline-terminated."""
    return (json.dumps(_encode(record), separators=(",", ":"), allow_nan=False) + "\n").encode()


def decode_record(record: dict) -> dict:
    """Turn top-level "nan"/"inf"/"-inf" markers back into floats (in place; returns the record)."""
    for k, v in record.items():
        if isinstance(v, str) and v in _FROM_MARKER:
            record[k] = _FROM_MARKER[v]
    return record


class JsonlWriter:
    """Appends validated records to one JSONL file: one os.write per line, fsync at most every
    ``fsync_interval_s`` seconds (0 = every record) and on close. Use as a context manager."""

    filename = ""

    def __init__(self, run_dir: str | os.PathLike, fsync_interval_s: float = 10.0):
        os.makedirs(run_dir, exist_ok=True)
        self.path = os.path.join(os.fspath(run_dir), self.filename)
        self.fsync_interval_s = fsync_interval_s
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._last_sync = time.monotonic()
        size = os.fstat(self._fd).st_size
        if size:  # a crash mid-write left a torn last line: end it so our first record stays whole
            with open(self.path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    self._write_all(b"\n")

    def _validate(self, record: dict) -> dict:
        raise NotImplementedError

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]

    def write(self, record: dict) -> dict:
        if self._fd is None:
            raise ValueError(f"{self.path} is closed")
        rec = dict(record)
        rec.setdefault("time", time.time())
        rec = self._validate(rec)
        self._write_all(encode_line(rec))  # O_APPEND, unbuffered: nothing to flush
        if time.monotonic() - self._last_sync >= self.fsync_interval_s:
            self.sync()
        return rec

    def sync(self) -> None:
        os.fsync(self._fd)
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if self._fd is not None:
            self.sync()
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class MetricsWriter(JsonlWriter):
    filename = METRICS_FILE

    def _validate(self, record):
        return validate_metric(record, self.path)


class EventsWriter(JsonlWriter):
    """Events are rare and are what a post-mortem needs: fsync every one by default."""

    filename = EVENTS_FILE

    def __init__(self, run_dir, fsync_interval_s: float = 0.0):
        super().__init__(run_dir, fsync_interval_s)

    def _validate(self, record):
        return validate_event(record, self.path)


class Chunk(tuple):
    """``(data, next_offset)`` -- unpacks as a pair -- plus ``corrupt_lines`` (skipped, unparseable or,
    with validate=True, invalid), ``errors`` (first 20 messages: file, byte offset, field) and ``reset``
    (the file shrank below start_offset, i.e. was replaced, so this chunk starts again at byte 0)."""

    def __new__(cls, data, next_offset, corrupt_lines=0, errors=(), reset=False):
        self = super().__new__(cls, (data, next_offset))
        self.corrupt_lines, self.errors, self.reset = corrupt_lines, list(errors), reset
        return self

    data = property(lambda self: self[0])
    next_offset = property(lambda self: self[1])


def _read_complete(path: str, start: int, pad: int = 0, stop: int | None = None) -> tuple[bytearray, int, int, bool]:
    """(buffer, start, end, reset): bytes from ``start`` on (up to byte ``stop`` if given), of which
    buffer[:end] are complete lines, plus ``pad`` zero bytes so vectorised readers can look a fixed
    width past any value; reset when the file shrank below ``start`` (it was replaced: start again at 0)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            reset = size < start
            start = 0 if reset else start
            size = size if stop is None else max(start, min(size, stop))
            f.seek(start)
            buf = bytearray(size - start + pad)
            n = f.readinto(memoryview(buf)[: size - start])
    except FileNotFoundError:
        return bytearray(pad), start, 0, False
    return buf, start, buf.rfind(b"\n", 0, n) + 1, reset  # a partial last line waits for the next call


def _read_records(path: str, start_offset: int, validator, validate: bool) -> Chunk:
    buf, start, end, reset = _read_complete(path, start_offset)
    del buf[end:]
    records, corrupt, errors, pos = [], 0, [], start
    name = os.path.basename(path)
    for lineno, line in enumerate(buf.split(b"\n")[:-1], 1):
        where = f"{name} line {lineno} from byte {start} (byte {pos})"
        pos += len(line) + 1
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise SchemaError("<record>", "not a JSON object", where)
            decode_record(rec)
            if validate:
                validator(rec, where)
        except ValueError as e:  # JSONDecodeError, SchemaError, bad UTF-8 are all ValueErrors
            corrupt += 1
            if len(errors) < 20:
                errors.append(str(e) if isinstance(e, SchemaError) else f"{where}: {e}")
            continue
        records.append(rec)
    return Chunk(records, start + len(buf), corrupt, errors, reset)


def read_metrics(run_dir, start_offset: int = 0, validate: bool = False) -> Chunk:
    """Records of RUN_DIR/metrics.jsonl from byte ``start_offset``; ``next_offset`` is where to resume
    (the start of an unterminated last line, which is re-read once complete). Blank lines are ignored;
    corrupt ones skipped and counted. ~9 s per million lines here: use read_metric_columns for bulk."""
    return _read_records(os.path.join(run_dir, METRICS_FILE), start_offset, validate_metric, validate)


def read_events(run_dir, start_offset: int = 0, validate: bool = False) -> Chunk:
    """Like read_metrics, for RUN_DIR/events.jsonl."""
    return _read_records(os.path.join(run_dir, EVENTS_FILE), start_offset, validate_event, validate)


_WIDTH, _BLOCK = 32, 1 << 22  # widest number JSON has: 24 chars; ~4 MB of lines per block
_MARKERS = {b"null": b"nan", b'"nan"': b"nan", b'"inf"': b"inf", b'"-inf"': b"-inf"}


def _num(v: Any, null: float = math.nan) -> float:
    if v is None:
        return null
    v = _FROM_MARKER.get(v, v) if isinstance(v, str) else v
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def _scalar(text: bytes, null: float = math.nan) -> float:
    try:
        return float(text)
    except ValueError:
        try:
            return _num(json.loads(text), null)
        except ValueError:
            return math.nan


def _values_at(win: np.ndarray, starts: np.ndarray, null: float = math.nan) -> tuple[np.ndarray, np.ndarray]:
    """Parse the scalar JSON value starting at each byte offset (up to the next ',' or '}') as float,
    vectorised over ``win``, the buffer's _WIDTH-byte sliding windows; returns (values, ok), ok False
    where no separator follows within _WIDTH bytes (too long to be a number)."""
    g = win[starts]  # one row of _WIDTH bytes per value
    sep = (g == ord(",")) | (g == ord("}"))
    first = sep.argmax(1)
    ok = sep[np.arange(len(g)), first]
    g[np.arange(_WIDTH) >= first[:, None]] = 0  # NUL padding: rows view as variable-length S strings
    s = g.view(f"S{_WIDTH}").ravel()
    try:
        return s.astype(np.float64), ok
    except ValueError:
        for marker, text in _MARKERS.items():
            s[s == marker] = repr(null).encode() if marker == b"null" else text
    try:
        return s.astype(np.float64), ok
    except ValueError:  # a non-numeric value somewhere: parse these one by one
        return np.array([_scalar(x, null) for x in s.tolist()], np.float64), ok


def read_metric_columns(run_dir, keys: Iterable[str] = ("step", "loss"), start_offset: int = 0,
                        stop_offset: int | None = None, null: float = math.nan) -> Chunk:
    """``({key: float64 array}, next_offset)`` for bulk loading and tailing big runs; missing/null
    values are NaN, ints come back as float64 (exact to 2**53), corrupt lines are dropped and counted.
    ``stop_offset`` reads only the lines that end before that byte, so a second pass over more keys
    (the dashboard loads the loss first, the other columns afterwards) yields exactly the same rows.
    ``null`` is what a JSON null becomes (default NaN): pass e.g. -1.0 for a non-negative key to
    tell "not logged" (null) from a non-finite value ("nan"), as the spike detector must.

    Fast path, numpy-vectorised per ~4 MB block (cache-sized temporaries), no per-line Python: lines as
    our writer emits them (compact, required keys first in REQUIRED_METRIC_KEYS order) are located by
    their colons and each wanted value is parsed in place, after checking that the bytes before it
    spell the key. Other keys (val_loss, loss/<source>) are found by searching for ``,"key":``, which
    in JSON can only be a member separator. Lines of any other shape go through json.loads.
    Measured here (2 cores shared with other jobs, so noisy), 1,000,000 lines of 277-323 MB:
    step+loss 0.9 s, 4 keys 1.3 s, all 17 required keys ~4 s; json.loads per line (read_metrics) ~9 s.
    """
    keys = list(keys)
    buf, start, end, reset = _read_complete(os.path.join(run_dir, METRICS_FILE), start_offset, _WIDTH,
                                            stop_offset)
    a = np.frombuffer(buf, np.uint8)
    win = np.lib.stride_tricks.sliding_window_view(a, _WIDTH)
    needles = {k: re.compile(re.escape(b"," + json.dumps(k).encode() + b":"))
               for k in keys if k not in REQUIRED_METRIC_KEYS}
    parts, corrupt, errors, lo = [], 0, [], 0
    while lo < end:
        hi = buf.rfind(b"\n", lo, min(lo + _BLOCK, end)) + 1 or buf.find(b"\n", lo, end) + 1
        cols, c = _column_block(buf, a, win, lo, hi, keys, needles, errors, start, null)
        parts.append(cols)
        corrupt, lo = corrupt + c, hi
    data = {k: np.concatenate([p[k] for p in parts]) if parts else np.empty(0) for k in keys}
    return Chunk(data, start + end, corrupt, errors, reset)


def _column_block(buf, a, win, lo, hi, keys, needles, errors, start, null) -> tuple[dict, int]:
    """Columns for the complete lines in buf[lo:hi]; all positions are absolute offsets into buf."""
    nl = np.flatnonzero(a[lo:hi] == ord("\n")) + lo
    line_start = np.concatenate(([lo], nl[:-1] + 1))
    colon = np.flatnonzero(a[lo:hi] == ord(":")) + lo
    first_colon = np.searchsorted(colon, line_start)
    nreq = len(REQUIRED_METRIC_KEYS)
    fast = (np.searchsorted(colon, nl) - first_colon >= nreq) & (a[line_start] == ord("{"))
    fast &= (nl > line_start) & (a[np.maximum(nl - 1, 0)] == ord("}"))
    cols: dict[str, np.ndarray] = {}
    for key in keys:
        vals = np.full(len(nl), np.nan)
        if key in REQUIRED_METRIC_KEYS:
            j = REQUIRED_METRIC_KEYS.index(key)
            name = np.frombuffer((b"{" if j == 0 else b",") + json.dumps(key).encode(), np.uint8)
            rows = np.flatnonzero(fast)
            pos = colon[first_colon[rows] + j]
            fast[rows[~(win[pos - len(name), :len(name)] == name).all(1)]] = False
            rows = np.flatnonzero(fast)
            vals[rows], ok = _values_at(win, colon[first_colon[rows] + j] + 1, null)
            fast[rows[~ok]] = False
        else:
            pos = np.fromiter((m.end() for m in needles[key].finditer(buf, lo, hi)), np.int64)
            if len(pos):
                v, ok = _values_at(win, pos, null)
                row = np.searchsorted(nl, pos)
                vals[row[ok]] = v[ok]
        cols[key] = vals
    keep, corrupt = fast.copy(), 0
    for r in np.flatnonzero(~fast & (nl > line_start)):  # the odd lines: parse them fully
        line = bytes(buf[line_start[r]:nl[r]])
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            corrupt += 1
            if len(errors) < 20:
                errors.append(f"{METRICS_FILE} byte {start + int(line_start[r])}: {e}")
            continue
        keep[r] = True
        for key in keys:
            cols[key][r] = _num(rec.get(key), null)
    return {k: v[keep] for k, v in cols.items()}, corrupt
