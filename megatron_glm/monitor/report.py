"""``glm-monitor report``: one self-contained HTML file with the dashboard's charts, for offline viewing
and e-mail attachments.

Why it reuses the live page: the same index.html, style.css and app.js are inlined, and the data the
server would answer is embedded as JSON (``<script id="glm-data" type="application/json">``, with
``<``, ``>`` and ``&`` escaped so no run name or event message can close the tag). app.js reads that
instead of calling the server, so the report and the dashboard cannot drift apart. A
Content-Security-Policy meta tag forbids every network request from the file.
"""

from __future__ import annotations

import os
import tempfile
import time

from megatron_glm.monitor.run import RunStore
from megatron_glm.monitor.server import static_asset, to_json

REPORT_WIDTH = 2000  # buckets per chart: enough for a full-screen chart at pixel resolution
_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; "
        "connect-src 'none'; base-uri 'none'; form-action 'none'")


def _embed_json(obj) -> str:
    return to_json(obj).decode().replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def report_data(stores: list[RunStore], width: int = REPORT_WIDTH) -> dict:
    """What the page needs, for every run: header, full-range series of every key, spikes, events."""
    runs, series, events = [], [], []
    now = time.time()
    for i, store in enumerate(stores):
        summary = {"id": i, **store.summary(now)}
        keys = summary["keys"]
        view = store.series(keys, None, None, width, markers=True)
        runs.append(summary)
        series.append({"keys": view["keys"], "spikes": view["spikes"], "markers": view["markers"], "range": view["range"]})
        events.append(store.event_list())
    return {"generated": now, "runs": runs, "series": series, "events": events}


def render_report(stores: list[RunStore]) -> str:
    html = static_asset("index.html").decode()
    css, js = static_asset("style.css").decode(), static_asset("app.js").decode()
    for text, tag in ((css, "</style"), (js, "</script")):
        if tag in text.lower():
            raise AssertionError(f"static asset contains {tag}: cannot be inlined")
    link = '<link rel="stylesheet" href="/static/style.css">'
    script = '<script src="/static/app.js"></script>'
    if link not in html or script not in html:
        raise AssertionError("index.html no longer has the asset tags the report replaces")
    html = html.replace('<meta charset="utf-8">',
                        f'<meta charset="utf-8">\n<meta http-equiv="Content-Security-Policy" content="{_CSP}">')
    html = html.replace(link, f"<style>\n{css}</style>")
    data = _embed_json(report_data(stores))
    return html.replace(script, f'<script id="glm-data" type="application/json">{data}</script>\n<script>\n{js}</script>')


def write_report(stores: list[RunStore], out_path: str) -> int:
    """Write atomically (temporary file, then rename): a failure leaves no partial report."""
    text = render_report(stores).encode()
    folder = os.path.dirname(os.path.abspath(out_path))
    fd, tmp = tempfile.mkstemp(prefix=".glm-report-", suffix=".html", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; a report is meant to be shared
        os.replace(tmp, out_path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return len(text)
