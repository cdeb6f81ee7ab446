"""Metrics and their aggregation, as GLM-130B's evaluation/metrics.py and tasks.py compute them.

Per file: Accuracy = 100 * mean(prediction == label); EM / F1 = SQuAD-style (lower-case, no
punctuation, no a/an/the, single spaces), max over the targets, 100 * mean; LAMBADA's Accuracy =
the stripped decoded texts are equal (no normalisation); PPL = exp(min(20, total loss / words));
BPB per domain = total loss / UTF-8 bytes / ln 2. Per group of files: max, median and the average
weighted by each file's number of examples (an "Overall" group across all files for MMLU).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def f1_score(prediction: str, truth: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = Counter(pred) & Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def strict_match(prediction: str, truth: str) -> float:
    """LAMBADA: the stripped strings are equal (case and punctuation count)."""
    return float(prediction.strip() == truth.strip())


def max_over_truths(metric: Callable[[str, str], float], prediction: str, truths: Sequence[str]) -> float:
    return max((metric(prediction, t) for t in truths), default=0.0)


def qa_score(metric: Callable[[str, str], float], predictions: Sequence[str], truths: Sequence[Sequence[str]]) -> float:
    if not predictions:
        return 0.0
    return 100.0 * sum(max_over_truths(metric, p, t) for p, t in zip(predictions, truths)) / len(predictions)


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    if not predictions:
        return 0.0
    return 100.0 * sum(int(p == l) for p, l in zip(predictions, labels)) / len(predictions)


def perplexity(total_loss: float, words: int) -> float:
    return math.exp(min(20.0, total_loss / max(words, 1)))


def bits_per_byte(losses: Sequence[float], num_bytes: Sequence[Optional[int]], domains: Sequence[str]) -> Dict[str, float]:
    loss, size = Counter(), Counter()
    for value, count, domain in zip(losses, num_bytes, domains):
        if count is None:
            continue
        loss[domain] += value
        size[domain] += count
    return {d: loss[d] / size[d] / math.log(2) for d in sorted(size) if size[d] > 0}


def group_stats(values: Sequence[float], weights: Sequence[int]) -> Dict[str, float]:
    """max / median / average weighted by file size (GLM-130B calc_group_metrics)."""
    return {"max": float(np.max(values)), "median": float(np.median(values)),
            "average": float(np.average(values, weights=weights))}


def aggregate(files: List[Dict], overall: bool = False) -> Dict[str, Dict[str, Dict[str, float]]]:
    """{group: {metric: {max, median, average}}} from per-file {group, size, metrics: {name: number}}.

    Metrics that are not a single number (BPB per domain) are not aggregated."""
    groups: Dict[str, List[Dict]] = {}
    for entry in files:
        groups.setdefault(entry["group"], []).append(entry)
    if overall:
        groups["Overall"] = list(files)
    out: Dict[str, Dict[str, Dict[str, float]]] = {}
    for group, entries in groups.items():
        names = [n for n, v in entries[0]["metrics"].items() if isinstance(v, (int, float))]
        out[group] = {name: group_stats([e["metrics"][name] for e in entries], [e["size"] for e in entries])
                      for name in names}
    return out
