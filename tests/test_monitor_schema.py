"""The run's metrics/events schema: writers, validation, tolerant incremental readers, columnar loading."""

import json
import math
import threading
import time

import numpy as np
import pytest

from megatron_glm.metrics import schema as S


def metric(i, **kw):
    rec = dict(time=1.7e9 + i, step=i, consumed_samples=i * 8, tokens=i * 8 * 2048, loss=2.5,
               grad_norm=1.0, param_norm=300.0, loss_scale=None, skipped=0, nan=0, lr=1e-4, batch_size=8,
               step_time_s=0.5, tokens_per_s=32768.0, tflops_per_gpu=150.0, mfu=0.48, mem_gb=60.1)
    rec.update(kw)
    return rec


EVENTS = [
    dict(step=0, kind="start", message="go", world_size=8, layout=dict(tp=2, pp=2, dp=2, vpp=None)),
    dict(step=5, kind="checkpoint_saved", message="", path="/ckpt/iter_5"),
    dict(step=5, kind="checkpoint_corrupt", message="size differs from the manifest", path="/ckpt/iter_5",
         file="__0_0.distcp"),
    dict(step=5, kind="checkpoint_fallback", message="resuming from an older checkpoint"),
    dict(step=7, kind="spike", message="loss spike", loss=float("nan"), grad_norm=float("inf"),
         baseline_loss=2.4, baseline_grad_norm=1.1, action="rollback"),
    dict(step=7, kind="rollback", message="", path="/ckpt/iter_5", to_step=5),
    dict(step=5, kind="checkpoint_loaded", message="", path="/ckpt/iter_5"),
    dict(step=5, kind="skip", message="skip bad data", first_sample=40, last_sample=56),
    dict(step=5, kind="restart", message="", world_size=4, layout=dict(tp=1, pp=2, dp=2, vpp=1)),
    dict(step=9, kind="error", message="NCCL timeout"),
    dict(step=9, kind="stop", message="bye", reason="error", exit_code=1),
    dict(step=8, kind="downstream_eval", message="downstream evaluation at step 8",
         metrics={"eval/demo-choice/Accuracy": 60.0, "eval/demo-lm/PPL": 1226.5}, seconds=0.2),
]


def same(a, b):
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def strict_json(line):
    return json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON token {c}"))


def test_metrics_round_trip_with_non_finite_sources_and_val_loss(tmp_path):
    recs = [metric(1), metric(2, loss=float("nan"), grad_norm=float("inf"), **{"loss/wiki": 2.1, "loss/code": None}),
            metric(np.int64(3), loss=float("-inf"), val_loss=2.7, param_norm=np.float32(3.5))]
    with S.MetricsWriter(tmp_path) as w:
        for r in recs:
            w.write(r)
    lines = (tmp_path / S.METRICS_FILE).read_text().splitlines()
    assert [strict_json(x)["loss"] for x in lines] == [2.5, "nan", "-inf"]  # strict JSON for browsers
    assert list(strict_json(lines[0]))[: len(S.REQUIRED_METRIC_KEYS)] == list(S.REQUIRED_METRIC_KEYS)
    chunk = S.read_metrics(tmp_path, validate=True)
    got, off = chunk
    assert off == (tmp_path / S.METRICS_FILE).stat().st_size and chunk.corrupt_lines == 0
    assert len(got) == 3 and got[2]["step"] == 3 and isinstance(got[2]["step"], int)
    for want, have in zip(recs, got):
        assert set(have) == set(want)
        assert all(same(float(want[k]) if want[k] is not None else None, have[k]) for k in want)
    cols, off2 = S.read_metric_columns(tmp_path, ["step", "loss", "grad_norm", "loss_scale", "val_loss",
                                                  "loss/wiki", "loss/code", "param_norm"])
    assert off2 == off
    np.testing.assert_array_equal(cols["step"], [1, 2, 3])
    np.testing.assert_array_equal(cols["loss"], [2.5, np.nan, -np.inf])
    np.testing.assert_array_equal(cols["grad_norm"], [1.0, np.inf, 1.0])
    assert np.isnan(cols["loss_scale"]).all()
    np.testing.assert_array_equal(cols["val_loss"], [np.nan, np.nan, 2.7])
    np.testing.assert_array_equal(cols["loss/wiki"], [np.nan, 2.1, np.nan])
    assert np.isnan(cols["loss/code"]).all()
    np.testing.assert_array_equal(cols["param_norm"], [300.0, 300.0, 3.5])


