"""Synthetic runs with known spikes: fixture run directories for the dashboard's tests and benchmarks,
and pretraining-like series for measuring the spike detector's recall and false-alarm rate.

Why it lives in the package: the tests, ``bench/monitor_*.py`` and anyone trying the dashboard
without a GPU need the same generator, and it must write exactly what the trainer writes. Small runs
go through the schema's writers record by record; big ones (1,000,000 steps) are formatted in bulk,
and their first lines are checked to be byte-identical to what ``MetricsWriter`` would write, so the
fast path cannot drift from the schema.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import yaml

from megatron_glm.metrics import schema

_FMT = ('{"time":%r,"step":%d,"consumed_samples":%d,"tokens":%d,"loss":%s,"grad_norm":%s,"param_norm":%r,'
        '"loss_scale":%r,"skipped":%d,"nan":%d,"lr":%r,"batch_size":%d,"step_time_s":%r,"tokens_per_s":%r,'
        '"tflops_per_gpu":%r,"mfu":%r,"mem_gb":%r}\n')


@dataclass
class Curve:
    """A pretraining-like run: ``loss = floor + amp * exp(-t / tau) + N(0, noise)``, log-normal grad
    norms with occasional 2-3x wiggles, optional injected spikes (loss x ``loss_factor``, grad norm
    x ``grad_factor`` for ``length`` steps each)."""

    steps: int
    seed: int = 0
    floor: float = 2.0
    amp: float = 8.0
    tau: float = 3000.0
    noise: float = 0.03
    grad_sigma: float = 0.3
    grad_trend: float = 0.0
    """log of how much the grad norm's level changes over the run (e.g. -2.3: falls ~10x)."""


def early_fall(steps: int = 2000, seed: int = 0, noise: float = 0.03) -> Curve:
    """A loss that falls steadily early on: 5.0 at step 1, 3.1 at step 150, then flattening towards
    3.0. Right after such a fall the EWM mean lags the curve by ~0.3-0.6, and a variance measured
    around that mean is mostly the lag: the case where the detector once missed a +48 % jump at
    step 150 (``series(early_fall(), spikes=[150], loss_factor=1.48, grad_factor=1.0)``)."""
    tau = 149.0 / math.log(20.0)  # 2.0 above the floor at step 1, 0.1 above it at step 150
    return Curve(steps, seed=seed, floor=3.0, amp=2.0 * math.exp(1.0 / tau), tau=tau, noise=noise)


def series(curve: Curve, spikes=(), loss_factor: float = 1.5, grad_factor: float = 30.0, length: int = 1):
    """(steps 1..N, loss, grad_norm) as float64 arrays with spikes injected at the given steps."""
    rng = np.random.default_rng(curve.seed)
    t = np.arange(1, curve.steps + 1)
    loss = curve.floor + curve.amp * np.exp(-t / curve.tau) + rng.normal(0.0, curve.noise, curve.steps)
    grad = np.exp(rng.normal(0.0, curve.grad_sigma, curve.steps) + curve.grad_trend * t / curve.steps)
    wiggle = rng.random(curve.steps) < 0.01
    grad[wiggle] *= rng.uniform(2.0, 3.0, int(wiggle.sum()))
    for s in spikes:
        i = int(s) - 1
        loss[i:i + length] *= loss_factor
        grad[i:i + length] *= grad_factor
    return t, loss, grad


def write_config(run_dir, steps: int, name: str = "glm-tiny", **train) -> None:
    """A config.yaml with the fields the dashboard's header reads (model, layout, planned steps)."""
    cfg = {"model": {"name": name, "num_layers": 8, "hidden_size": 64, "num_attention_heads": 4, "seq_length": 256},
           "parallel": {"tensor": 2, "pipeline": 2},
           "train": {"steps": steps, "global_batch_size": 8, **train}, "precision": "fp16"}
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "config.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)


def metric_lines(t, loss, grad, t0: float | None = None, step_time: float = 2.0, batch: int = 8,
                 seq: int = 256) -> bytes:
    """Metrics lines for rows (step, loss, grad_norm), formatted in bulk like MetricsWriter writes;
    ``t0`` defaults to "the last step was logged just now"."""
    t0 = time.time() - step_time * (int(t[-1]) if len(t) else 0) if t0 is None else t0
    def num(v: float) -> str:
        return repr(v) if np.isfinite(v) else json.dumps(schema._encode(v))
    rows = zip(t.tolist(), loss.tolist(), grad.tolist())
    text = "".join([_FMT % (t0 + s * step_time, s, s * batch, s * batch * seq, num(x), num(g), 300.0 + s * 1e-4,
                            65536.0, 0, 0, 1e-4, batch, step_time, batch * seq / step_time, 120.0, 0.4, 30.5)
                    for s, x, g in rows])
    head = text[: text.find("\n") + 1]
    if head:
        rec = schema.decode_record(json.loads(head))
        want = schema.encode_line(schema.validate_metric(rec)).decode()
        if want != head:
            raise AssertionError(f"bulk metrics format drifted from the schema writer:\n{head}{want}")
    return text.encode()


def write_run(run_dir, curve: Curve, spikes=(), events: bool = True, **spike_kw) -> dict:
    """A complete fixture run directory; returns {"steps", "loss", "grad_norm"} as written."""
    t, loss, grad = series(curve, spikes, **spike_kw)
    write_config(run_dir, curve.steps)
    with open(os.path.join(run_dir, schema.METRICS_FILE), "wb") as f:
        f.write(metric_lines(t, loss, grad))
    if events:
        t0 = time.time() - 2.0 * curve.steps
        with schema.EventsWriter(run_dir) as ev:
            ev.write({"time": t0, "step": 0, "kind": "start", "message": "training", "world_size": 4,
                      "layout": {"tp": 2, "pp": 2, "dp": 1, "vpp": None}})
            for s in spikes:
                i = int(s) - 1
                ev.write({"time": t0 + 2.0 * s, "step": int(s), "kind": "spike", "message": f"loss spike at {s}",
                          "loss": float(loss[i]), "grad_norm": float(grad[i]), "baseline_loss": float(loss[i - 1]),
                          "baseline_grad_norm": 1.0, "action": "skip"})
    return {"steps": t, "loss": loss, "grad_norm": grad}


MILLION_SPIKES = (1_234, 250_000, 500_001, 777_777, 999_990)


def million_step_run(folder) -> str:
    """The 1,000,000-step fixture run (spikes at MILLION_SPIKES) in ``folder``/million, written once:
    the tests of one session share it (~320 MB, a few seconds to write)."""
    run = os.path.join(os.fspath(folder), "million")
    done = os.path.join(run, ".complete")
    if not os.path.exists(done):
        write_run(run, Curve(1_000_000, seed=9, tau=2e5), spikes=MILLION_SPIKES)
        open(done, "w").close()
    return run
