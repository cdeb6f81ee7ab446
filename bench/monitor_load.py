"""glm-monitor on a 1,000,000-step run, side by side in one process (not part of the test suite).

Prints: fixture size; the dashboard's phase-1 load (step/loss/grad norm columns + spike detector)
against parsing every line with json (the schema's read_metrics); the time to the first downsampled
loss view against serialising the raw series; payload sizes. Usage:

    python bench/monitor_load.py [--steps 1000000] [--width 1200] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

from megatron_glm.metrics import schema
from megatron_glm.monitor.run import RunStore
from megatron_glm.monitor.server import to_json
from megatron_glm.monitor.synthetic_runs import Curve, write_run


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

    store = RunStore(root)
    _, t_phase1 = timed(lambda: store.load(background=True))
    view, t_view = timed(lambda: to_json(store.series(["loss"], None, None, args.width)))
    while store.pending_keys:
        time.sleep(0.05)
    t_all = time.perf_counter()
    store2 = RunStore(root)
    store2.load(background=False)
    t_all = time.perf_counter() - t_all
    chunk, t_json = timed(lambda: schema.read_metrics(root))
    raw = {"x": np.arange(args.steps), "y": store.cols["loss"].values}
    raw_payload, t_raw = timed(lambda: to_json(raw))
    found = [s["step"] for s in json.loads(view)["spikes"]]

    print(f"phase-1 load (loss chart ready):     {t_phase1:6.2f} s")
    print(f"all columns (phase 1 + 2):           {t_all:6.2f} s")
    print(f"json.loads per line (read_metrics):  {t_json:6.2f} s   -> phase 1 is {t_json / t_phase1:.1f}x faster")
    print(f"first loss view, downsampled:        {t_view * 1000:6.0f} ms, {len(view) / 1e3:8.0f} kB")
    print(f"raw loss series as JSON:             {t_raw * 1000:6.0f} ms, {len(raw_payload) / 1e3:8.0f} kB "
          f"-> {len(raw_payload) / len(view):.0f}x larger")
    print(f"spikes injected {spikes}, in the view {found}")
    del chunk


if __name__ == "__main__":
    main()
