"""Print a run's progress from its metrics and events: `python -m megatron_glm.training.summary RUN_DIR`.

Used by the README main job to show that the loss fell and that the run resumed; the dashboard
(glm-monitor) is the full view.
"""

from __future__ import annotations

import json
import sys

from megatron_glm.metrics.schema import read_events, read_metrics


def summarize(run_dir: str) -> dict:
    records, _ = read_metrics(run_dir)
    events, _ = read_events(run_dir)
    validation = [r for r in records if r.get("val_loss") is not None]
    start = next((e for e in events if e["kind"] == "start"), {})
    return {
        "step0_val_loss": start.get("val_loss"),
        "steps": records[-1]["step"] if records else 0,
        "first_loss": records[0]["loss"] if records else None,
        "last_loss": records[-1]["loss"] if records else None,
        "val_loss": [(r["step"], round(r["val_loss"], 4)) for r in validation],
        "restarts": sum(1 for e in events if e["kind"] == "restart"),
        "checkpoints_saved": sum(1 for e in events if e["kind"] == "checkpoint_saved"),
        "spikes": sum(1 for e in events if e["kind"] == "spike"),
    }


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python -m megatron_glm.training.summary RUN_DIR", file=sys.stderr)
        return 2
    print(json.dumps(summarize(sys.argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
