"""Predicted step time, tokens/s, TFLOP/s per GPU and MFU of a GLM layout on a cluster profile.

The model (per GPU of the slowest pipeline stage, per micro-batch), with the cluster's datasheet
numbers and the efficiencies below:

    matmuls      hardware FLOPs of the stage (megatron_glm.training.flops: forward, the recompute
                 forward, backward = 2 x forward) / (peak x GEMM_EFFICIENCY)
    memory-bound bytes moved by the kernels that are not matmuls / (HBM bandwidth x HBM_EFFICIENCY):
                 per layer and forward pass 26 s b h x 2 bytes on replicated [s, b, h] tensors (two
                 LayerNorms, DeepNorm's scaled residual adds with bias and dropout, RoPE on q/k)
                 + 6 s b f / t x 2 (GeGLU bias, GELU, product) + 10 b a s^2 / t x 2 (scale, mask,
                 fp32 softmax, dropout on the scores); backward moves twice the forward's bytes
    tensor par.  4 all-reduces of s b h x 2 bytes per layer and micro-batch (2 forward, 2 backward)
                 plus 2 more when the layer is recomputed, ring: 2 (t-1)/t x size / NVLink bus bw
    pipeline     per micro-batch one activation and one gradient of s b h x 2 bytes over
                 InfiniBand, on the critical path (megatron-core's p2p is blocking)
    schedule     1F1B: (m + p - 1) x the slowest stage's micro-batch time; interleaved with v
                 chunks the bubble (p - 1) shrinks by v
    data par.    once per step, not overlapped (the trainer sets overlap_grad_reduce=False):
                 reduce-scatter of fp32 gradients + all-gather of fp16 parameters, each
                 (d-1)/d x bytes of the stage shard, over the GPU's InfiniBand HCA (NVLink if d fits
                 in a node)
    optimizer    Adam on the 1/d shard: 36 bytes per parameter through HBM

The efficiencies below are stated assumptions, not fitted to GLM-130B's measurement; with them
the model predicts 91.1 s per step and 130 TFLOP/s per GPU (hardware) for GLM-130B's TP4 x PP8 x DP24
at batch 4224, against the measured 88.5 s and 134 (docs/glm130b.md §3), tested within ±20 %.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

from launch.clusters import ClusterProfile
from launch.memory_model import Layout, stage_layers, stage_parameters
from megatron_glm.config.schema import RunConfig
from megatron_glm.training import flops

GEMM_EFFICIENCY = 0.60
"""Share of the dense fp16 peak that matmuls reach inside a training step (cuBLAS reaches ~75-85 %
on large isolated GEMMs on A100; tails, wave quantisation, power/clock throttling and the many
medium-size GEMMs of the backward pass bring the end-to-end figure down). An assumption."""
HBM_EFFICIENCY = 0.80
"""Share of the HBM bandwidth that elementwise kernels reach (streaming kernels: 75-90 %)."""
COMM_EFFICIENCY = 0.80
"""Share of the InfiniBand line rate NCCL reaches on large messages."""


@dataclass
class Throughput:
    step_time_s: float
    tokens_per_s: float
    tflops_per_gpu_model: float
    tflops_per_gpu_hardware: float
    mfu: float
    hfu: float
    breakdown_s: Dict[str, float]
    """Seconds per step by part (the slowest stage's share of the schedule)."""


def _stage_micro_batch_seconds(run: RunConfig, layout: Layout, cluster: ClusterProfile, layers: int,
                               head: bool) -> Dict[str, float]:
    m = run.model
    s, b, h, a, t = m.seq_length, layout.mbs, m.hidden_size, m.num_attention_heads, layout.tp
    f = m.resolved_ffn_hidden_size
    peak = cluster.device.peak_tflops * 1e12 * GEMM_EFFICIENCY
    hbm = cluster.device.hbm_gbps * 1e9 * HBM_EFFICIENCY
    parts = flops.forward_flops_per_sequence(m, s)
    per_layer_forward = parts["layers"] / m.num_layers * b / t
    recompute_extra = {"full": per_layer_forward, "selective": parts["attention"] / m.num_layers * b / t,
                       "none": 0.0}[layout.recompute]
    matmul = layers * (3 * per_layer_forward + recompute_extra)
    if head:
        matmul += 3 * parts["head"] * b / t
    forward_bytes = 2 * (26 * s * b * h + 6 * s * b * f / t + 10 * b * a * s * s / t)
    passes = 3 + (1 if layout.recompute == "full" else 0)  # forward, backward (2x), recompute forward
    memory = layers * passes * forward_bytes / hbm
    if head:
        memory += 3 * 6 * s * b * m.resolved_padded_vocab_size / t * 4 / hbm  # fp32 logits, softmax, CE
    tensor = 0.0
    if t > 1:
        all_reduces = 4 + (2 if layout.recompute == "full" else 0)
        size = s * b * h * 2
        tensor = layers * all_reduces * 2 * (t - 1) / t * size / (cluster.fabric.intra_node_busbw_gbps * 1e9)
    pipeline = 0.0
    if layout.pp > 1:
        pipeline = 2 * s * b * h * 2 / (cluster.fabric.inter_node_gbps_per_gpu * 1e9 * COMM_EFFICIENCY)
    return {"matmul": matmul / peak, "memory_bound": memory, "tensor_parallel": tensor, "pipeline_p2p": pipeline}


def predict(run: RunConfig, layout: Layout, cluster: ClusterProfile) -> Throughput:
    m = run.model
    layers = stage_layers(m.num_layers, layout)
    params = stage_parameters(run, layout)
    per_stage = [_stage_micro_batch_seconds(run, layout, cluster, n, head=(i == layout.pp - 1))
                 for i, n in enumerate(layers)]
    slowest = max(per_stage, key=lambda parts: sum(parts.values()))
    micro = layout.micro_batches
    bubble = (layout.pp - 1) / layout.vpp
    schedule = {k: v * (micro + bubble) for k, v in slowest.items()}
    d = layout.dp
    shard = max(params)
    if d > 1:
        in_node = layout.tp * layout.pp * d <= cluster.gpus_per_node
        bandwidth = (cluster.fabric.intra_node_busbw_gbps if in_node
                     else cluster.fabric.inter_node_gbps_per_gpu * COMM_EFFICIENCY) * 1e9
        schedule["data_parallel"] = (d - 1) / d * shard * (4 + 2) / bandwidth
    else:
        schedule["data_parallel"] = 0.0
    schedule["optimizer"] = 36 * shard / d / (cluster.device.hbm_gbps * 1e9 * HBM_EFFICIENCY)
    step = sum(schedule.values())
    gpus = layout.world
    model_flops = flops.model_flops_per_sequence(m, m.seq_length) * layout.gbs
    hardware = flops.hardware_flops_per_sequence(m, m.seq_length, layout.recompute) * layout.gbs
    model_tflops = model_flops / step / gpus / 1e12
    hardware_tflops = hardware / step / gpus / 1e12
    return Throughput(
        step_time_s=step, tokens_per_s=layout.gbs * m.seq_length / step, tflops_per_gpu_model=model_tflops,
        tflops_per_gpu_hardware=hardware_tflops, mfu=model_tflops / cluster.device.peak_tflops,
        hfu=hardware_tflops / cluster.device.peak_tflops, breakdown_s=schedule)


def describe_constants() -> List[str]:
    return [f"GEMM_EFFICIENCY={GEMM_EFFICIENCY}", f"HBM_EFFICIENCY={HBM_EFFICIENCY}",
            f"COMM_EFFICIENCY={COMM_EFFICIENCY}"]
