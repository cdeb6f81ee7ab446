"""Per-view downsampling: what the browser receives for one chart is bounded by its pixel width, not by
the length of the run.

Why min/max/mean per bucket (and not LTTB or striding): a loss spike is a one-step maximum; striding
drops it and LTTB keeps it only if it wins the triangle test. Per bucket of consecutive rows we send
the minimum, the maximum (so the envelope drawn at pixel resolution looks exactly like the raw curve
and every extreme stays visible) and the mean with its count (for smoothing on the client). Spikes
and skipped-step markers are discrete: they are bucketed separately by step and a bucket keeps its
most severe member plus how many it stands for, so no spike ever disappears from the picture.
"""

from __future__ import annotations

import numpy as np

MIN_WIDTH, MAX_WIDTH = 16, 4096


def clamp_width(width: int) -> int:
    return int(min(max(width, MIN_WIDTH), MAX_WIDTH))


def envelope(x: np.ndarray, y: np.ndarray, width: int) -> dict:
    """Rows x/y of one view -> {"x", "y"} when they fit in 2*width points, else per-bucket
    {"x" (first step of the bucket), "lo", "hi", "mean", "count"} over ``width`` buckets.
    Non-finite values are left out of lo/hi/mean (the spike markers show them)."""
    width = clamp_width(width)
    y = np.where(np.isfinite(y), y, np.nan)
    if len(y) <= 2 * width:
        return {"x": x, "y": y}
    edges = (np.arange(width, dtype=np.int64) * len(y)) // width
    finite = ~np.isnan(y)
    count = np.add.reduceat(finite.astype(np.int64), edges)
    total = np.add.reduceat(np.where(finite, y, 0.0), edges)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
    return {"x": x[edges], "lo": np.fmin.reduceat(y, edges), "hi": np.fmax.reduceat(y, edges),
            "mean": mean, "count": count}


def insert_points(view: dict, points: list[tuple[float, float]]) -> dict:
    """``view`` (an ``envelope`` result) with single (x, y) points inserted in x order: values that
    are not rows of the metrics file (the step-0 validation loss of a start event). In a bucketed
    view each point is a bucket of its own (lo = hi = mean = y, count 1)."""
    points = sorted(points)
    xs = np.array([p[0] for p in points], dtype=np.float64)
    ys = np.array([p[1] for p in points], dtype=np.float64)
    at = np.searchsorted(view["x"], xs)
    out = {"x": np.insert(np.asarray(view["x"], dtype=np.float64), at, xs)}
    if "y" in view:
        out["y"] = np.insert(view["y"], at, ys)
        return out
    for k in ("lo", "hi", "mean"):
        out[k] = np.insert(view[k], at, ys)
    out["count"] = np.insert(view["count"], at, 1)
    return out


def bucket_points(items: list[dict], lo: float, hi: float, width: int, severity) -> list[dict]:
    """Discrete markers (dicts with "step") within [lo, hi]; if there are more than ``width``, keep
    the most severe per step bucket, with "count" = how many markers that bucket holds."""
    inside = [it for it in items if lo <= it["step"] <= hi]
    width = clamp_width(width)
    if len(inside) <= width:
        return [{**it, "count": 1} for it in inside]
    span = max(hi - lo, 1)
    best: dict[int, dict] = {}
    for it in inside:
        b = min(int((it["step"] - lo) * width / span), width - 1)
        cur = best.get(b)
        if cur is None:
            best[b] = {**it, "count": 1}
        else:
            n = cur["count"] + 1
            best[b] = {**(it if severity(it) > severity(cur) else cur), "count": n}
    return [best[b] for b in sorted(best)]
