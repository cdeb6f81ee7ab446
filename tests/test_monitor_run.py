"""RunStore (what the dashboard holds per run): tolerant tailing, restarts, two-phase loading,
downsampling that keeps every spike, Megatron-LM text logs, broken config files."""

from __future__ import annotations

import json
import math
import threading
import time

import numpy as np
import pytest

from megatron_glm.monitor import run as run_module
from megatron_glm.metrics import schema
from megatron_glm.monitor.downsample import bucket_points, envelope
from megatron_glm.monitor.run import RunStore
from megatron_glm.metrics.spikes import detect_spikes
from megatron_glm.monitor.synthetic_runs import Curve, metric_lines, series, write_config, write_run


def record(step, loss=2.0, grad_norm=1.0, **kw):
    rec = dict(time=1.7e9 + step, step=step, consumed_samples=step * 8, tokens=step * 2048, loss=loss,
               grad_norm=grad_norm, param_norm=300.0, loss_scale=65536.0, skipped=0, nan=0, lr=1e-4,
               batch_size=8, step_time_s=1.0, tokens_per_s=2048.0, tflops_per_gpu=100.0, mfu=0.3, mem_gb=10.0)
    rec.update(kw)
    return rec


def write(run_dir, records):
    with schema.MetricsWriter(run_dir) as w:
        for r in records:
            w.write(r)


def loaded(run_dir) -> RunStore:
    store = RunStore(run_dir)
    store.load(background=False)
    return store


def test_truncated_malformed_and_wrong_type_lines_are_counted_not_fatal(tmp_path):
    write(tmp_path, [record(i) for i in range(1, 11)])
    with open(tmp_path / schema.METRICS_FILE, "ab") as f:
        f.write(b"this is not json\n")
        f.write(b'["an", "array"]\n')
        f.write(b'{"step": "eleven", "loss": 1}\n')  # step not a number: cannot be placed
        f.write(schema.encode_line(record(11)))
        f.write(b'{"time": 1.7e9, "step": 12, "loss": 2.0, "gra')  # torn last line (writer still busy)
    store = loaded(tmp_path)
    s = store.summary()
    assert s["rows"] == 11 and s["last_step"] == 11
    assert s["bad_lines"] == 3
    assert any("line" in e for e in s["errors"])
    with open(tmp_path / schema.METRICS_FILE, "ab") as f:  # the writer finishes its line
        f.write(b'd_norm": 1.0, "skipped": 0, "nan": 0}\n')
    store.refresh(min_interval_s=0)
    assert store.summary()["rows"] == 12 and store.bad_lines == 3


@pytest.mark.parametrize("slice_bytes", [8 << 20, 1000, 100])  # many lines, a few, less than one per slice
def test_phase_two_columns_match_a_json_reference_despite_restarts_and_bad_lines(tmp_path, monkeypatch, slice_bytes):
    monkeypatch.setattr(run_module, "_PHASE2_BYTES", slice_bytes)
    recs = [record(i, loss=2 + i / 100, lr=i * 1e-6, **({"loss/pile": 1.5 + i / 1000} if i % 2 else {}))
            for i in range(1, 41)]
    recs += [record(i, loss=9.0, lr=-1.0) for i in range(30, 36)]  # restart from step 30 (rollback)
    write(tmp_path, recs)
    with open(tmp_path / schema.METRICS_FILE, "ab") as f:
        f.write(b"garbage\n")
    write(tmp_path, [record(i, lr=i * 1e-6) for i in range(36, 50)])
    store = RunStore(tmp_path)
    store.load(background=True)
    deadline = time.time() + 30
    while store.pending_keys and time.time() < deadline:
        time.sleep(0.05)
    assert not store.pending_keys
    steps = store.cols["step"].values
    assert steps.tolist() == list(range(1, 50))  # the re-logged 30..35 replace the first ones
    assert store.superseded == 11 and store.bad_lines == 1  # steps 30..40 of the first pass
    lr = store.cols["lr"].values
    assert lr[29] == -1.0 and lr[35] == pytest.approx(36e-6) and lr[0] == pytest.approx(1e-6)
    pile = store.cols["loss/pile"].values
    assert pile[0] == pytest.approx(1.501) and math.isnan(pile[1]) and math.isnan(pile[40])
    # the detector saw every row in file order, so the 9.0 losses after the restart are spikes
    assert {s["step"] for s in store.spike_list()} == set(range(30, 36))