def test_events_round_trip_all_kinds(tmp_path):
    assert {e["kind"] for e in EVENTS} == set(S.EVENT_KINDS)
    with S.EventsWriter(tmp_path) as w:
        for e in EVENTS:
            w.write(e)
    for line in (tmp_path / S.EVENTS_FILE).read_text().splitlines():
        strict_json(line)
    chunk = S.read_events(tmp_path, validate=True)
    got = chunk.data
    assert chunk.corrupt_lines == 0 and [g["kind"] for g in got] == [e["kind"] for e in EVENTS]
    for want, have in zip(EVENTS, got):
        assert isinstance(have["time"], float) and all(same(want[k], have[k]) for k in want)


@pytest.mark.parametrize("key", S.REQUIRED_METRIC_KEYS)
def test_missing_metric_field_is_named(key):
    rec = metric(1)
    del rec[key]
    with pytest.raises(S.SchemaError, match=f"field '{key}': missing"):
        S.validate_metric(rec)


def test_metric_types(tmp_path):
    S.validate_metric(metric(1, grad_norm=None, mfu=None, val_loss=None, loss=float("nan")))
    for bad in (dict(step=1.5), dict(loss=None), dict(skipped=True), dict(lr="1e-4"), dict(**{"loss/x": "a"}),
                dict(**{"eval/t/Accuracy": "a"})):
        with pytest.raises(S.SchemaError, match=f"field '{next(iter(bad))}'"):
            S.validate_metric(metric(1, **bad))
    with S.MetricsWriter(tmp_path) as w, pytest.raises(S.SchemaError) as e:
        w.write(metric(1, step=None))
    assert S.METRICS_FILE in str(e.value) and "'step'" in str(e.value)
    assert (tmp_path / S.METRICS_FILE).read_bytes() == b""  # nothing written for a rejected record


def test_event_validation():
    with pytest.raises(S.SchemaError, match="field 'kind': unknown event kind 'party'"):
        S.validate_event(dict(time=1.0, step=1, kind="party", message=""))
    with pytest.raises(S.SchemaError, match="field 'baseline_loss': missing"):
        S.validate_event(dict(time=1.0, step=1, kind="spike", message="", loss=9.0, grad_norm=1.0,
                              baseline_grad_norm=1.0, action="skip"))
    with pytest.raises(S.SchemaError, match="field 'layout'"):
        S.validate_event(dict(time=1.0, step=0, kind="start", message="", world_size=8, layout=dict(tp=2, dp=4)))
    with pytest.raises(S.SchemaError, match="field 'last_sample'"):
        S.validate_event(dict(time=1.0, step=0, kind="skip", message="", first_sample=9, last_sample=3))
    with pytest.raises(S.SchemaError, match="field 'message': missing"):
        S.validate_event(dict(time=1.0, step=0, kind="error"))


def test_partial_last_line_is_read_exactly_once(tmp_path):
    with S.MetricsWriter(tmp_path) as w:
        w.write(metric(1))
    path = tmp_path / S.METRICS_FILE
    first_len = path.stat().st_size
    line = S.encode_line(S.validate_metric(metric(2, loss=float("nan"))))
    with open(path, "ab") as f:
        f.write(line[:40])  # a writer caught mid-record
    chunk = S.read_metrics(tmp_path)
    recs, off = chunk
    cols, coff = S.read_metric_columns(tmp_path, ["step"])
    assert [r["step"] for r in recs] == [1] and off == coff == first_len and chunk.corrupt_lines == 0
    np.testing.assert_array_equal(cols["step"], [1])
    with open(path, "ab") as f:
        f.write(line[40:])
    recs2, off2 = S.read_metrics(tmp_path, off)
    cols2, coff2 = S.read_metric_columns(tmp_path, ["step", "loss"], coff)
    assert [r["step"] for r in recs2] == [2] and math.isnan(recs2[0]["loss"])
    assert off2 == coff2 == path.stat().st_size
    np.testing.assert_array_equal(cols2["loss"], [np.nan])
    assert [r["step"] for r in S.read_metrics(tmp_path)[0]] == [1, 2]
    assert S.read_metrics(tmp_path, off2) == ([], off2)  # nothing new


