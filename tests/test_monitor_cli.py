"""glm-monitor spikes / report through the real command line: tables, JSON, exit codes for alerting,
clear errors, a self-contained report with hostile strings kept inert."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_glm.metrics import schema
from megatron_glm.monitor.synthetic_runs import Curve, write_run

EVIL = "<img src=x onerror=alert(1)>"


GLM_MONITOR = str(Path(sys.executable).parent / "glm-monitor")  # the installed console script


def cli(*args, timeout=120):
    return subprocess.run([GLM_MONITOR, *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-runs")
    spiky, clean = root / "spiky", root / EVIL
    write_run(spiky, Curve(5000, seed=2, tau=900.0), spikes=[1000, 4000])
    write_run(clean, Curve(5000, seed=3, tau=900.0))
    with schema.EventsWriter(clean) as ev:
        ev.write({"step": 10, "kind": "error", "message": "</script><script>alert(1)</script>"})
    return spiky, clean


def test_spikes_table_and_exit_codes(runs):
    spiky, clean = runs
    r = cli("spikes", spiky)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["step", "reason", "loss"]
    assert [ln.split()[0] for ln in lines[1:3]] == ["1000", "4000"] and "skip" in lines[1]
    assert "2 spike(s) in 5000 logged steps" in lines[-1]
    assert cli("spikes", spiky, "--fail-on-spike").returncode == 1
    r = cli("spikes", clean, "--fail-on-spike")
    assert r.returncode == 0 and "0 spike(s)" in r.stdout


def test_spikes_json(runs):
    r = cli("spikes", runs[0], "--json")
    out = json.loads(r.stdout)
    assert [s["step"] for s in out["spikes"]] == [1000, 4000]
    assert out["steps"] == 5000 and out["rule"]["loss_ratio"] == 1.1
    assert all(s["ratio"] > 1.3 and s["grad_ratio"] > 10 for s in out["spikes"])


def test_missing_run_is_a_clear_error(tmp_path):
    r = cli("spikes", tmp_path / "nope")
    assert r.returncode == 2 and "nope: no such run directory or log file" in r.stderr
    r = cli("report", tmp_path, "-o", tmp_path / "r.html")
    assert r.returncode == 2 and "not a run directory" in r.stderr
    assert not (tmp_path / "r.html").exists()


def test_report_is_self_contained_and_inert(runs, tmp_path):
    out = tmp_path / "report.html"
    r = cli("report", *runs, "-o", out)
    assert r.returncode == 0, r.stderr
    html = out.read_text()
    assert "Content-Security-Policy" in html and "connect-src 'none'" in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|/static)""", html)
    assert "<script src" not in html and "<link rel=\"stylesheet\"" not in html
    assert EVIL not in html and "</script><script>alert" not in html  # only as \\u003c-escaped JSON
    data = json.loads(re.search(r'<script id="glm-data" type="application/json">(.*?)</script>', html, re.S).group(1))
    assert [r["name"] for r in data["runs"]] == ["spiky", EVIL]
    assert [s["step"] for s in data["series"][0]["spikes"]] == [1000, 4000]
    assert {"loss", "grad_norm", "lr", "mfu"} <= set(data["series"][0]["keys"])


def test_report_to_an_unwritable_place_fails_cleanly(runs, tmp_path):
    r = cli("report", runs[0], "-o", tmp_path / "no" / "such" / "dir" / "r.html")
    assert r.returncode == 2 and "cannot write" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_megatron_text_log_through_the_cli(tmp_path):
    lines = [f" iteration {i:6d}/ 100 | consumed samples: {i * 4} | lm loss: {9.0 if i == 70 else 2.0 + 0.01 * (i % 3):.6E} "
             f"| grad norm: 1.0 | number of skipped iterations: 0 |\n" for i in range(1, 101)]
    log = tmp_path / "megatron.log"
    log.write_text("".join(lines))
    r = cli("spikes", log, "--json")
    assert [s["step"] for s in json.loads(r.stdout)["spikes"]] == [70]


def _no_metrics_inputs(root):
    """{name: (path, what the error says)}: a text log of something else, a run directory whose
    metrics file is empty, and one holding only another program's JSON lines."""
    garbage = root / "garbage.log"
    garbage.write_text("hello\nnot a training log\n")
    empty = root / "empty-run"
    empty.mkdir()
    (empty / schema.METRICS_FILE).write_bytes(b"")
    foreign = root / "foreign-run"
    foreign.mkdir()
    (foreign / schema.METRICS_FILE).write_bytes(b'{"epoch": 1, "acc": 0.5}\nnot json\n')
    return {"garbage": (garbage, "no metrics recognised in its 2 line(s)"),
            "empty": (empty, "no metrics logged yet (metrics.jsonl is missing or empty)"),
            "foreign": (foreign, "no usable line in metrics.jsonl (2 bad line(s)")}


@pytest.mark.parametrize("which", ["garbage", "empty", "foreign"])
@pytest.mark.parametrize("command", ["spikes", "spikes-json", "report", "serve"])
def test_no_recognised_metrics_is_exit_2_with_the_reason(tmp_path, command, which):
    """A cron alert (spikes --fail-on-spike) aimed at the wrong file must not report "0 spikes"
    and exit 0 forever; report and serve refuse the same inputs with the same reason."""
    path, reason = _no_metrics_inputs(tmp_path)[which]
    out = tmp_path / "report.html"
    args = {"spikes": ["spikes", path, "--fail-on-spike"], "spikes-json": ["spikes", path, "--json"],
            "report": ["report", path, "-o", out], "serve": ["serve", path, "--port", "0"]}[command]
    r = cli(*args, timeout=60)  # serve would run until the timeout if it accepted the input
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert f"glm-monitor: error: {path}: {reason}" in r.stderr
    assert "spike(s)" not in r.stdout and r.stdout.strip() == ""
    assert not out.exists()


def test_serve_waits_for_a_started_run_without_metrics(tmp_path):
    """A trainer that has started (start event) but not logged a step yet is worth watching: serve
    accepts it with a note; spikes still refuses it (nothing to check)."""
    run = tmp_path / "run"
    with schema.EventsWriter(run) as ev:
        ev.write({"step": 0, "kind": "start", "message": "training", "world_size": 1,
                  "layout": {"tp": 1, "pp": 1, "dp": 1, "vpp": None}})
    assert cli("spikes", run).returncode == 2
    server = subprocess.Popen([GLM_MONITOR, "serve", str(run), "--port", "0"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert "serving 1 run(s)" in server.stdout.readline()
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    assert "no metrics yet, but its trainer has started" in err


def test_report_embeds_the_step_zero_validation_loss(tmp_path):
    run = tmp_path / "run"
    write_run(run, Curve(500, seed=1))
    with schema.EventsWriter(run) as ev:  # a second start event, with the step-0 validation loss
        ev.write({"step": 0, "kind": "start", "message": "training", "world_size": 1,
                  "layout": {"tp": 1, "pp": 1, "dp": 1, "vpp": None}, "val_loss": 9.75})
    out = tmp_path / "report.html"
    assert cli("report", run, "-o", out).returncode == 0
    data = json.loads(re.search(r'<script id="glm-data" type="application/json">(.*?)</script>',
                                out.read_text(), re.S).group(1))
    view = data["series"][0]["keys"]["val_loss"]
    assert view["x"][0] == 0 and view["y"][0] == 9.75
