"""The dashboard in a real chromium: loads without console errors and without a request leaving
127.0.0.1, draws the loss, marks an injected spike (with its hover details), escapes hostile run
names / config values / event messages, follows appended metrics live, opens the offline report,
and shows a 1,000,000-step run's loss chart within 2 s; the validation chart starts with the start
event's step-0 loss, non-negative series have axes from 0, a chart without data collapses to a
line saying so, and a downstream score (eval/<task>/<metric>) gets a chart of its own. Screenshots are saved (tmp_path, and $GLM_MONITOR_SCREENSHOT_DIR when set)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from urllib.parse import urlsplit

import pytest

from megatron_glm.metrics import schema
from megatron_glm.monitor.run import RunStore
from megatron_glm.monitor.server import start_in_thread
from megatron_glm.monitor.synthetic_runs import MILLION_SPIKES, Curve, million_step_run, write_config, write_run

pytestmark = pytest.mark.browser

EVIL_NAME = "<img src=x onerror=alert(1)>"
EVIL_MODEL = "<script>alert(2)</script>"
EVIL_MESSAGE = "<b onmouseover=alert(3)>bold</b>"


def evil_run(run_dir):
    write_config(run_dir, 500, name=EVIL_MODEL)
    with schema.MetricsWriter(run_dir) as w:
        for i in range(1, 301):
            w.write({"step": i, "consumed_samples": 8 * i, "tokens": 2048 * i, "loss": 4.0 - i / 200,
                     "grad_norm": 1.0, "param_norm": 10.0, "loss_scale": None, "skipped": i // 100, "nan": 0,
                     "lr": min(1e-4, i * 1e-6), "batch_size": 8, "step_time_s": 1.0, "tokens_per_s": 2048.0, "tflops_per_gpu": None,
                     "mfu": None, "mem_gb": None, "loss/pile": 3.9 - i / 200, "loss/wudao": 4.1 - i / 200,
                     "val_loss": 3.5 if i % 100 == 0 else None,
                     **({"eval/demo-choice/Accuracy": 30.0 + i / 10, "eval/demo-choice/en/Accuracy": 20.0 + i / 10}
                        if i % 100 == 0 else {})})
    with schema.EventsWriter(run_dir) as ev:
        ev.write({"step": 0, "kind": "start", "message": EVIL_MESSAGE, "world_size": 2,
                  "layout": {"tp": 1, "pp": 1, "dp": 2, "vpp": None}, "val_loss": 4.4})
        ev.write({"step": 100, "kind": "skip", "message": EVIL_MESSAGE, "first_sample": 800, "last_sample": 900})
        ev.write({"step": 300, "kind": "downstream_eval", "message": "downstream evaluation at step 300",
                  "metrics": {"eval/demo-choice/Accuracy": 60.0}, "seconds": 0.5})


class Page:
    """A chromium page that records console errors, page errors, dialogs and every request URL."""

    def __init__(self, chromium):
        self.context = chromium.new_context(viewport={"width": 1400, "height": 1800})
        self.page = self.context.new_page()
        self.errors, self.requests, self.dialogs = [], [], []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))

    def wait_until(self, js: str, timeout_s: float = 10.0) -> None:
        # a function, not an expression string: the page's CSP forbids eval of strings
        self.page.wait_for_function(f"() => ({js})", timeout=timeout_s * 1000, polling=50)

    def close(self):
        self.context.close()


def screenshot(page, tmp_path, name):
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    if os.environ.get("GLM_MONITOR_SCREENSHOT_DIR"):
        os.makedirs(os.environ["GLM_MONITOR_SCREENSHOT_DIR"], exist_ok=True)
        shutil.copy(path, os.environ["GLM_MONITOR_SCREENSHOT_DIR"])
    print(f"\n[browser] screenshot {path}")
    return path


BLUE_PIXELS = """c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
  for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 100 && d[i + 2] > 120 && d[i + 2] > d[i] + 80) n++; return n; }"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser-runs")
    main, evil = root / "main", root / EVIL_NAME
    write_run(main, Curve(3000, seed=4, tau=800.0), spikes=[1500])
    evil_run(evil)
    return main, evil