def test_corrupt_and_blank_lines_are_skipped_and_counted(tmp_path):
    good = [S.encode_line(S.validate_metric(metric(i))) for i in range(3)]
    torn = b'{"time": 1, "st\xff\n'
    (tmp_path / S.METRICS_FILE).write_bytes(good[0] + b"\n  \n" + torn + good[1] + b"[1,2]\n" + good[2])
    recs = S.read_metrics(tmp_path)
    assert [r["step"] for r in recs.data] == [0, 1, 2] and recs.corrupt_lines == 2
    assert "metrics.jsonl" in recs.errors[0]
    cols = S.read_metric_columns(tmp_path, ["step", "loss"])
    np.testing.assert_array_equal(cols.data["step"], [0, 1, 2])
    assert cols.corrupt_lines == 2 and len(cols.errors) == 2
    (tmp_path / S.EVENTS_FILE).write_bytes(b'{"step":1,"kind":"stop"}\n')  # parses, but breaks the schema
    ev = S.read_events(tmp_path, validate=True)
    assert ev.data == [] and ev.corrupt_lines == 1
    assert "events.jsonl line 1" in ev.errors[0] and "'time'" in ev.errors[0]


def test_writer_terminates_a_torn_line_after_a_crash(tmp_path):
    (tmp_path / S.METRICS_FILE).write_bytes(S.encode_line(metric(1))[:30])  # crashed mid-write
    with S.MetricsWriter(tmp_path) as w:
        w.write(metric(2))
    recs = S.read_metrics(tmp_path)
    assert [r["step"] for r in recs.data] == [2] and recs.corrupt_lines == 1
    assert S.read_metric_columns(tmp_path, ["step"]).data["step"].tolist() == [2.0]


def test_foreign_formatting_goes_through_the_slow_path(tmp_path):
    rec = metric(4, loss="nan", val_loss=1.5)
    rec = dict(reversed(list(rec.items())))  # different key order, spaces after separators
    (tmp_path / S.METRICS_FILE).write_text(json.dumps(rec) + "\n" + S.encode_line(metric(5)).decode())
    cols = S.read_metric_columns(tmp_path, ["step", "loss", "val_loss"]).data
    np.testing.assert_array_equal(cols["step"], [4, 5])
    np.testing.assert_array_equal(cols["loss"], [np.nan, 2.5])
    np.testing.assert_array_equal(cols["val_loss"], [1.5, np.nan])


def test_missing_file_and_replaced_file(tmp_path):
    assert S.read_metrics(tmp_path) == ([], 0) and S.read_events(tmp_path, 7) == ([], 7)
    assert S.read_metric_columns(tmp_path, ["loss"]).data["loss"].size == 0
    with S.MetricsWriter(tmp_path) as w:
        w.write(metric(1))
    big = S.read_metrics(tmp_path).next_offset + 1000
    again = S.read_metrics(tmp_path, big)
    assert again.reset and [r["step"] for r in again.data] == [1]


def test_tailing_while_another_thread_appends(tmp_path):
    n, seen, offset, steps = 3000, [], 0, []
    with S.MetricsWriter(tmp_path, fsync_interval_s=0.05) as w:
        w.write(metric(0))
        recs, offset = S.read_metrics(tmp_path)
        seen += [r["step"] for r in recs]

        def append():
            for i in range(1, n):
                w.write(metric(i, **({"val_loss": 2.0} if i % 100 == 0 else {})))

        t = threading.Thread(target=append)
        t.start()
        col_off = 0
        while t.is_alive() or offset < (tmp_path / S.METRICS_FILE).stat().st_size:
            chunk = S.read_metrics(tmp_path, offset)
            assert chunk.corrupt_lines == 0
            seen += [r["step"] for r in chunk.data]
            offset = chunk.next_offset
            cols = S.read_metric_columns(tmp_path, ["step", "val_loss"], col_off)
            assert cols.corrupt_lines == 0
            steps += cols.data["step"].tolist()
            col_off = cols.next_offset
            time.sleep(0.001)
        t.join()
    steps += S.read_metric_columns(tmp_path, ["step"], col_off).data["step"].tolist()
    assert seen == list(range(n)) and steps == list(range(n))


def test_million_lines_columnar(tmp_path):
    """Values, NaNs and sparse keys over 1,000,000 lines (the speed: bench/monitor_load.py)."""
    block = b"".join(S.encode_line(S.validate_metric(metric(
        i, loss=float("nan") if i == 7 else 2.0 + i / 1000, grad_norm=None if i == 3 else 1.0,
        **({"val_loss": 2.2} if i % 500 == 0 else {})))) for i in range(1000))
    (tmp_path / S.METRICS_FILE).write_bytes(block * 1000)
    cols, off = S.read_metric_columns(tmp_path, ["step", "loss", "grad_norm", "val_loss"])
    assert off == len(block) * 1000
    assert len(cols["step"]) == 1_000_000 and cols["step"][1234] == 234
    assert np.isnan(cols["loss"][7::1000]).all() and np.isnan(cols["grad_norm"][3::1000]).all()
    assert np.isfinite(cols["loss"]).sum() == 999_000 and (~np.isnan(cols["val_loss"])).sum() == 2000
