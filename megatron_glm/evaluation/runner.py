"""glm-eval's driver: task files -> examples -> per-file metrics -> group aggregates -> outputs.

`evaluate(task_paths, logits_fn, vocab, ...)` returns the results dict that `--output` writes; with
`predictions_path` it writes one JSON line per example in file order. Under several data-parallel
ranks every rank runs it with its own share of the examples; only rank 0 writes and prints.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from megatron_glm.evaluation import metrics as M
from megatron_glm.evaluation.config import TaskConfig, find_task_files, load_task_file, task_data_root
from megatron_glm.evaluation.errors import EvalError
from megatron_glm.evaluation.data import TaskFile, load_examples, task_files
from megatron_glm.evaluation.tasks import RUNNERS, Context, Gather, LogitsFn, work_items
from megatron_glm.evaluation.vocab import Vocab


def load_tasks(targets: Sequence[str]) -> List[TaskConfig]:
    configs: List[TaskConfig] = []
    for target in targets:
        configs.extend(load_task_file(path) for path in find_task_files(target))
    seen: Dict[str, TaskConfig] = {}
    for cfg in configs:
        if cfg.name in seen:
            raise EvalError(f"{cfg.source}: task name '{cfg.name}' is also the name of {seen[cfg.name].source}; "
                            f"results are keyed by name")
        seen[cfg.name] = cfg
    return configs


def _bpb_groups(files: List[Dict], records: Dict[str, List[Dict]], bytes_of: Dict[str, List]) -> Dict[str, Dict]:
    out: Dict[str, Dict] = {}
    for entry in files:
        totals = out.setdefault(entry["group"], {})
        for record, size in zip(records[entry["file"]], bytes_of[entry["file"]]):
            if size is None:
                continue
            loss_bytes = totals.setdefault(record["scores"]["domain"], [0.0, 0])
            loss_bytes[0] += record["scores"]["loss"]
            loss_bytes[1] += size
    return {g: {d: lb[0] / lb[1] / math.log(2) for d, lb in sorted(t.items())} for g, t in out.items()}


def evaluate(configs: Sequence[TaskConfig], logits_fn: LogitsFn, vocab: Vocab, *, data_path: Optional[str] = None,
             vocab_size: Optional[int] = None, rank: int = 0, world: int = 1, gather: Optional[Gather] = None,
             predictions_path: Optional[str] = None, progress: bool = True,
             settings: Optional[Dict] = None, model=None) -> Dict:
    """Evaluate every task; `model` (an InferenceModel) lets gen tasks decode with its KV cache."""
    # Read and check every task's data before the first forward pass: bad input fails fast.
    plan = []
    for cfg in configs:
        files = task_files(cfg, data_path)
        for file in files:
            load_examples(cfg, file, vocab, vocab_size)
        plan.append((cfg, files))
    total = sum(work_items(cfg, f) for cfg, files in plan for f in files)
    handle = None
    if predictions_path and rank == 0:
        try:
            Path(predictions_path).parent.mkdir(parents=True, exist_ok=True)
            handle = open(predictions_path, "w", encoding="utf-8")
        except OSError as error:
            raise EvalError(f"{predictions_path}: cannot write the predictions ({error.strerror})") from None
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="glm-eval", unit="ex", file=sys.stderr, dynamic_ncols=True)

    def advance(n: int) -> None:
        if bar is not None:
            bar.update(n * world)

    context = Context(logits_fn, vocab, rank, world, gather, advance, model=model)
    results: Dict = {"settings": settings or {}, "tasks": {}}
    try:
        for cfg, files in plan:
            if bar is not None:
                bar.set_description(cfg.name)
            started = time.time()
            per_file, records_of, bytes_of = [], {}, {}
            for file in files:
                metrics, records = RUNNERS[cfg.type](cfg, file, context)
                per_file.append({"file": file.name, "group": file.group, "size": len(file.examples),
                                 "metrics": metrics})
                records_of[file.name] = records
                bytes_of[file.name] = [e.get("bytes") for e in file.examples]
                if handle is not None:
                    for index, (example, record) in enumerate(zip(file.examples, records)):
                        line = {"task": cfg.name, "file": file.name, "index": index, "line": example["line"]}
                        if cfg.type == "mul":
                            line["label"] = record["label"]
                        elif cfg.type == "gen":
                            line["targets"] = record["targets"]
                            if "targets_text" in record:
                                line["targets_text"] = record["targets_text"]
                        line["prediction"] = record["prediction"]
                        line["scores"] = record["scores"]
                        handle.write(json.dumps(line, ensure_ascii=False) + "\n")
            groups = M.aggregate(per_file, overall=cfg.kind == "mmlu")
            if cfg.type == "lm" and "BPB" in cfg.metrics:
                for group, bpb in _bpb_groups(per_file, records_of, bytes_of).items():
                    groups.setdefault(group, {})["BPB"] = bpb
            results["tasks"][cfg.name] = {
                "config": {**cfg.as_dict(), "data_root": str(task_data_root(cfg, data_path))},
                "files": per_file, "groups": groups,
                "examples": sum(e["size"] for e in per_file),
                "seconds": round(time.time() - started, 3),
            }
    finally:
        if handle is not None:
            handle.close()
        if bar is not None:
            bar.close()
    return results


def format_table(results: Dict) -> str:
    """The human summary: per task, group and metric: average (size-weighted), median, max, files."""
    rows = [("task", "group", "metric", "average", "median", "max", "files", "examples")]
    for task, entry in results["tasks"].items():
        files = entry["files"]
        for group, metrics in entry["groups"].items():
            in_group = [f for f in files if f["group"] == group] if group != "Overall" else files
            for name, stats in metrics.items():
                if name == "BPB" and isinstance(stats, dict) and "average" not in stats:
                    for domain, value in stats.items():
                        rows.append((task, group, f"BPB {domain}", f"{value:.4f}", "", "", str(len(in_group)),
                                     str(sum(f["size"] for f in in_group))))
                    continue
                rows.append((task, group, name, f"{stats['average']:.3f}", f"{stats['median']:.3f}",
                             f"{stats['max']:.3f}", str(len(in_group)), str(sum(f["size"] for f in in_group))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i < 3 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def check_writable(path: Optional[str], what: str) -> None:
    """Fail before any work when an output cannot be written (its folder is created)."""
    if not path:
        return
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "a", encoding="utf-8"):
            pass
    except OSError as error:
        raise EvalError(f"{path}: cannot write the {what} ({error.strerror or error.__class__.__name__})") from None


def write_results(results: Dict, path: str) -> None:
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.replace(target)
    except OSError as error:
        raise EvalError(f"{path}: cannot write the results ({error.strerror or error.__class__.__name__})") from None
