"""Print a run's progress from its metrics and events: `python -m megatron_glm.training.summary RUN_DIR`.

Used by the README main job to show that the loss fell, that the run resumed and its last downstream
scores (train.eval_tasks); the dashboard (glm-monitor) is the full view.
"""

from __future__ import annotations

import json
import sys

from megatron_glm.metrics.schema import read_events, read_metrics


def summarize(run_dir: str) -> dict:
    records, _ = read_metrics(run_dir)
    events, _ = read_events(run_dir)
    validation = [r for r in records if r.get("val_loss") is not None]
    downstream = [r for r in records if any(k.startswith("eval/") for k in r)]
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
        # the last downstream evaluation (train.eval_tasks): {"step": N, "<task>/<metric>": value, ...}
        "downstream_eval": ({"step": downstream[-1]["step"],
                             **{k[5:]: round(v, 4) for k, v in downstream[-1].items()
                                if k.startswith("eval/") and isinstance(v, (int, float))}}
                            if downstream else None),
    }


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python -m megatron_glm.training.summary RUN_DIR", file=sys.stderr)
        return 2
    print(json.dumps(summarize(sys.argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