def test_null_grad_norm_is_not_logged_but_nan_is_a_spike(tmp_path):
    recs = [record(i, grad_norm=None if i % 7 == 0 else 1.0) for i in range(1, 60)]
    recs.append(record(60, grad_norm=float("nan")))
    write(tmp_path, recs)
    store = loaded(tmp_path)
    assert [(s["step"], s["reason"]) for s in store.spike_list()] == [(60, "non-finite")]
    with schema.MetricsWriter(tmp_path) as w:  # the same through the tailing path
        w.write(record(61, grad_norm=None))
        w.write(record(62, grad_norm=float("inf")))
    store.refresh(min_interval_s=0)
    assert [s["step"] for s in store.spike_list()] == [60, 62]


def test_tailing_a_file_being_written_by_another_thread(tmp_path):
    write_config(tmp_path, 3000)
    (tmp_path / schema.METRICS_FILE).touch()
    store = loaded(tmp_path)
    n = 3000

    def writer():
        with schema.MetricsWriter(tmp_path, fsync_interval_s=1e9) as w:
            for i in range(1, n + 1):
                w.write(record(i, loss=2.0 + (5.0 if i == 1500 else 0.0)))
    t = threading.Thread(target=writer)
    t.start()
    while t.is_alive():
        store.refresh(min_interval_s=0)
        store.series(["loss"], None, None, 200)
    t.join()
    store.refresh(min_interval_s=0)
    assert store.cols["step"].values.tolist() == list(range(1, n + 1))
    assert store.bad_lines == 0 and [s["step"] for s in store.spike_list()] == [1500]


def test_replaced_metrics_file_is_reloaded(tmp_path):
    write(tmp_path, [record(i) for i in range(1, 101)])
    store = loaded(tmp_path)
    (tmp_path / schema.METRICS_FILE).unlink()
    write(tmp_path, [record(i) for i in range(1, 6)])
    store.refresh(min_interval_s=0)
    assert store.cols["step"].values.tolist() == [1, 2, 3, 4, 5]


def test_envelope_keeps_every_extreme_and_is_bounded():
    rng = np.random.default_rng(0)
    x = np.arange(1, 1_000_001, dtype=float)
    y = 2 + rng.normal(0, 0.01, len(x))
    spikes = rng.choice(len(x), 50, replace=False)
    y[spikes] = 7.0
    y[123] = np.nan
    env = envelope(x, y, 1000)
    assert set(env) == {"x", "lo", "hi", "mean", "count"} and len(env["x"]) == 1000
    bucket = np.searchsorted(env["x"], x[spikes], "right") - 1
    assert (env["hi"][bucket] == 7.0).all()
    assert (env["hi"] == 7.0).sum() == len(set(bucket.tolist()))
    assert env["count"].sum() == len(x) - 1
    small = envelope(x[:100], y[:100], 1000)
    assert set(small) == {"x", "y"} and len(small["y"]) == 100


def test_bucketed_spikes_keep_the_most_severe_and_count_the_rest():
    items = [{"step": s, "sev": s % 10} for s in range(1, 10_001)]
    out = bucket_points(items, 1, 10_000, 100, lambda it: it["sev"])
    assert len(out) == 100 and sum(it["count"] for it in out) == 10_000
    assert all(it["sev"] == 9 for it in out)
    assert bucket_points(items[:5], 1, 10_000, 100, lambda it: 0)[0]["count"] == 1


def test_injected_spikes_survive_downsampling_of_a_big_fixture(tmp_path):
    spikes = [12_345, 60_000, 99_999]
    write_run(tmp_path, Curve(100_000, tau=2e4), spikes=spikes)
    store = loaded(tmp_path)
    view = store.series(["loss", "grad_norm"], None, None, 800)
    assert [s["step"] for s in view["spikes"]] == spikes
    assert all(s["action"] == "skip" and s["ratio"] > 1.3 for s in view["spikes"])
    env = view["keys"]["loss"]
    for s in view["spikes"]:
        b = np.searchsorted(env["x"], s["step"], "right") - 1
        assert env["hi"][b] == pytest.approx(s["loss"])
    zoom = store.series(["loss"], 59_990, 60_010, 800)
    assert zoom["keys"]["loss"]["x"].tolist() == list(range(59_990, 60_011))
    assert [s["step"] for s in zoom["spikes"]] == [60_000]


MEGATRON_LOG = """\
using world size: 8, data-parallel size: 2, tensor-model-parallel size: 2
[2024-05-06 12:00:{sec:02d}] iteration {i:8d}/  {total:6d} | consumed samples: {cs:10d} | elapsed time per \
iteration (ms): 1234.5 | throughput per GPU (TFLOP/s/GPU): 150.2 | learning rate: 1.000000E-04 | global batch \
size:   512 | lm loss: {loss:.6E} | loss scale: 65536.0 | grad norm: {gn:.3f} | number of skipped iterations: \
{sk:3d} | number of nan iterations:   0 |
"""


