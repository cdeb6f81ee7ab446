"""glm-monitor on a 1,000,000-step run, side by side in one process (not part of the test suite).

Prints: fixture size; the time to the first downsampled loss view without the column cache (phase 1:
step/loss/grad norm columns + the spike detector), from the cache (every column), and from the cache
after 10,000 steps were appended; parsing every line with json (the schema's read_metrics) for
comparison; payload sizes. Usage:

    python bench/monitor_load.py [--steps 1000000] [--width 1200] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

import numpy as np

from megatron_glm.metrics import schema
from megatron_glm.monitor.run import RunStore
from megatron_glm.monitor.server import to_json
from megatron_glm.monitor.synthetic_runs import Curve, metric_lines, series, write_run


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--width", type=int, default=1200)
    ap.add_argument("--keep", help="write the fixture here instead of a temporary folder")
    args = ap.parse_args()
    root = args.keep or tempfile.mkdtemp(prefix="glm-monitor-bench-")
    spikes = [args.steps // 7, args.steps // 2 + 1, args.steps - 10]
    _, t_gen = timed(lambda: write_run(root, Curve(args.steps, tau=args.steps / 5), spikes=spikes))
    size = os.path.getsize(os.path.join(root, schema.METRICS_FILE))
    print(f"fixture: {args.steps:,} steps, {size / 1e6:.0f} MB, written in {t_gen:.2f} s")

    def first_view(store):
        store.load(background=True)
        return to_json(store.series(["loss"], None, None, args.width))

    cache = os.path.join(root, "cache")
    shutil.rmtree(cache, ignore_errors=True)
    store = RunStore(root)
    view, t_cold = timed(lambda: first_view(store))
    t0 = time.perf_counter()
    while store.pending_keys or not os.path.exists(os.path.join(cache, "metrics", "index.json")):
        time.sleep(0.01)
    t_cold_all = t_cold + time.perf_counter() - t0
    warm = RunStore(root)
    warm_view, t_warm = timed(lambda: first_view(warm))
    assert warm.from_cache and not warm.pending_keys and warm_view == view
    t, loss, grad = series(Curve(args.steps + 10_000, tau=args.steps / 5))
    with open(os.path.join(root, schema.METRICS_FILE), "ab") as f:
        f.write(metric_lines(t[args.steps:], loss[args.steps:], grad[args.steps:]))
    tail = RunStore(root)
    _, t_tail = timed(lambda: first_view(tail))
    assert tail.from_cache and tail.n == args.steps + 10_000
    chunk, t_json = timed(lambda: schema.read_metrics(root))
    raw = {"x": np.arange(args.steps), "y": store.cols["loss"].values}
    raw_payload, t_raw = timed(lambda: to_json(raw))
    found = [s["step"] for s in json.loads(view)["spikes"]]

    print(f"first loss view, no cache (phase 1):  {t_cold:6.2f} s   (all columns and the cache written: {t_cold_all:.2f} s)")
    print(f"first loss view from the cache:       {t_warm:6.2f} s   (every column; {t_cold / t_warm:.0f}x faster)")
    print(f"  ... with 10,000 steps appended:     {t_tail:6.2f} s")
    print(f"json.loads per line (read_metrics):   {t_json:6.2f} s")
    print(f"first loss view payload:              {len(view) / 1e3:6.0f} kB; the raw loss series as JSON "
          f"{len(raw_payload) / 1e3:.0f} kB ({t_raw * 1000:.0f} ms)")
    print(f"spikes injected {spikes}, in the view {found}")
    del chunk


if __name__ == "__main__":
    main()
