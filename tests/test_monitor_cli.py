"""glm-monitor spikes / report through the real command line: tables, JSON, exit codes for alerting,
clear errors, a self-contained report with hostile strings kept inert."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from megatron_glm.monitor import schema
from megatron_glm.monitor.synthetic import Curve, write_run

EVIL = "<img src=x onerror=alert(1)>"


def cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "megatron_glm.monitor.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


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
