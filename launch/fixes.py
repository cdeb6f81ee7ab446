"""What would make a layout fit: the fewest changes to a run's settings, as config overrides.

`plan` and `submit` both print these under a "does not fit" verdict, so a refusal never leaves the
user guessing which knob to turn. Candidates are one change at a time (then two together when no
single change is enough): half-precision gradient buffers, more activation recompute, a smaller
micro-batch, a larger tensor or pipeline size. Each is sized by the same planner as the original
layout, and the ones that fit are listed fewest changes first, then fastest predicted first.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterator, List

from launch.clusters import ClusterProfile
from launch.memory_model import Layout
from launch.planner import RECOMPUTE_ORDER, Plan, layout_problems, make_plan, valid_pp, valid_tp
from megatron_glm.config.schema import RunConfig
from megatron_glm.config.validate import uneven_pipeline_split


@dataclass
class Fix:
    overrides: List[str]
    """dotted.key=value settings of the run config (also accepted by `glm-launch plan`)."""
    plan: Plan

    def describe(self) -> str:
        t = self.plan.throughput
        return (f"{' '.join(self.overrides)}  ->  peak {self.plan.peak.total_gb:.1f} GB, "
                f"{t.tokens_per_s:,.0f} tokens/s predicted")


def layout_overrides(run: RunConfig, old: Layout, new: Layout) -> List[str]:
    """The run-config settings that turn layout `old` into `new`."""
    changes = []
    if new.tp != old.tp:
        changes.append(f"parallel.tensor={new.tp}")
    if new.pp != old.pp:
        changes.append(f"parallel.pipeline={new.pp}")
    if (new.first_stage_layers, new.last_stage_layers) != (old.first_stage_layers, old.last_stage_layers):
        changes += [f"parallel.first_stage_layers={_yaml(new.first_stage_layers)}",
                    f"parallel.last_stage_layers={_yaml(new.last_stage_layers)}"]
    if new.dp != old.dp and run.parallel.data is not None:
        changes.append(f"parallel.data={new.dp}")
    if new.mbs != old.mbs:
        changes.append(f"train.micro_batch_size={new.mbs}")
    if new.recompute != old.recompute:
        changes.append(f"recompute.granularity={new.recompute}")
    if new.grad_dtype != old.grad_dtype:
        changes.append(f"train.grad_reduce_in_fp32={'true' if new.grad_dtype == 'fp32' else 'false'}")
    return changes


def _yaml(value) -> str:
    return "null" if value is None else str(value)


def _one_change(run: RunConfig, layout: Layout, cluster: ClusterProfile) -> Iterator[Layout]:
    """Layouts one setting away from `layout`, each a step towards less memory per GPU."""
    world = cluster.world_size
    if layout.grad_dtype == "fp32" and layout.precision != "fp32":
        yield dataclasses.replace(layout, grad_dtype=layout.precision)
    for recompute in RECOMPUTE_ORDER[RECOMPUTE_ORDER.index(layout.recompute) + 1:]:
        yield dataclasses.replace(layout, recompute=recompute)
    mbs = layout.mbs // 2
    while mbs >= 1:
        yield dataclasses.replace(layout, mbs=mbs)
        mbs //= 2
    for tp in valid_tp(run, cluster):
        if tp > layout.tp and world % (tp * layout.pp) == 0:
            yield dataclasses.replace(layout, tp=tp, dp=world // (tp * layout.pp))
    if layout.vpp == 1:
        for pp in valid_pp(run, cluster, layout.tp):
            if pp > layout.pp:
                first, last = uneven_pipeline_split(run.model.num_layers, pp)
                yield dataclasses.replace(layout, pp=pp, dp=world // (layout.tp * pp),
                                          first_stage_layers=first, last_stage_layers=last)


def fixes(run: RunConfig, layout: Layout, cluster: ClusterProfile, limit: int = 3) -> List[Fix]:
    """Up to `limit` changes that make `layout` fit, fewest settings changed first."""
    def fitting(candidates) -> List[Fix]:
        found, seen = [], set()
        for candidate in candidates:
            if candidate in seen or layout_problems(run, candidate, cluster):
                continue
            seen.add(candidate)
            plan = make_plan(run, candidate, cluster)
            if plan.fits:
                found.append(Fix(layout_overrides(run, layout, candidate), plan))
        return sorted(found, key=lambda fix: -fix.plan.throughput.tokens_per_s)

    singles = list(_one_change(run, layout, cluster))
    found = fitting(singles)
    if not found:
        found = fitting(pair for single in singles for pair in _one_change(run, single, cluster))
    return found[:limit]