def test_megatron_text_log(tmp_path):
    t, loss, grad = series(Curve(400, seed=3, tau=300.0), spikes=[250])
    lines = ["WARNING: something unrelated\n"]
    for i, (x, g) in enumerate(zip(loss, grad), 1):
        text = MEGATRON_LOG.format(sec=i % 60, i=i, total=1000, cs=i * 512, loss=x, gn=g, sk=1 if i == 100 else 0)
        lines.append(text.split("\n", 1)[1])
        if i % 100 == 0:
            lines.append(f" validation loss at iteration {i} | lm loss value: {x - 0.1:.6E} | lm loss PPL: 1.0 |\n")
    path = tmp_path / "train.log"
    path.write_text("".join(lines[:300]))
    store = loaded(path)
    path.write_text("".join(lines))  # the log grows
    store.refresh(min_interval_s=0)
    assert store.kind == "textlog" and store.n == 400
    np.testing.assert_allclose(store.cols["loss"].values, loss, rtol=1e-6)
    assert store.cols["step_time_s"].values[0] == pytest.approx(1.2345)
    assert store.cols["batch_size"].values[5] == 512
    assert store.cols["skipped"].values[[98, 99, 399]].tolist() == [0, 1, 1]
    val = store.cols["val_loss"].values
    assert np.flatnonzero(~np.isnan(val)).tolist() == [99, 199, 299, 399]
    assert [s["step"] for s in store.spike_list()] == [250]
    assert store.summary()["planned_steps"] == 1000 and store.summary()["progress"] == 0.4
    assert [s.step for s in detect_spikes(t, loss, grad)] == [250]


def test_broken_config_is_reported_with_its_line(tmp_path):
    write(tmp_path, [record(1)])
    (tmp_path / "config.yaml").write_text("model:\n  name: x\n  bad: [unclosed\n")
    s = loaded(tmp_path).summary()
    assert s["config_error"].startswith("config.yaml:") and s["rows"] == 1


