"""`glm-launch plan`: does a layout fit, how fast will it be; without a layout, which layouts fit.

Memory comes from launch/memory_model.py (per stage, by component), speed from launch/performance.py.
A layout fits when its fullest pipeline stage fits the device memory. The search enumerates
TP (divisors of the head count, within a node) x PP (layer splits megatron-core accepts, with
lighter first/last stages where the layers do not divide evenly, as GLM-130B's 8/9x6/8) x micro
batch x recompute, with DP = world / (TP x PP) dividing the global batch, and ranks the layouts
that fit by predicted tokens/s.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple, get_args

from launch.clusters import ClusterProfile
from launch.memory_model import Layout, StageMemory, memory_per_stage
from launch.performance import Throughput, describe_constants, predict
from megatron_glm.config.schema import RecomputeGranularity, RunConfig
from megatron_glm.config.validate import uneven_pipeline_split

RECOMPUTE_ORDER = get_args(RecomputeGranularity)
"""Least memory saved first."""


@dataclass
class Plan:
    layout: Layout
    stages: List[StageMemory]
    throughput: Throughput
    memory_limit_gb: float
    problems: List[str] = field(default_factory=list)
    """Why the layout is invalid or does not fit (empty: it fits)."""

    @property
    def fits(self) -> bool:
        return not self.problems

    @property
    def peak(self) -> StageMemory:
        return max(self.stages, key=lambda stage: stage.total_gb)

    def to_json(self) -> Dict[str, Any]:
        peak = self.peak
        t = self.throughput
        return {
            "fits": self.fits,
            "problems": self.problems,
            "layout": dataclasses.asdict(self.layout),
            "world_size": self.layout.world,
            "micro_batches": self.layout.micro_batches,
            "memory_limit_gb": self.memory_limit_gb,
            "peak_stage": peak.stage,
            "memory_gb": {**{k: round(v, 3) for k, v in peak.gb.items()}, "total": round(peak.total_gb, 3)},
            "memory_gb_per_stage": [{"stage": s.stage, "layers": s.layers, "params": s.params,
                                     "in_flight_micro_batches": s.in_flight,
                                     **{k: round(v, 3) for k, v in s.gb.items()}, "total": round(s.total_gb, 3)}
                                    for s in self.stages],
            "step_time_s": t.step_time_s,
            "tokens_per_s": t.tokens_per_s,
            "tflops_per_gpu_model": t.tflops_per_gpu_model,
            "tflops_per_gpu_hardware": t.tflops_per_gpu_hardware,
            "mfu": t.mfu,
            "hfu": t.hfu,
            "step_time_breakdown_s": t.breakdown_s,
            "constants": describe_constants(),
        }


def run_layout(run: RunConfig, cluster: ClusterProfile) -> Layout:
    """The layout a run config trains with on `cluster`: what `submit` checks and `plan` sizes."""
    par = run.parallel
    dp = par.data or max(1, cluster.world_size // (par.tensor * par.pipeline))
    return Layout(tp=par.tensor, pp=par.pipeline, dp=dp, vpp=par.virtual_pipeline or 1,
                  mbs=run.train.micro_batch_size, gbs=run.train.global_batch_size,
                  recompute=run.recompute.granularity, precision=run.precision,
                  grad_dtype="fp32" if run.train.grad_reduce_in_fp32 or run.precision == "fp32"
                  else run.precision,
                  first_stage_layers=par.first_stage_layers, last_stage_layers=par.last_stage_layers)


def valid_tp(run: RunConfig, cluster: ClusterProfile) -> List[int]:
    """Tensor-parallel sizes that divide the heads and stay inside one node."""
    return [tp for tp in _divisors(run.model.num_attention_heads)
            if cluster.gpus_per_node % tp == 0 and cluster.world_size % tp == 0]


def valid_pp(run: RunConfig, cluster: ClusterProfile, tp: int) -> List[int]:
    """Pipeline sizes that leave a whole data-parallel size and split the layers (evenly, or
    with lighter first/last stages)."""
    return [pp for pp in _divisors(cluster.world_size // tp) if cluster.world_size % tp == 0
            and pp <= run.model.num_layers and uneven_pipeline_split(run.model.num_layers, pp) is not None]


def valid_choices(run: RunConfig, layout: Layout, cluster: ClusterProfile) -> List[str]:
    """What the user can choose instead of an invalid layout, one line per setting."""
    tps = valid_tp(run, cluster)
    lines = [f"TP: {', '.join(map(str, tps))} (divide {run.model.num_attention_heads} heads and "
             f"{cluster.gpus_per_node} GPUs per node)"]
    tp = layout.tp if layout.tp in tps else max(tps)
    lines.append(f"PP with TP {tp}: {', '.join(map(str, valid_pp(run, cluster, tp)))} (TP x PP divides "
                 f"{cluster.world_size} GPUs; {run.model.num_layers} layers split over the stages)")
    if layout.world == cluster.world_size:
        unit = layout.mbs * layout.dp
        examples = sorted({max(unit, layout.gbs // unit * unit), (layout.gbs // unit + 1) * unit})
        lines.append(f"global batch with micro-batch {layout.mbs} x DP {layout.dp}: a multiple of {unit} "
                     f"(e.g. {' or '.join(map(str, examples))})")
    return lines


def layout_problems(run: RunConfig, layout: Layout, cluster: ClusterProfile) -> List[str]:
    m = run.model
    problems = []
    if layout.world != cluster.world_size:
        problems.append(f"TP {layout.tp} x PP {layout.pp} x DP {layout.dp} = {layout.world} ranks, but "
                        f"{cluster.name} has {cluster.world_size} ({cluster.nodes} nodes x {cluster.gpus_per_node})")
    if m.num_attention_heads % layout.tp:
        problems.append(f"{m.num_attention_heads} heads do not divide by TP {layout.tp}")
    if layout.tp > cluster.gpus_per_node or cluster.gpus_per_node % layout.tp:
        problems.append(f"TP {layout.tp} groups would span nodes ({cluster.gpus_per_node} GPUs per node): "
                        f"all-reduces over InfiniBand on every layer; choose a divisor of {cluster.gpus_per_node}")
    if 0 < layout.gbs < layout.mbs * layout.dp:
        problems.append(f"global batch {layout.gbs} < micro-batch {layout.mbs} x DP {layout.dp}: it leaves "
                        f"0 micro-batches per data-parallel rank")
    elif layout.gbs % (layout.mbs * layout.dp):
        problems.append(f"global batch {layout.gbs} is not a multiple of micro-batch {layout.mbs} x DP {layout.dp}")
    if layout.vpp > 1 and layout.pp == 1:
        problems.append("a virtual pipeline needs PP > 1")
    return problems


def make_plan(run: RunConfig, layout: Layout, cluster: ClusterProfile) -> Plan:
    problems = layout_problems(run, layout, cluster)
    gpu = cluster.device.kind == "gpu"
    try:
        stages = memory_per_stage(run, layout, gpu=gpu)
        throughput = predict(run, layout, cluster)
    except ValueError as error:  # the layers do not split over the stages
        return Plan(layout, [], Throughput(float("inf"), 0, 0, 0, 0, 0, {}), cluster.device.memory_gb,
                    problems + [str(error)])
    plan = Plan(layout, stages, throughput, cluster.device.memory_gb, problems)
    peak = plan.peak
    if peak.total_gb > cluster.device.memory_gb:
        parts = ", ".join(f"{k} {v:.1f}" for k, v in peak.gb.items())
        plan.problems.append(f"pipeline stage {peak.stage} needs {peak.total_gb:.1f} GB > {cluster.device.memory_gb:g} GB "
                             f"of {cluster.device.name} ({parts})")
        state = peak.gb["weights"] + peak.gb["gradients"] + peak.gb["optimizer"]
        if state > cluster.device.memory_gb:
            plan.problems.append(f"weights, gradients and optimizer state alone take {state:.1f} GB: split the model "
                                 f"over more GPUs (TP x PP is {layout.tp * layout.pp}; raise TP or PP)")
        elif layout.recompute != "full":
            plan.problems.append("activations dominate: try --recompute full or a smaller micro-batch")
    return plan


def _divisors(n: int) -> List[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def search(run: RunConfig, cluster: ClusterProfile, base: Layout) -> Tuple[List[Plan], int]:
    """All layouts of `cluster`'s world that fit, best predicted tokens/s first; and how many were tried.
    Fields of `base` that are not 0/None are kept fixed (e.g. --recompute full, --mbs 1)."""
    m = run.model
    world = cluster.world_size
    fitting, tried = [], 0
    for tp in _divisors(m.num_attention_heads):
        if cluster.gpus_per_node % tp or world % tp or (base.tp and tp != base.tp):
            continue
        for pp in _divisors(world // tp):
            if pp > m.num_layers or (base.pp and pp != base.pp):
                continue
            split = uneven_pipeline_split(m.num_layers, pp)
            if split is None:
                continue
            dp = world // (tp * pp)
            for mbs in ([base.mbs] if base.mbs else [1, 2, 4]):
                for recompute in ([base.recompute] if base.recompute else RECOMPUTE_ORDER):
                    layout = dataclasses.replace(base, tp=tp, pp=pp, dp=dp, mbs=mbs, recompute=recompute,
                                                 first_stage_layers=split[0], last_stage_layers=split[1])
                    if layout_problems(run, layout, cluster):
                        continue
                    tried += 1
                    plan = make_plan(run, layout, cluster)
                    if plan.fits:
                        fitting.append(plan)
    fitting.sort(key=lambda plan: -plan.throughput.tokens_per_s)
    return fitting, tried


def format_plan(plan: Plan, run: RunConfig, cluster: ClusterProfile) -> str:
    """The human-readable report: layout, memory by component per stage, predicted speed."""
    lay, t = plan.layout, plan.throughput
    lines = [f"{run.model.name} on {cluster.name} ({cluster.nodes} x {cluster.gpus_per_node} {cluster.device.name}, "
             f"{cluster.device.memory_gb:g} GB, {cluster.device.peak_tflops:g} TFLOP/s)",
             f"layout: TP {lay.tp} x PP {lay.pp} x DP {lay.dp}" + (f" (virtual {lay.vpp})" if lay.vpp > 1 else "")
             + f", micro-batch {lay.mbs}, global batch {lay.gbs} ({lay.micro_batches} micro-batches per DP rank), "
             f"recompute {lay.recompute}, {lay.precision} with {lay.grad_dtype} gradients",
             "", "memory per GPU (GB):"]
    if plan.stages:
        keys = list(plan.stages[0].gb)
        header = f"  {'stage':>5} {'layers':>6} {'in-flight':>9} " + " ".join(f"{k[:13]:>13}" for k in keys) + f" {'total':>7}"
        lines.append(header)
        for s in plan.stages:
            lines.append(f"  {s.stage:>5} {s.layers:>6} {s.in_flight:>9.1f} " +
                         " ".join(f"{s.gb[k]:>13.2f}" for k in keys) + f" {s.total_gb:>7.2f}")
    verdict = "fits" if plan.fits else "does NOT fit"
    lines += ["", f"{verdict}: peak {plan.peak.total_gb:.1f} GB of {plan.memory_limit_gb:g} GB (stage {plan.peak.stage})"
              if plan.stages else verdict]
    lines += [f"  - {p}" for p in plan.problems]
    if t.step_time_s != float("inf"):
        lines += ["", f"predicted: {t.step_time_s:.1f} s per step, {t.tokens_per_s:,.0f} tokens/s, "
                      f"{t.tflops_per_gpu_hardware:.1f} TFLOP/s per GPU hardware, {t.tflops_per_gpu_model:.1f} model, "
                      f"MFU {100 * t.mfu:.1f}%, HFU {100 * t.hfu:.1f}%",
                  "  step time: " + ", ".join(f"{k} {v:.2f} s" for k, v in t.breakdown_s.items()),
                  "  assumptions: " + ", ".join(describe_constants())]
    return "\n".join(lines)
