"""The dashboard's column cache (megatron_glm/monitor/column_cache.py): a run opened from the cache
shows exactly what a full read shows -- every column, every spike, bad lines, restarts -- and a
cache that no longer describes metrics.jsonl is never used."""

from __future__ import annotations

import json

import numpy as np
import pytest

from megatron_glm.metrics import schema
from megatron_glm.monitor import column_cache
from megatron_glm.monitor.run import CACHE_MIN_ROWS, RunStore
from megatron_glm.monitor.synthetic_runs import Curve, metric_lines, series, write_run

STEPS = 2 * CACHE_MIN_ROWS


def _loaded(run_dir, use_cache: bool = True, monkeypatch=None) -> RunStore:
    if not use_cache:
        monkeypatch.setattr(column_cache, "load", lambda *args: None)
        monkeypatch.setattr(column_cache, "save", lambda *args: False)
    store = RunStore(run_dir)
    store.load(background=False)
    if not use_cache:
        monkeypatch.undo()
    return store


def _same_view(a: RunStore, b: RunStore) -> None:
    """`a` (from the cache) shows what `b` shows; it may know more keys (a full read finds the
    keys in the first and last 64 KiB; the cache keeps every key it has seen)."""
    assert (a.n, a.superseded, a.bad_lines) == (b.n, b.superseded, b.bad_lines)
    assert set(b.cols) <= set(a.cols)
    for key in b.cols:
        np.testing.assert_array_equal(a.cols[key].values, b.cols[key].values, err_msg=key)
    assert json.dumps(a.spikes) == json.dumps(b.spikes)  # NaN values compare equal as text
    assert a.detector.state_dict() == b.detector.state_dict()


@pytest.fixture
def run(tmp_path):
    run_dir = tmp_path / "run"
    write_run(run_dir, Curve(STEPS, seed=3, tau=3000.0), spikes=(5_000, 12_345))
    with open(run_dir / schema.METRICS_FILE, "ab") as f:
        f.write(b'{"not": "a metrics line"}\n')  # a bad line, counted
    return run_dir


def test_a_second_load_comes_from_the_cache_and_shows_the_same(run, monkeypatch):
    first = _loaded(run)
    assert not first.from_cache and (run / "cache" / "metrics" / column_cache.INDEX).is_file()
    assert [s["step"] for s in first.spikes] == [5_000, 12_345]
    second = _loaded(run)
    assert second.from_cache
    _same_view(second, first)


def test_appended_rows_and_a_restart_across_the_cached_part_are_read_and_detected(run, monkeypatch):
    _loaded(run)  # writes the cache
    t, loss, grad = series(Curve(STEPS + 3_000, seed=4, tau=3000.0), spikes=(STEPS + 1_500,))
    rewind = slice(STEPS - 500, STEPS + 3_000)  # a resume from an older checkpoint re-logs 500 steps
    with open(run / schema.METRICS_FILE, "ab") as f:
        f.write(metric_lines(t[rewind], loss[rewind], grad[rewind]))
    cached = _loaded(run)
    assert cached.from_cache
    full = _loaded(run, use_cache=False, monkeypatch=monkeypatch)
    _same_view(cached, full)
    assert STEPS + 1_500 in [s["step"] for s in cached.spikes] and cached.superseded >= 500


def test_a_cache_that_does_not_describe_the_file_is_not_used(run, monkeypatch):
    _loaded(run)
    path = run / schema.METRICS_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3].rsplit(b"\n", 2)[0] + b"\n")  # truncated: a rewritten file
    store = _loaded(run)
    assert not store.from_cache
    _same_view(store, _loaded(run, use_cache=False, monkeypatch=monkeypatch))
    path.write_bytes(data.replace(b'"loss":', b'"loss": ', 1))  # same length is not enough: content changed
    assert not _loaded(run).from_cache
    assert _loaded(run).from_cache  # and written again


def test_a_run_dir_the_monitor_cannot_write_gets_its_cache_elsewhere(run, monkeypatch, tmp_path):
    (run / "cache").write_text("a file where the cache directory would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    _loaded(run)
    assert _loaded(run).from_cache
    assert list((tmp_path / "xdg" / "megatron-glm" / "metrics").glob("*/" + column_cache.INDEX))


def test_small_runs_get_no_cache(tmp_path):
    write_run(tmp_path / "small", Curve(500, seed=1))
    _loaded(tmp_path / "small")
    assert not (tmp_path / "small" / "cache").exists() and not _loaded(tmp_path / "small").from_cache
