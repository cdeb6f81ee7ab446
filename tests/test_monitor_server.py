"""The dashboard server over real HTTP: GET only, no path traversal, loopback Host names only, strict
JSON, and the 1,000,000-step run: first data response < 2 s, bounded payload, every injected spike."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys

import pytest

from megatron_glm.monitor.run import RunStore
from megatron_glm.monitor.server import start_in_thread
from megatron_glm.monitor.synthetic_runs import MILLION_SPIKES, Curve, million_step_run, write_run

BIG_SPIKES = list(MILLION_SPIKES)


class Served:
    """A DashboardServer on a free loopback port, in a thread; always shut down."""

    def __init__(self, stores):
        self.server, self.thread = start_in_thread(stores)
        self.port = self.server.server_address[1]

    def request(self, method, path, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, headers=headers or {})
            r = conn.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            conn.close()

    def get_json(self, path):
        status, _, body = self.request("GET", path)
        assert status == 200, body
        return json.loads(body, parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "small"
    write_run(run, Curve(3000, seed=5, tau=800.0), spikes=[1500])
    store = RunStore(run)
    store.load(background=False)
    served = Served([store])
    yield served
    served.close()


def test_page_and_assets_are_served_with_a_strict_policy(small):
    status, headers, body = small.request("GET", "/")
    assert status == 200 and b"/static/app.js" in body
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    for path in ("/static/app.js", "/static/style.css"):
        status, _, body = small.request("GET", path)
        assert status == 200 and len(body) > 1000
        assert b"http://" not in body and b"https://" not in body  # nothing fetched from elsewhere


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])
def test_only_get_is_served(small, method):
    status, headers, _ = small.request(method, "/api/runs")
    assert status == 405 and headers["Allow"] == "GET"


@pytest.mark.parametrize("path", [
    "/../../../../etc/passwd", "/static/../server.py", "/static/..%2f..%2fserver.py", "/static/%2e%2e/run.py",
    "/static/app.js/../../../etc/passwd", "//etc/passwd", "/etc/passwd", "/metrics.jsonl", "/small/metrics.jsonl",
    "/static/", "/static/index.html%00.js", "/api/../static/app.js", "/config.yaml"])
def test_no_file_outside_the_fixed_asset_list(small, path):
    status, _, body = small.request("GET", path)
    assert status == 404, (path, body[:200])
    assert b"root:" not in body and b"import" not in body


@pytest.mark.parametrize("query", ["run=../../etc/passwd&keys=loss", "run=1&keys=loss", "run=0&keys=",
                                   "run=0&keys=loss&width=abc", "run=0&keys=loss&from=nan", "run=-1&keys=loss"])
def test_bad_queries_are_400_with_a_reason(small, query):
    status, _, body = small.request("GET", "/api/series?" + query)
    assert status == 400 and json.loads(body)["error"]


def test_foreign_host_header_is_refused(small):
    status, _, _ = small.request("GET", "/api/runs", {"Host": "evil.example:80"})
    assert status == 403
    assert small.request("GET", "/api/runs", {"Host": f"localhost:{small.port}"})[0] == 200


def test_api_shapes(small):
    runs = small.get_json("/api/runs")["runs"]
    assert runs[0]["name"] == "small" and runs[0]["last_step"] == 3000 and runs[0]["spikes"] == 1
    assert runs[0]["layout"] == {"world_size": 4, "tp": 2, "pp": 2, "dp": 1, "vpp": None}
    view = small.get_json("/api/series?run=0&keys=loss,lr&width=400")
    assert set(view["keys"]) == {"loss", "lr"} and view["spikes"][0]["step"] == 1500
    assert view["spikes"][0]["action"] == "skip"
    events = small.get_json("/api/events?run=0")["events"]
    assert [e["kind"] for e in events] == ["start", "spike"]


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    return million_step_run(tmp_path_factory.getbasetemp())  # shared with the browser test


def test_million_steps_first_response_payload_and_spikes(big):
    """Bounded payloads with every spike (the timings: bench/monitor_load.py)."""
    store = RunStore(big)
    store.load(background=True)
    served = Served([store])
    try:
        status, _, body = served.request("GET", "/api/series?run=0&keys=loss&width=1200")
        view = json.loads(body)
        status_zoom, _, zoom = served.request("GET", "/api/series?run=0&keys=loss,grad_norm&width=1200"
                                                     "&from=499000&to=501000")
        served.get_json("/api/runs")
    finally:
        served.close()
    assert status == 200 and status_zoom == 200
    assert len(body) < 150_000 and len(zoom) < 150_000
    assert [s["step"] for s in view["spikes"]] == BIG_SPIKES
    assert len(view["keys"]["loss"]["x"]) == 1200
    assert [s["step"] for s in json.loads(zoom)["spikes"]] == [500_001]


def test_million_steps_through_the_cli(big):
    """From `glm-monitor serve` starting to the first loss view answered (load included)."""
    proc = subprocess.Popen([sys.executable, "-m", "megatron_glm.monitor.cli", "serve", str(big), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "serving 1 run(s) at http://127.0.0.1:" in line, line + proc.stderr.read()
        port = int(line.split("127.0.0.1:")[1].split("/")[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/api/series?run=0&keys=loss&width=1200")
        r = conn.getresponse()
        body = json.loads(r.read())
        conn.close()
    finally:
        proc.terminate()
        proc.wait(10)
    assert [s["step"] for s in body["spikes"]] == BIG_SPIKES
