"""One watched run in memory: its metric columns, events, config, spikes and bad-line counts, kept up
to date by tailing the files the trainer appends to.

Why this shape:

* Columns (numpy float64, amortised growth), not records: a 1,000,000-step run is ~8 MB per key and
  any view is a slice.
* A columnar cache of metrics.jsonl with the detector's state (``column_cache``): a run seen before
  opens from memory-mapped arrays, and only what was appended since is parsed and fed to the
  detector. Without a usable cache: a two-phase bulk load -- step/loss/grad norm first, enough for
  the loss chart and the spike detector, then every other key over exactly the same bytes
  (``stop_offset``) in the background, so the first chart does not wait for seventeen columns --
  after which the cache is written (runs of at least CACHE_MIN_ROWS rows).
* Tailing afterwards goes line by line through the schema's tolerant reader: new keys (a new
  ``loss/<source>``) just appear, bad lines are counted with their location, and a half-written
  last line waits for its newline.
* Steps are the x axis, so a restart that re-logs steps (rollback, resume from an older checkpoint)
  supersedes the rows it overwrites: the kept rows always have strictly increasing steps. The
  detector still sees every row in file order, as the trainer's guard did.
* The spike detector is :mod:`megatron_glm.metrics.spikes`, the trainer's own, fed incrementally;
  a spike's "action" comes from the trainer's spike event at that step when there is one.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from statistics import median

import numpy as np
import yaml

from megatron_glm.metrics import schema
from megatron_glm.metrics.spikes import SpikeDetector, SpikeRule
from megatron_glm.monitor import column_cache
from megatron_glm.monitor.downsample import bucket_points, envelope, insert_points
from megatron_glm.monitor.textlog import TextLogParser

PHASE1_KEYS = ("step", "loss", "grad_norm")
NOT_LOGGED = -1.0  # what a JSON null grad norm reads as in phase 1 ("not logged", unlike NaN)
_SAMPLE_BYTES = 1 << 16  # head and tail of metrics.jsonl scanned for the keys a run logs
_PHASE2_BYTES = 8 << 20  # background loading works in slices of this size
CACHE_MIN_ROWS = 10_000
"""Runs with fewer rows load fast enough without a column cache (and get none written)."""


class Activity:
    """Requests in flight and when the last one ended: background loading waits for a quiet moment
    (never longer than ``max_wait_s``), so a page being loaded is answered first."""

    def __init__(self, max_wait_s: float = 2.0) -> None:
        self._lock = threading.Lock()
        self.in_flight, self.last_end = 0, 0.0
        self.max_wait_s = max_wait_s
        self.waiting = threading.Event()
        """Set while a background loader is held back by a request (tests observe it)."""

    def begin(self) -> None:
        with self._lock:
            self.in_flight += 1

    def end(self) -> None:
        with self._lock:
            self.in_flight -= 1
            self.last_end = time.monotonic()

    def wait_quiet(self, quiet_s: float = 0.15) -> None:
        deadline = time.monotonic() + self.max_wait_s
        try:
            while time.monotonic() < deadline:
                with self._lock:
                    idle = time.monotonic() - self.last_end
                    if not self.in_flight and idle >= quiet_s:
                        return
                    if self.in_flight:
                        self.waiting.set()
                time.sleep(0.02)
        finally:
            self.waiting.clear()


class _Column:
    """A float64 array that grows by doubling and can be cut back (restarts supersede rows)."""

    def __init__(self, n: int = 0):
        self.buf, self.n = np.full(max(n, 1024), np.nan), n

    def extend(self, values: np.ndarray) -> None:
        need = self.n + len(values)
        if need > len(self.buf):
            grown = np.full(max(need, 2 * len(self.buf)), np.nan)
            grown[: self.n] = self.buf[: self.n]
            self.buf = grown
        self.buf[self.n:need] = values
        self.n = need

    def truncate(self, n: int) -> None:
        self.buf[n: self.n] = np.nan
        self.n = min(self.n, n)

    @property
    def values(self) -> np.ndarray:
        return self.buf[: self.n]


def _keep_last_per_step(steps: np.ndarray) -> np.ndarray:
    """Indices of rows not overwritten later in the same chunk (a later row with a step <= theirs)."""
    if not len(steps):
        return np.arange(0)
    later_min = np.minimum.accumulate(steps[::-1])[::-1]
    return np.flatnonzero(steps < np.append(later_min[1:], np.inf))


class RunStore:
    """A run directory (``metrics.jsonl``, ``events.jsonl``, ``config.yaml``) or a Megatron-LM text
    log file. Thread-safe: the HTTP server's threads call :meth:`refresh` and the query methods."""

    def __init__(self, path: str | os.PathLike, rule: SpikeRule = SpikeRule(), activity: Activity | None = None):
        self.path = os.path.abspath(os.fspath(path))
        if os.path.isdir(self.path):
            self.kind = "jsonl"
        elif os.path.isfile(self.path):
            self.kind = "textlog"
        else:
            raise FileNotFoundError(f"{path}: no such run directory or log file")
        if self.kind == "jsonl" and not os.path.exists(os.path.join(self.path, schema.METRICS_FILE)) \
                and not os.path.exists(os.path.join(self.path, schema.EVENTS_FILE)):
            raise FileNotFoundError(f"{path}: not a run directory (no {schema.METRICS_FILE} or "
                                    f"{schema.EVENTS_FILE}); pass the RUN_DIR given to glm-train --run-dir, "
                                    "or a Megatron-LM text log file")
        self.name = os.path.basename(self.path.rstrip(os.sep)) or self.path
        self.rule = rule
        self.activity = activity
        self._lock = threading.RLock()
        self._reset()

    def _reset(self) -> None:
        self.cols: dict[str, _Column] = {"step": _Column()}
        self.n = 0
        self.superseded = 0
        self.bad_lines, self.bad_event_lines = 0, 0
        self.errors: list[str] = []
        self.events: list[dict] = []
        self.spikes: list[dict] = []
        self.detector = SpikeDetector(self.rule)
        self.metrics_offset = self.events_offset = 0
        self.pending_keys: tuple[str, ...] = ()
        self.config: dict = {}
        self.config_error: str | None = None
        self._config_mtime = None
        self._text = TextLogParser() if self.kind == "textlog" else None
        self.text_lines = 0  # lines of a text log read so far
        self._pending_val: dict[int, float] = {}
        self.version = 0
        self.load_seconds = math.nan
        self._last_refresh = 0.0
        self._phase1_keep, self._phase1_rows, self._phase1_prefix = np.arange(0), 0, 0
        self._phase1_raw: dict[str, np.ndarray] = {}
        self._phase1_detected: tuple = ({}, [], 0, [])  # detector state, spikes, bad lines, errors after phase 1
        self.from_cache = False
        """The last load started from the column cache."""
        self._generation = getattr(self, "_generation", 0) + 1

    # ---------------------------------------------------------------- loading and tailing
    def load(self, background: bool = True) -> None:
        """Bulk-load what is on disk now; the phase-2 columns load in a thread unless background=False."""
        t0 = time.perf_counter()
        with self._lock:
            self._reset()
            self._read_config()
            if self.kind == "textlog":
                self._tail_text()
            else:
                self._load_phase1()
            self._tail_events()
            self.load_seconds = time.perf_counter() - t0
        if self.pending_keys:
            if background:
                threading.Thread(target=self._load_phase2, args=(self._generation,), daemon=True,
                                 name=f"glm-monitor-load-{self.name}").start()
            else:
                self._load_phase2(self._generation)

    def _metrics_dir_keys(self) -> list[str]:
        """Keys logged by this run: the schema's, the downstream scores its `downstream_eval` events
        name (logged on a few lines anywhere in the file), plus any seen in the first and last 64 KiB."""
        keys = dict.fromkeys(schema.REQUIRED_METRIC_KEYS)
        keys["val_loss"] = None
        if os.path.isfile(os.path.join(self.path, schema.EVENTS_FILE)):
            for event in schema.read_events(self.path).data:
                if event.get("kind") == "downstream_eval" and isinstance(event.get("metrics"), dict):
                    keys.update(dict.fromkeys(k for k in event["metrics"] if isinstance(k, str)))
        path = os.path.join(self.path, schema.METRICS_FILE)
        try:
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                blobs = [f.read(_SAMPLE_BYTES)]
                f.seek(max(0, size - _SAMPLE_BYTES))
                blobs.append(f.read(_SAMPLE_BYTES))
        except FileNotFoundError:
            return list(keys)
        head, tail = blobs[0].split(b"\n")[:-1], blobs[1].split(b"\n")[1:-1]  # complete lines only
        for line in head + tail:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                keys.update(dict.fromkeys(k for k in rec if isinstance(k, str)))
        return list(keys)

    def _load_phase1(self) -> None:
        cached = column_cache.load(self.path, self.rule)
        if cached is not None:
            self._load_cached(cached)
            return
        chunk = schema.read_metric_columns(self.path, PHASE1_KEYS, null=NOT_LOGGED)
        self._count_bad(chunk)
        self.metrics_offset = self._phase1_offset = chunk.next_offset
        self._phase1_raw = chunk.data
        valid = self._ingest_raw(chunk.data, detect=True)
        self._phase1_keep, self._phase1_rows, self._phase1_prefix = valid, len(chunk.data["step"]), self.n
        self._phase1_detected = (self.detector.state_dict(), list(self.spikes), self.bad_lines, list(self.errors))
        self.pending_keys = tuple(k for k in self._metrics_dir_keys() if k not in PHASE1_KEYS)
        for k in self.pending_keys:
            self.cols.setdefault(k, _Column(self.n))
        self.version += 1

    def _ingest_raw(self, data: dict[str, np.ndarray], detect: bool) -> np.ndarray:
        """Rows as read (phase-1 keys with NOT_LOGGED for null, other keys NaN), in file order.
        Returns the indices of the rows kept. A row without a usable step cannot be placed (a
        bad line, e.g. a JSON line of another program); a missing loss reads as NaN."""
        steps = np.where(data["step"] == NOT_LOGGED, np.nan, data["step"])
        loss = np.where(data["loss"] == NOT_LOGGED, np.nan, data["loss"])
        valid = np.flatnonzero(np.isfinite(steps))
        self.bad_lines += len(steps) - len(valid)
        rows = (lambda v: np.asarray(v)) if len(valid) == len(steps) else (lambda v: np.asarray(v)[valid])
        other = {k: rows(v) for k, v in data.items() if k not in PHASE1_KEYS}
        keep = self._ingest(rows(steps), rows(loss), rows(data["grad_norm"]), other, detect=detect)
        return valid[keep]

    def _load_cached(self, cached: column_cache.CachedColumns) -> None:
        """The cached rows as they are, then the rows appended since through the detector; the
        cache is written again in the background when the appended part has grown large."""
        self.from_cache = True
        keys = list(dict.fromkeys([*cached.columns, *self._metrics_dir_keys()]))
        head = {k: cached.columns[k] if k in cached.columns else np.full(cached.rows, np.nan) for k in keys}
        self.detector.load_state_dict(cached.detector_state)
        self.spikes = list(cached.spikes)
        self._ingest_raw(head, detect=False)
        self.bad_lines, self.errors = cached.bad_lines, list(cached.errors)  # the head's, counted when cached
        tail = schema.read_metric_columns(self.path, PHASE1_KEYS, cached.offset, null=NOT_LOGGED)
        others = [k for k in keys if k not in PHASE1_KEYS]
        rest = schema.read_metric_columns(self.path, others, cached.offset, stop_offset=tail.next_offset)
        self._count_bad(tail)
        tail_data = {**tail.data, **rest.data}
        self.metrics_offset = tail.next_offset
        self._ingest_raw(tail_data, detect=True)
        tail_rows = len(tail.data["step"])
        if tail_rows >= max(CACHE_MIN_ROWS, cached.rows // 4):
            rows = {k: np.concatenate([np.asarray(head[k]), tail_data[k]]) for k in keys}
            fresh = column_cache.CachedColumns(tail.next_offset, rows, self.detector.state_dict(), list(self.spikes),
                                               self.bad_lines, list(self.errors))
            threading.Thread(target=column_cache.save, args=(self.path, self.rule, fresh), daemon=True,
                             name=f"glm-monitor-cache-{self.name}").start()
        self.version += 1

    def _load_phase2(self, generation: int) -> None:
        """The other columns over the bytes phase 1 read, in slices of _PHASE2_BYTES; before each
        slice it steps aside while the server is answering (``activity``), so a browser's first
        views never queue behind it. Rows cut by a restart since phase 1 are left out."""
        with self._lock:
            keys, stop = self.pending_keys, self._phase1_offset
        parts, off, reset = [], 0, False
        while off < stop:
            if self.activity is not None:
                self.activity.wait_quiet()
            chunk = schema.read_metric_columns(self.path, keys, off, stop_offset=min(off + _PHASE2_BYTES, stop))
            if chunk.next_offset == off and not chunk.reset:  # one line longer than a slice
                chunk = schema.read_metric_columns(self.path, keys, off, stop_offset=stop)
            reset |= chunk.reset
            if reset or chunk.next_offset == off:
                break
            parts.append(chunk.data)
            off = chunk.next_offset
        data = {k: np.concatenate([p[k] for p in parts]) if parts else np.empty(0) for k in keys}
        with self._lock:
            if generation != self._generation:  # reloaded meanwhile: that load has its own phase 2
                return
            if reset or len(data[keys[0]]) != self._phase1_rows:
                self.errors.append(f"{self.name}: {schema.METRICS_FILE} changed while loading; reloading")
                threading.Thread(target=self.load, daemon=True).start()
                return
            idx = self._phase1_keep[: self._phase1_prefix]
            for k in keys:
                self.cols[k].buf[: len(idx)] = data[k][idx]
            self.pending_keys = ()
            self.version += 1
            state, spikes, bad_lines, errors = self._phase1_detected
            rows = {**self._phase1_raw, **data}
            self._phase1_raw = {}
        if self._phase1_rows >= CACHE_MIN_ROWS:
            column_cache.save(self.path, self.rule, column_cache.CachedColumns(stop, rows, state, spikes, bad_lines,
                                                                               errors))

    def _count_bad(self, chunk) -> None:
        self.bad_lines += chunk.corrupt_lines
        for e in chunk.errors:
            if len(self.errors) < 50:
                self.errors.append(e)

    def _ingest(self, steps, loss, grad_norm, other: dict[str, np.ndarray], detect: bool = True) -> np.ndarray:
        """Append rows (file order): detector first (unless their spikes are known: the column
        cache), then supersede and keep. Returns the kept indices."""
        ok = np.isfinite(steps)
        if not ok.all():  # a line whose step is not a number cannot be placed on the x axis
            self.bad_lines += int((~ok).sum())
            steps, loss, grad_norm = steps[ok], loss[ok], grad_norm[ok]
            other = {k: v[ok] for k, v in other.items()}
        if not len(steps):
            return np.arange(0)
        if detect:
            g = grad_norm
            if (g == NOT_LOGGED).any():
                g = [None if v == NOT_LOGGED else v for v in g.tolist()]
            for s in self.detector.update_many(steps.astype(np.int64), loss, g):
                self.spikes.append(s.as_dict())
        keep = _keep_last_per_step(steps)
        cut = int(np.searchsorted(self.cols["step"].values, steps.min(), "left"))
        self.superseded += (self.n - cut) + (len(steps) - len(keep))
        if cut < self.n:
            for c in self.cols.values():
                c.truncate(cut)
            self.n = cut
            self._phase1_prefix = min(self._phase1_prefix, cut)
        grad_norm = np.where(grad_norm == NOT_LOGGED, np.nan, grad_norm)
        values = {"step": steps, "loss": loss, "grad_norm": grad_norm, **other}
        for k in set(self.cols) | set(values):
            col = self.cols.setdefault(k, _Column(self.n))
            col.extend(values[k][keep] if k in values else np.full(len(keep), np.nan))
        self.n += len(keep)
        return keep

    def refresh(self, min_interval_s: float = 0.5) -> None:
        """Read what was appended since the last call (at most every ``min_interval_s``)."""
        with self._lock:
            now = time.monotonic()
            if now - self._last_refresh < min_interval_s:
                return
            self._last_refresh = now
            before = (self.n, self.superseded, self.bad_lines, len(self.events), self.bad_event_lines)
            self._read_config()
            if self.kind == "textlog":
                self._tail_text()
            else:
                self._tail_metrics()
            self._tail_events()
            if before != (self.n, self.superseded, self.bad_lines, len(self.events), self.bad_event_lines):
                self.version += 1

    def _tail_metrics(self) -> None:
        chunk = schema.read_metrics(self.path, self.metrics_offset)
        if chunk.reset:
            self.load()
            return
        self.metrics_offset = chunk.next_offset
        self._count_bad(chunk)
        self._ingest_records(chunk.data)

    def _ingest_records(self, records: list[dict]) -> None:
        records = [r for r in records if isinstance(r.get("step"), (int, float)) and not isinstance(r["step"], bool)]
        if not records:
            return
        keys = dict.fromkeys(k for r in records for k in r)
        cols = {k: np.array([schema._num(r.get(k)) for r in records]) for k in keys if k != "grad_norm"}
        cols["grad_norm"] = np.array([NOT_LOGGED if r.get("grad_norm") is None else schema._num(r["grad_norm"])
                                      for r in records])
        cols.setdefault("loss", np.full(len(records), np.nan))
        steps, loss, g = cols.pop("step"), cols.pop("loss"), cols.pop("grad_norm")
        self._ingest(steps, loss, g, cols)

    def _tail_text(self) -> None:
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < self.metrics_offset:  # log rotated/replaced
                    self._reset()
                f.seek(self.metrics_offset)
                data = f.read(size - self.metrics_offset)
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1
        self.metrics_offset += end
        records = []
        self.text_lines += data.count(b"\n", 0, end)
        for line in data[:end].decode("utf-8", "replace").splitlines():
            parsed = self._text.parse(line)
            if parsed is None:
                continue
            what, rec = parsed
            if what == "val":
                self._pending_val[rec["step"]] = rec["val_loss"]
            else:
                records.append(rec)
        self._ingest_records(records)
        self._apply_pending_val()

    def _apply_pending_val(self) -> None:
        steps = self.cols["step"].values
        col = self.cols.setdefault("val_loss", _Column(self.n))
        for step, v in list(self._pending_val.items()):
            i = int(np.searchsorted(steps, step))
            if i < len(steps) and steps[i] == step:
                col.buf[i] = v
                del self._pending_val[step]

    def _tail_events(self) -> None:
        if self.kind != "jsonl":
            return
        chunk = schema.read_events(self.path, self.events_offset, validate=True)
        if chunk.reset:
            self.events, self.events_offset = [], 0
        self.events_offset = chunk.next_offset
        self.bad_event_lines += chunk.corrupt_lines
        for e in chunk.errors:
            if len(self.errors) < 50:
                self.errors.append(e)
        self.events.extend(chunk.data)

    def _read_config(self) -> None:
        if self.kind != "jsonl":
            return
        path = os.path.join(self.path, "config.yaml")
        try:
            mtime = os.stat(path).st_mtime_ns
        except FileNotFoundError:
            return
        if mtime == self._config_mtime:
            return
        self._config_mtime = mtime
        try:
            with open(path, encoding="utf-8") as f:
                cfg = yaml.safe_load(f)
            if not isinstance(cfg, dict):
                raise ValueError("expected a mapping at the top level")
            self.config, self.config_error = cfg, None
        except (yaml.YAMLError, ValueError, UnicodeDecodeError) as e:
            mark = getattr(e, "problem_mark", None)
            where = f"config.yaml:{mark.line + 1}" if mark is not None else "config.yaml"
            self.config_error = f"{where}: {getattr(e, 'problem', None) or e}"

    # ---------------------------------------------------------------- queries
    def missing_metrics(self) -> str | None:
        """Why there is no metric row to show, or None if there is one: what glm-monitor says when
        pointed at the wrong file, or at a run that has not logged a step yet."""
        with self._lock:
            if self.n:
                return None
            if self.kind == "textlog":
                return (f"{self.path}: no metrics recognised in its {self.text_lines:,} line(s): expected a "
                        "Megatron-LM log with lines like 'iteration 100/ 500000 | ... | lm loss: 2.345E+00 | ...', "
                        "or pass a glm-train run directory")
            if self.bad_lines:
                first = f"; the first: {self.errors[0]}" if self.errors else ""
                return (f"{self.path}: no usable line in {schema.METRICS_FILE} ({self.bad_lines} bad line(s){first}); "
                        f"is this a glm-train run directory?")
            return (f"{self.path}: no metrics logged yet ({schema.METRICS_FILE} is missing or empty): check the "
                    "path, or run this again once the trainer has logged a step")

    def has_started(self) -> bool:
        """A trainer wrote a start or restart event here: metrics may simply not have come yet."""
        with self._lock:
            return any(e.get("kind") in ("start", "restart") for e in self.events)

    def start_validation(self) -> list[tuple[float, float]]:
        """(step, val_loss) of the start events: the trainer validates before its first step and puts
        that reference loss on the start event, not in metrics.jsonl."""
        with self._lock:
            return [(float(e["step"]), float(e["val_loss"])) for e in self.events
                    if e.get("kind") == "start" and _finite_number(e.get("val_loss"))]

    def spike_list(self) -> list[dict]:
        """Detector spikes with ratios and the trainer's action, plus trainer-reported spikes the
        detector did not flag (e.g. a run with other thresholds)."""
        actions = {e["step"]: e for e in self.events if e.get("kind") == "spike"}
        out, seen = [], set()
        for s in self.spikes:
            ev = actions.get(s["step"])
            out.append(_with_ratios({**s, "action": ev["action"] if ev else "none (detected by the monitor)"}))
            seen.add(s["step"])
        for step, ev in actions.items():
            if step not in seen:
                out.append(_with_ratios({"step": step, "loss": ev["loss"], "grad_norm": ev.get("grad_norm"),
                                         "baseline_loss": ev.get("baseline_loss"),
                                         "baseline_grad_norm": ev.get("baseline_grad_norm"),
                                         "reason": "trainer", "action": ev.get("action", "")}))
        return sorted(out, key=lambda s: s["step"])

    def series(self, keys: list[str], lo: float | None, hi: float | None, width: int, markers: bool = False) -> dict:
        """Downsampled series for one chart view, with its spikes and (if asked) skipped/NaN-step markers."""
        with self._lock:
            steps = self.cols["step"].values
            view = (lo, hi)
            lo = steps[0] if lo is None and len(steps) else (lo if lo is not None else 0)
            hi = steps[-1] if hi is None and len(steps) else (hi if hi is not None else 0)
            i0, i1 = int(np.searchsorted(steps, lo, "left")), int(np.searchsorted(steps, hi, "right"))
            x = steps[i0:i1]
            out = {"keys": {}, "loading": [k for k in keys if k in self.pending_keys]}
            for k in keys:
                if k in self.cols and k not in self.pending_keys:
                    out["keys"][k] = envelope(x, self.cols[k].values[i0:i1], width)
            if "val_loss" in keys:
                self._add_start_validation(out["keys"], *view)
            out["spikes"] = bucket_points(self.spike_list(), lo, hi, width // 4, _severity)
            out["markers"] = {name: bucket_points(self._increments(name), lo, hi, width // 4, lambda m: m["n"])
                              for name in ("skipped", "nan")
                              if markers and name in self.cols and name not in self.pending_keys}
            out["range"] = [float(x[0]), float(x[-1])] if len(x) else None  # actual first/last step
        return out

    def _add_start_validation(self, views: dict, lo: float | None, hi: float | None) -> None:
        """Put the start events' validation losses (step 0) into the val_loss view, if in range."""
        points = [(s, v) for s, v in self.start_validation() if (lo is None or s >= lo) and (hi is None or s <= hi)]
        if points:
            empty = {"x": np.empty(0), "y": np.empty(0)}
            views["val_loss"] = insert_points(views.get("val_loss", empty), points)

    def _increments(self, key: str) -> list[dict]:
        """Steps where a cumulative counter (skipped, nan) went up: the overflow/skipped-step marks."""
        v = np.nan_to_num(self.cols[key].values, nan=0.0)
        d = np.diff(v, prepend=0.0)
        idx = np.flatnonzero(d > 0)
        steps = self.cols["step"].values
        return [{"step": float(steps[i]), "n": float(d[i])} for i in idx[:100_000]]

    def summary(self, now: float | None = None) -> dict:
        """The header: model, layout, progress, ETA, staleness, problems."""
        now = time.time() if now is None else now
        with self._lock:
            last = {k: _last_finite(c.values) for k, c in self.cols.items() if k not in self.pending_keys}
            model = self.config.get("model") if isinstance(self.config.get("model"), dict) else {}
            train = self.config.get("train") if isinstance(self.config.get("train"), dict) else {}
            starts = [e for e in self.events if e.get("kind") in ("start", "restart")]
            stops = [e for e in self.events if e.get("kind") in ("stop", "error")]
            planned = train.get("steps") if self.kind == "jsonl" else self._text.train_iters
            seq = model.get("seq_length")
            gbs = train.get("global_batch_size")
            recent = self.cols["step_time_s"].values[-50:] if "step_time_s" in self.cols else np.empty(0)
            recent = [float(v) for v in recent if math.isfinite(v)]
            step_time = median(recent) if recent else None
            last_step = last.get("step")
            eta = (planned - last_step) * step_time if planned and step_time and last_step is not None else None
            last_time = last.get("time")
            since = now - last_time if last_time is not None else None
            done = os.path.exists(os.path.join(self.path, "DONE")) if self.kind == "jsonl" else False
            ended = done or (bool(stops) and (not starts or stops[-1]["time"] >= starts[-1]["time"]))
            stall_after = max(120.0, 10 * step_time) if step_time else 120.0
            return {
                "name": self.name, "path": self.path, "kind": self.kind,
                "model": {k: model.get(k) for k in ("name", "num_layers", "hidden_size", "num_attention_heads",
                                                    "seq_length") if k in model},
                "layout": ({"world_size": starts[-1].get("world_size"), **(starts[-1].get("layout") or {})}
                           if starts else None),
                "precision": self.config.get("precision"),
                "rows": self.n, "superseded": self.superseded, "last_step": last_step,
                "planned_steps": planned, "tokens": last.get("tokens"),
                "planned_tokens": planned * gbs * seq if planned and gbs and seq else None,
                "progress": last_step / planned if planned and last_step is not None else None,
                "eta_s": eta if not ended else None, "step_time_s": step_time,
                "last_metric_time": last_time, "since_last_metric_s": since,
                "stalled": bool(since is not None and since > stall_after and not ended),
                "ended": ended, "done": done,
                "keys": self._keys(),
                "loading": list(self.pending_keys),
                "bad_lines": self.bad_lines, "bad_event_lines": self.bad_event_lines,
                "errors": self.errors[:20], "config_error": self.config_error,
                "spikes": len(self.spike_list()), "version": self.version,
                "load_seconds": self.load_seconds,
            }

    def _keys(self) -> list[str]:
        """Metric names to chart: the loaded columns, and val_loss when only a start event has one."""
        keys = [k for k in self.cols if k != "step" and k not in self.pending_keys]
        if "val_loss" not in keys and "val_loss" not in self.pending_keys and self.start_validation():
            keys.append("val_loss")
        return keys

    def event_list(self) -> list[dict]:
        with self._lock:
            return list(self.events)


def _with_ratios(s: dict) -> dict:
    def ratio(v, b):
        return v / b if isinstance(v, (int, float)) and isinstance(b, (int, float)) and b else None
    return {**s, "ratio": ratio(s.get("loss"), s.get("baseline_loss")),
            "grad_ratio": ratio(s.get("grad_norm"), s.get("baseline_grad_norm"))}


def _severity(s: dict) -> float:
    vals = [v for v in (s.get("ratio"), s.get("grad_ratio")) if isinstance(v, float) and v == v]
    return math.inf if s.get("reason") == "non-finite" else max(vals, default=0.0)


def _finite_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _last_finite(values: np.ndarray) -> float | None:
    idx = np.flatnonzero(np.isfinite(values[-1000:]))
    return float(values[-1000:][idx[-1]]) if len(idx) else None