def test_missing_or_foreign_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        RunStore(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        RunStore(tmp_path)


def test_bulk_fixture_lines_are_what_the_writer_writes(tmp_path):
    t, loss, grad = series(Curve(50, seed=1))
    loss[3] = np.nan
    bulk = metric_lines(t, loss, grad, t0=1.7e9).decode().splitlines()
    for line in bulk:
        rec = schema.decode_record(json.loads(line))
        assert schema.encode_line(schema.validate_metric(rec)).decode() == line + "\n"


def test_header_progress_eta_and_stall(tmp_path):
    write_config(tmp_path, 1000)
    now = time.time()
    write(tmp_path, [record(i, time=now - 3600 + i, step_time_s=2.0) for i in range(1, 251)])
    with schema.EventsWriter(tmp_path) as ev:
        ev.write({"step": 0, "kind": "start", "message": "go", "world_size": 16,
                  "layout": {"tp": 4, "pp": 2, "dp": 2, "vpp": None}})
    s = loaded(tmp_path).summary(now)
    assert s["progress"] == 0.25 and s["eta_s"] == 750 * 2.0
    assert s["planned_tokens"] == 1000 * 8 * 256 and s["tokens"] == 250 * 2048
    assert s["layout"] == {"world_size": 16, "tp": 4, "pp": 2, "dp": 2, "vpp": None}
    assert s["stalled"] and s["since_last_metric_s"] == pytest.approx(3350, abs=1)
    assert not loaded(tmp_path).summary(now - 3340)["stalled"]  # 10 s after the last metric: fine
    (tmp_path / "DONE").touch()
    s = loaded(tmp_path).summary(now)
    assert s["ended"] and not s["stalled"] and s["eta_s"] is None


def test_background_loading_steps_aside_while_a_request_is_answered(tmp_path):
    write(tmp_path, [record(i, lr=i * 1e-6) for i in range(1, 200)])
    activity = run_module.Activity(max_wait_s=600)  # no time-out: the outcome must not depend on speed
    store = RunStore(tmp_path, activity=activity)
    activity.begin()  # a request in flight
    store.load(background=True)
    assert activity.waiting.wait(30), "the background loader never reached its first slice"
    assert store.pending_keys, "phase 2 ran while a request was in flight"
    activity.end()
    deadline = time.time() + 30
    while store.pending_keys and time.time() < deadline:
        time.sleep(0.02)
    assert not store.pending_keys and store.cols["lr"].values[-1] == pytest.approx(199e-6)


def test_a_key_only_on_the_first_line_is_found(tmp_path):
    write(tmp_path, [record(1, **{"loss/first": 1.25})] + [record(i) for i in range(2, 2000)])
    store = loaded(tmp_path)
    assert "loss/first" in store.summary()["keys"] and store.cols["loss/first"].values[0] == 1.25


def _start_event(run_dir, val_loss):
    with schema.EventsWriter(run_dir) as ev:
        ev.write({"time": 1.7e9, "step": 0, "kind": "start", "message": "training", "world_size": 1,
                  "layout": {"tp": 1, "pp": 1, "dp": 1, "vpp": None}, "val_loss": val_loss})


@pytest.mark.parametrize("rows", [300, 50_000])  # plain points / min-max buckets
def test_step_zero_validation_of_the_start_event_is_in_the_val_loss_view(tmp_path, rows):
    """The trainer puts the step-0 validation loss on its start event, not in metrics.jsonl: the
    validation view must still begin with it (and leave it out of a zoomed range without step 0)."""
    write(tmp_path, [record(i, val_loss=4.0 if i % 100 == 0 else None) for i in range(1, rows + 1)])
    _start_event(tmp_path, 5.5)
    store = loaded(tmp_path)
    view = store.series(["val_loss"], None, None, 500)["keys"]["val_loss"]
    assert view["x"][0] == 0 and list(view["x"]) == sorted(view["x"])
    first = view["y"][0] if "y" in view else (view["lo"][0], view["hi"][0], view["mean"][0], view["count"][0])
    assert first == (5.5 if "y" in view else (5.5, 5.5, 5.5, 1))
    zoomed = store.series(["val_loss"], 100, 250, 500)["keys"]["val_loss"]
    assert 0 not in list(zoomed["x"]) and np.nanmax(zoomed["y"]) == 4.0


def test_step_zero_validation_alone_makes_a_validation_chart(tmp_path):
    """Before the first validation step the start event's loss is the only validation value."""
    (tmp_path / schema.METRICS_FILE).write_bytes(b"")
    _start_event(tmp_path, 6.25)
    store = loaded(tmp_path)
    assert "val_loss" in store.summary()["keys"]
    view = store.series(["val_loss"], None, None, 500)["keys"]["val_loss"]
    assert list(view["x"]) == [0.0] and list(view["y"]) == [6.25]


def test_a_start_event_without_validation_adds_nothing(tmp_path):
    write(tmp_path, [record(i) for i in range(1, 11)])
    _start_event(tmp_path, None)
    view = loaded(tmp_path).series(["val_loss"], None, None, 500)["keys"]["val_loss"]
    assert list(view["x"]) == list(range(1, 11)) and np.isnan(view["y"]).all()


def test_lines_without_step_or_loss_are_not_rows(tmp_path):
    """A JSON line of another program has no step: a bad line, not a row at step -1 (the bulk
    loader's marker for a missing value); a missing loss is NaN, as when tailing."""
    (tmp_path / schema.METRICS_FILE).write_bytes(b'{"a": 1}\n{"step": 5}\n')
    store = loaded(tmp_path)
    assert store.n == 1 and store.bad_lines == 1
    assert list(store.cols["step"].values) == [5.0] and np.isnan(store.cols["loss"].values).all()


def test_why_a_run_has_no_metrics(tmp_path):
    log = tmp_path / "garbage.log"
    log.write_text("hello\nworld\n")
    assert "no metrics recognised in its 2 line(s)" in loaded(log).missing_metrics()
    run = tmp_path / "run"
    run.mkdir()
    (run / schema.METRICS_FILE).write_bytes(b"")
    store = loaded(run)
    assert "no metrics logged yet" in store.missing_metrics() and not store.has_started()
    _start_event(run, None)
    assert loaded(run).has_started()
    (run / schema.METRICS_FILE).write_bytes(b"not json\n")
    assert "no usable line in metrics.jsonl (1 bad line(s)" in loaded(run).missing_metrics()
    write(run, [record(1)])
    assert loaded(run).missing_metrics() is None


def test_downstream_scores_logged_mid_file_are_charted(tmp_path):
    """eval/<task>/<metric> keys appear on a few lines only (train.eval_tasks): found through the
    run's downstream_eval events even when no such line is in the first or last 64 KiB, and served
    as their own series (the dashboard draws one chart per key)."""
    scores = {1000: 40.0, 2000: 55.0}
    write(tmp_path, [record(i, **({"eval/demo-choice/Accuracy": scores[i]} if i in scores else {}))
                     for i in range(1, 3001)])
    with schema.EventsWriter(tmp_path) as ev:
        for step, value in scores.items():
            ev.write({"time": 1.7e9 + step, "step": step, "kind": "downstream_eval", "message": "downstream",
                      "metrics": {"eval/demo-choice/Accuracy": value}, "seconds": 0.5})
    store = loaded(tmp_path)
    assert "eval/demo-choice/Accuracy" in store.summary()["keys"]
    view = store.series(["eval/demo-choice/Accuracy"], None, None, 4000)["keys"]["eval/demo-choice/Accuracy"]
    points = [(x, y) for x, y in zip(view["x"], view["y"]) if not math.isnan(y)]
    assert points == [(1000, 40.0), (2000, 55.0)]
