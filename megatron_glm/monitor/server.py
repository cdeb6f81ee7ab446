"""The dashboard's HTTP server: standard library only (ThreadingHTTPServer), read-only, GET only.

What it serves, and nothing else:

* ``/`` and ``/static/<name>`` -- the page and its assets, from a fixed list read from the package at
  start-up (no path is ever joined with a request string, so there is nothing to traverse);
* ``/api/runs`` -- every run's header (and the trigger to tail its files);
* ``/api/series?run=I&keys=a,b&from=S&to=S&width=PX[&markers=1]`` -- one chart's downsampled view
  (markers: the steps where the skipped/NaN counters rose);
* ``/api/events?run=I`` -- the run's events.

Runs are addressed by their index on the command line, never by a path. Any other method gets 405,
any other path 404. Bound to 127.0.0.1 by default; when bound to loopback, requests whose Host
header is not a loopback name are refused (a web page elsewhere cannot reach the dashboard through
DNS rebinding). Responses carry a Content-Security-Policy that allows only this origin.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, urlsplit

import numpy as np

from megatron_glm.monitor.run import Activity, RunStore

log = logging.getLogger("glm-monitor")

STATIC_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
                "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
                "/static/style.css": ("style.css", "text/css; charset=utf-8")}
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def static_asset(name: str) -> bytes:
    """One file of the package's static/ folder (shipped as package data)."""
    return resources.files("megatron_glm.monitor").joinpath("static", name).read_bytes()


def to_json(obj) -> bytes:
    """Strict JSON: arrays' NaN/inf become null (gaps in a line), scalar non-finite floats become the
    schema's "nan"/"inf"/"-inf" strings (a NaN loss must stay visible in a spike's details)."""
    def conv(o):
        if isinstance(o, np.ndarray):
            a = o.astype(np.float64)
            return [None if not math.isfinite(v) else (int(v) if v.is_integer() and abs(v) < 2**53 else float(f"{v:.7g}"))
                    for v in a.tolist()]
        if isinstance(o, float) and not math.isfinite(o):
            return "nan" if o != o else ("inf" if o > 0 else "-inf")
        if isinstance(o, (np.floating, np.integer)):
            return conv(o.item())
        if isinstance(o, dict):
            return {str(k): conv(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [conv(v) for v in o]
        return o
    return json.dumps(conv(obj), separators=(",", ":"), allow_nan=False).encode()


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, stores: list[RunStore]):
        self.stores = stores
        self.activity = Activity()
        for store in stores:  # background loading steps aside while requests are answered
            store.activity = self.activity
        self.assets = {path: (static_asset(name), ctype) for path, (name, ctype) in STATIC_FILES.items()}
        super().__init__(address, DashboardHandler)
        self.loopback_only = address[0] in LOOPBACK_NAMES


class BadRequest(ValueError):
    pass


class DashboardHandler(BaseHTTPRequestHandler):
    server: DashboardServer
    server_version = "glm-monitor"
    sys_version = ""

    def log_message(self, fmt, *args):  # quiet by default; --verbose shows requests
        log.info("%s %s", self.address_string(), fmt % args)

    def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self.send_response(status)
        headers = {"Content-Type": ctype, "Content-Length": str(len(body)), "Cache-Control": "no-store",
                   "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                   "Content-Security-Policy": CSP, **(extra or {})}
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, message: str, extra: dict | None = None) -> None:
        self._send(status, to_json({"error": message}), "application/json", extra)

    def _refuse_method(self) -> None:
        self._error(405, f"{self.command} is not allowed: this dashboard is read-only (GET only)", {"Allow": "GET"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_TRACE = do_CONNECT = _refuse_method

    def do_GET(self) -> None:
        self.server.activity.begin()
        try:
            self._get()
        finally:
            self.server.activity.end()

    def _get(self) -> None:
        if self.server.loopback_only:
            host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]")
            if host not in LOOPBACK_NAMES:
                self._error(403, f"Host {host!r} refused: the dashboard answers loopback names only")
                return
        url = urlsplit(self.path)
        try:
            if url.path in self.server.assets:
                body, ctype = self.server.assets[url.path]
                self._send(200, body, ctype)
            elif url.path == "/api/runs":
                self._send(200, to_json(self._runs()), "application/json")
            elif url.path == "/api/series":
                self._send(200, to_json(self._series(parse_qs(url.query))), "application/json")
            elif url.path == "/api/events":
                q = parse_qs(url.query)
                self._send(200, to_json({"events": self._store(q).event_list()}), "application/json")
            else:
                self._error(404, "not found")
        except BadRequest as e:
            self._error(400, str(e))
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _runs(self) -> dict:
        out = []
        for i, store in enumerate(self.server.stores):
            store.refresh()
            out.append({"id": i, **store.summary()})
        return {"server_time": time.time(), "runs": out}

    def _store(self, q: dict) -> RunStore:
        raw = q.get("run", [""])[0]
        if not raw.isdigit() or int(raw) >= len(self.server.stores):
            raise BadRequest(f"run={raw!r}: expected an index 0..{len(self.server.stores) - 1}")
        return self.server.stores[int(raw)]

    def _series(self, q: dict) -> dict:
        store = self._store(q)
        keys = [k for k in q.get("keys", [""])[0].split(",") if k]
        if not keys:
            raise BadRequest("keys: give at least one metric name, e.g. keys=loss")

        def number(name, default):
            raw = q.get(name, [""])[0]
            if raw == "":
                return default
            try:
                v = float(raw)
            except ValueError:
                raise BadRequest(f"{name}={raw!r}: expected a number") from None
            if not math.isfinite(v):
                raise BadRequest(f"{name}={raw!r}: expected a finite number")
            return v
        store.refresh()
        width = int(number("width", 1000))
        markers = q.get("markers", ["0"])[0] == "1"
        return {"run": int(q["run"][0]), **store.series(keys, number("from", None), number("to", None), width, markers)}


def start_in_thread(stores: list[RunStore], host: str = "127.0.0.1", port: int = 0):
    """Serve from a daemon thread (tests, notebooks). Returns (server, thread); stop with
    ``server.shutdown(); server.server_close()``. ``server.server_address[1]`` is the port."""
    server = DashboardServer((host, port), stores)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
                              name="glm-monitor-http")
    thread.start()
    return server, thread