@pytest.fixture(scope="module")
def served(runs):
    stores = [RunStore(r) for r in runs]
    for s in stores:
        s.load(background=False)
    server, thread = start_in_thread(stores)
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()
    thread.join(10)


def test_dashboard_renders_marks_spikes_and_escapes(chromium, served, tmp_path):
    p = Page(chromium)
    try:
        p.page.goto(served)
        p.wait_until("document.body.dataset.ready === '1'")
        p.wait_until("Number(document.querySelector('canvas[data-chart=loss]').dataset.points) > 0")
        p.wait_until("document.querySelectorAll('.spike').length > 0")
        assert p.page.eval_on_selector("canvas[data-chart=loss]", BLUE_PIXELS) > 300  # run 0's line is blue

        marker = p.page.locator('#chart-loss .spike[data-run="0"][data-step="1500"]')
        assert marker.count() == 1
        marker.hover()
        tip = p.page.locator("#tooltip")
        tip.wait_for(state="visible")
        text = tip.inner_text()
        assert "spike at step 1,500" in text and "action: skip" in text and "ratio" in text and "baseline" in text

        name = p.page.locator('.run[data-run="1"] .name').inner_text()
        assert EVIL_NAME in name and EVIL_MODEL in p.page.locator('.run[data-run="1"] .model').inner_text()
        assert p.page.locator("#runs img, #runs script, #events b").count() == 0
        assert p.page.locator("#events td", has_text=EVIL_MESSAGE).count() == 2
        assert p.page.locator("#events td", has_text="demo-choice/Accuracy 60 (0.5 s)").count() == 1
        p.wait_until("document.querySelector('#chart-sources').hidden === false")
        assert p.page.locator("#chart-scale .mark.skipped").count() == 3  # skipped counter rose at 100, 200, 300
        screenshot(p.page, tmp_path, "dashboard.png")

        box = p.page.locator("canvas[data-chart=loss]").bounding_box()  # drag to zoom: every chart follows
        p.page.mouse.move(box["x"] + box["width"] * 0.4, box["y"] + 100)
        p.page.mouse.down()
        p.page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + 100, steps=5)
        p.page.mouse.up()
        p.wait_until("Number(document.querySelector('canvas[data-chart=lr]').dataset.lastStep) < 2500")
        assert p.dialogs == [] and p.errors == [], (p.dialogs, p.errors)
        hosts = {urlsplit(u).hostname for u in p.requests if not u.startswith("data:")}
        assert hosts == {"127.0.0.1"}, p.requests
    finally:
        p.close()


def test_step_zero_validation_axes_from_zero_and_collapsed_empty_charts(chromium, served, tmp_path):
    """Run 1 (warm-up LR from 0, validation at 100/200/300 plus 4.4 at step 0 on its start event, no
    memory logged) alone: the validation chart draws 4 points from step 0; the LR axis starts at 0
    (a 6 % margin used to put it at -6.00e-6); the memory chart is one line saying it has no data."""
    p = Page(chromium)
    try:
        p.page.goto(served)
        p.wait_until("document.body.dataset.ready === '1'")
        p.page.locator('.run[data-run="0"] input[type=checkbox]').uncheck()
        p.wait_until("document.querySelector('#chart-mem').classList.contains('nodata')")
        assert p.page.eval_on_selector("canvas[data-chart=val]", "c => c.dataset.points") == "4"
        # downstream scores (train.eval_tasks): a chart of their own per task and metric, groups as more lines
        assert p.page.eval_on_selector("canvas[data-chart=eval-demo-choice-Accuracy]", "c => c.dataset.points") == "6"
        assert p.page.locator("canvas[data-chart^=eval-]").count() == 1
        for chart in ("lr", "tps", "param", "steptime"):
            assert p.page.eval_on_selector(f"canvas[data-chart={chart}]", "c => Number(c.dataset.yMin)") == 0, chart
        assert p.page.eval_on_selector("canvas[data-chart=loss]", "c => Number(c.dataset.yMin)") > 1.0  # fitted
        mem = p.page.locator("#chart-mem")
        assert "no data" in mem.inner_text() and mem.locator("canvas").is_hidden()
        assert mem.bounding_box()["height"] < 60 < p.page.locator("#chart-lr").bounding_box()["height"]
        screenshot(p.page, tmp_path, "dashboard-run1.png")
        p.page.locator('.run[data-run="0"] input[type=checkbox]').check()  # run 0 logs memory
        p.wait_until("!document.querySelector('#chart-mem').classList.contains('nodata')")
        assert p.page.locator("#chart-mem canvas").is_visible()
        assert p.errors == [], p.errors
    finally:
        p.close()


