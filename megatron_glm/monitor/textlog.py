"""Megatron-LM-style text logs -> metrics records in our schema, so ``glm-monitor`` can watch runs of
other trainers (Megatron-LM, Megatron-DeepSpeed, GLM-130B's LargeScale all print this line shape)::

    [2024-05-06 12:00:00] iteration      100/  500000 | consumed samples: 51200 | elapsed time per
    iteration (ms): 1234.5 | learning rate: 1.000000E-04 | global batch size: 512 | lm loss:
    2.345678E+00 | loss scale: 65536.0 | grad norm: 1.234 | number of skipped iterations: 0 | ...
    validation loss at iteration 1000 | lm loss value: 2.301E+00 | lm loss PPL: 9.98E+00 |

Why a parser per line and not a generic ``key: value`` split: the names differ between versions
("params norm" / "param norm", "throughput per GPU (TFLOP/s/GPU)" / "TFLOPs"), the skipped/NaN
counts are per logging interval (our schema keeps them cumulative) and validation comes on its own
line, which must land on the training record of the same iteration.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone

_ITER = re.compile(r"\biteration\s+(\d+)\s*/\s*(\d+)\s*\|")
_VALID = re.compile(r"validation loss at iteration\s+(\d+)\s*\|\s*lm loss value:\s*([-+.\w]+)")
_STAMP = re.compile(r"\[(\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d)\]")
_FIELD = re.compile(r"\|\s*([^|:]+?)\s*:\s*([-+.\w]+)")
# Megatron-LM field name -> (our key, scale)
FIELDS = {
    "consumed samples": ("consumed_samples", 1.0),
    "consumed tokens": ("tokens", 1.0),
    "elapsed time per iteration (ms)": ("step_time_s", 1e-3),
    "throughput per GPU (TFLOP/s/GPU)": ("tflops_per_gpu", 1.0),
    "TFLOPs": ("tflops_per_gpu", 1.0),
    "learning rate": ("lr", 1.0),
    "global batch size": ("batch_size", 1.0),
    "lm loss": ("loss", 1.0),
    "loss scale": ("loss_scale", 1.0),
    "grad norm": ("grad_norm", 1.0),
    "params norm": ("param_norm", 1.0),
    "param norm": ("param_norm", 1.0),
    "tokens per second": ("tokens_per_s", 1.0),
}
_COUNTS = {"number of skipped iterations": "skipped", "number of nan iterations": "nan"}


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


class TextLogParser:
    """Turns complete text lines into metrics records; keeps the cumulative counters and the planned
    number of iterations (``train_iters``) across calls so a growing log can be fed piece by piece."""

    def __init__(self) -> None:
        self.train_iters: int | None = None
        self._totals = {"skipped": 0, "nan": 0}
        self.last_time: float = math.nan

    def parse(self, line: str) -> tuple[str, dict] | None:
        """("metric", record) for an iteration line, ("val", {step, val_loss}) for a validation line,
        None for anything else (startup chatter, warnings: text logs are mostly not metrics)."""
        stamp = _STAMP.search(line)
        if stamp:
            when = datetime.fromisoformat(stamp.group(1).replace(" ", "T")).replace(tzinfo=timezone.utc)
            self.last_time = when.timestamp()
        m = _VALID.search(line)
        if m:
            return "val", {"step": int(m.group(1)), "val_loss": _float(m.group(2))}
        m = _ITER.search(line)
        if not m:
            return None
        self.train_iters = int(m.group(2))
        rec: dict = {"step": int(m.group(1)), "time": self.last_time}
        for name, value in _FIELD.findall(line[m.end() - 1:]):
            if name in FIELDS:
                key, scale = FIELDS[name]
                rec[key] = _float(value) * scale
            elif name in _COUNTS:
                key = _COUNTS[name]
                self._totals[key] += int(_float(value)) if math.isfinite(_float(value)) else 0
        rec.update(self._totals)
        if "loss" not in rec:
            return None
        return "metric", rec
