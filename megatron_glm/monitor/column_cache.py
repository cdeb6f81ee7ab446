"""A columnar copy of metrics.jsonl (one .npy per key) with the spike detector's result, so that a
long run opens in a fraction of a second.

Reading a 1,000,000-step metrics.jsonl and running the detector over it takes seconds; reading
these arrays (memory-mapped) takes milliseconds, and only what the trainer appended since the cache
was written is parsed and fed to the detector. metrics.jsonl stays the source of truth:

* The cache covers the first ``offset`` bytes of metrics.jsonl: every row in file order (superseded
  rows included, as the detector saw them), every key the run logged, the detector's state after
  the last row and the spikes it found, and the count of bad lines.
* It is used only if it still describes that file: the file is at least ``offset`` bytes long, and
  SHA-1 digests of its first 64 KiB and of the 64 KiB before ``offset`` match, and the detector
  rule is the same. Anything else (a rewritten or truncated file, another rule, an older cache
  format, unreadable files) means the cache is ignored and written again.
* Written atomically: the arrays go to a new version directory, then ``index.json`` is replaced
  (``os.replace``) to point at it, then older versions are removed. A reader of the previous index
  keeps working on its (memory-mapped) files until it is done.
* Location: ``RUN_DIR/cache/metrics/``; where the run directory is not writable (someone else's
  run), ``$XDG_CACHE_HOME/megatron-glm/metrics/<hash of the run's path>/``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from megatron_glm.metrics.schema import METRICS_FILE
from megatron_glm.metrics.spikes import SpikeRule

FORMAT = 1
INDEX = "index.json"
_DIGEST_BYTES = 1 << 16


@dataclass
class CachedColumns:
    offset: int
    """Bytes of metrics.jsonl covered (complete lines)."""
    columns: Dict[str, np.ndarray]
    """Every row in file order, one float64 array per key (NaN where a row lacks the key; the
    phase-1 keys use the monitor's NOT_LOGGED for a null, as its loader reads them)."""
    detector_state: dict
    spikes: List[dict]
    bad_lines: int = 0
    errors: List[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0


def _locations(run_dir: str) -> List[Path]:
    """Inside the run directory, then the user's cache directory."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    key = hashlib.sha1(os.path.realpath(run_dir).encode()).hexdigest()[:16]
    return [Path(run_dir) / "cache" / "metrics", base / "megatron-glm" / "metrics" / key]


def writable_cache_dir(run_dir: str) -> Optional[Path]:
    """Where to write the cache of `run_dir`: inside it when a directory can be made there
    (permission bits do not tell for root or read-only mounts), else the user's cache directory."""
    for where in _locations(run_dir):
        try:
            where.mkdir(parents=True, exist_ok=True)
            if os.access(where, os.W_OK | os.X_OK):
                return where
        except OSError:
            continue
    return None


def _digests(path: str, offset: int) -> Optional[Dict[str, str]]:
    """SHA-1 of the first 64 KiB and of the 64 KiB before `offset` (None: the file is shorter)."""
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size < offset:
                return None
            head = f.read(min(offset, _DIGEST_BYTES))
            f.seek(max(0, offset - _DIGEST_BYTES))
            before = f.read(offset - max(0, offset - _DIGEST_BYTES))
    except OSError:
        return None
    return {"head": hashlib.sha1(head).hexdigest(), "before": hashlib.sha1(before).hexdigest()}


def load(run_dir: str, rule: SpikeRule) -> Optional[CachedColumns]:
    """The cache of `run_dir` if it still describes its metrics.jsonl under `rule`, else None."""
    where = next((w for w in _locations(run_dir) if (w / INDEX).is_file()), None)
    if where is None:
        return None
    try:
        index = json.loads((where / INDEX).read_text())
        if index.get("format") != FORMAT or index.get("rule") != dataclasses.asdict(rule):
            return None
        if _digests(os.path.join(run_dir, METRICS_FILE), index["offset"]) != index["digests"]:
            return None
        version = where / index["version"]
        columns = {key: np.load(version / f"{number}.npy", mmap_mode="r")
                   for number, key in enumerate(index["keys"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if any(len(column) != index["rows"] for column in columns.values()):
        return None
    return CachedColumns(index["offset"], columns, index["detector_state"], index["spikes"],
                         index.get("bad_lines", 0), index.get("errors", []))


def save(run_dir: str, rule: SpikeRule, cached: CachedColumns) -> bool:
    """Write (or replace) the cache; False when it cannot be written (the monitor works without)."""
    digests = _digests(os.path.join(run_dir, METRICS_FILE), cached.offset)
    if digests is None:
        return False
    where = writable_cache_dir(run_dir)
    if where is None:
        return False
    try:
        version = Path(tempfile.mkdtemp(prefix=f"v{cached.offset}-", dir=where))
        keys = list(cached.columns)
        for number, key in enumerate(keys):
            np.save(version / f"{number}.npy", np.ascontiguousarray(cached.columns[key], dtype=np.float64))
        index = {"format": FORMAT, "offset": cached.offset, "rows": cached.rows, "keys": keys,
                 "version": version.name, "digests": digests, "rule": dataclasses.asdict(rule),
                 "detector_state": cached.detector_state, "spikes": cached.spikes,
                 "bad_lines": cached.bad_lines, "errors": cached.errors[:50]}
        fd, tmp = tempfile.mkstemp(prefix=".index-", dir=where)
        with os.fdopen(fd, "w") as f:
            json.dump(index, f)
        os.replace(tmp, where / INDEX)
    except OSError:
        return False
    for old in where.iterdir():  # earlier versions (a reader holding one keeps its open files)
        if old.is_dir() and old.name != version.name:
            shutil.rmtree(old, ignore_errors=True)
    return True