def test_appended_metrics_show_up_live_and_bad_lines_are_shown(chromium, served, runs, tmp_path):
    p = Page(chromium)
    try:
        p.page.goto(served)
        p.wait_until("document.body.dataset.ready === '1'")
        p.wait_until("Number(document.querySelector('canvas[data-chart=loss]').dataset.lastStep) === 3000")
        with schema.MetricsWriter(runs[0]) as w:
            for i in range(3001, 3101):
                w.write({"step": i, "consumed_samples": 8 * i, "tokens": 2048 * i, "loss": 9.0 if i == 3050 else 2.3,
                         "grad_norm": 1.0, "param_norm": 300.0, "loss_scale": 65536.0, "skipped": 0, "nan": 0,
                         "lr": 1e-4, "batch_size": 8, "step_time_s": 2.0, "tokens_per_s": 1024.0,
                         "tflops_per_gpu": 120.0, "mfu": 0.4, "mem_gb": 30.5})
        with open(runs[0] / schema.METRICS_FILE, "ab") as f:
            f.write(b"{not json}\n" + b'{"time": 1, "step": 3101, "lo')  # a bad line and a torn last line
        p.wait_until("Number(document.querySelector('canvas[data-chart=loss]').dataset.lastStep) === 3100 && "
                          "document.querySelector('#chart-loss .spike[data-step=\"3050\"]') !== null")
        assert "step 3,100" in p.page.locator('.run[data-run="0"] .last-step').inner_text()
        p.wait_until("document.querySelector('.run[data-run=\"0\"] .bad-lines') !== null")
        assert "1 bad line(s)" in p.page.locator('.run[data-run="0"] .bad-lines').inner_text()
        screenshot(p.page, tmp_path, "dashboard-live.png")
        assert p.errors == []
    finally:
        p.close()


def test_report_opens_offline(chromium, runs, tmp_path):
    out = tmp_path / "report.html"
    subprocess.run([sys.executable, "-m", "megatron_glm.monitor.cli", "report", *map(str, runs), "-o", str(out)],
                   check=True, capture_output=True, timeout=120)
    p = Page(chromium)
    try:
        p.page.goto(out.as_uri())
        p.wait_until("document.body.dataset.ready === '1'")
        p.wait_until("Number(document.querySelector('canvas[data-chart=loss]').dataset.points) > 0")
        assert p.page.locator('#chart-loss .spike[data-run="0"][data-step="1500"]').count() == 1
        assert p.page.eval_on_selector("canvas[data-chart=val]", "c => c.dataset.points") == "4"  # step 0 too
        assert EVIL_NAME in p.page.locator('.run[data-run="1"] .name').inner_text()
        assert p.page.eval_on_selector("canvas[data-chart=loss]", BLUE_PIXELS) > 300
        assert p.errors == [] and p.dialogs == []
        assert {urlsplit(u).scheme for u in p.requests} <= {"file", "data"}, p.requests
        screenshot(p.page, tmp_path, "report.png")
    finally:
        p.close()


def test_million_step_run_shows_every_spike(chromium, tmp_path, tmp_path_factory):
    spikes = list(MILLION_SPIKES)
    store = RunStore(million_step_run(tmp_path_factory.getbasetemp()))  # shared with test_monitor_server
    store.load(background=True)
    server, thread = start_in_thread([store])
    p = Page(chromium)
    try:
        p.page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
        p.wait_until("Number(document.querySelector('canvas[data-chart=loss]').dataset.points) > 0 && "
                     "document.querySelectorAll('#chart-loss .spike').length > 0", timeout_s=20)
        steps = sorted(int(s) for s in p.page.eval_on_selector_all(
            "#chart-loss .spike", "els => els.map(e => e.dataset.step)"))
        assert steps == spikes
        assert p.errors == []
        screenshot(p.page, tmp_path, "dashboard-1m.png")
    finally:
        p.close()
        server.shutdown()
        server.server_close()
        thread.join(10)
