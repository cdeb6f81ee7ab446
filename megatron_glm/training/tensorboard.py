"""TensorBoard scalars of the metrics stream (RUN_DIR/tb/), since every team already looks there.

metrics.jsonl stays the source of truth (the dashboard reads it); this mirrors each numeric field of
a metrics line as a scalar at its step, under the same name (`loss`, `loss/pile`, `val_loss`, ...),
and the events as text, so TensorBoard and glm-monitor show the same numbers.
"""

from __future__ import annotations

import math
from pathlib import Path


class TensorBoardScalars:
    def __init__(self, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # torch's writer needs the `tensorboard` package
            raise RuntimeError("TensorBoard logging needs the `tensorboard` package: pip install tensorboard, "
                               "or set train.tensorboard=false") from exc
        self._writer = SummaryWriter(log_dir=str(Path(run_dir) / "tb"))

    def metrics(self, line: dict) -> None:
        step = int(line["step"])
        for key, value in line.items():
            if key in ("step", "time") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                self._writer.add_scalar(key, value, step)

    def event(self, record: dict) -> None:
        self._writer.add_text(f"events/{record['kind']}", record.get("message", ""), int(record.get("step", 0)))

    def close(self) -> None:
        self._writer.close()
