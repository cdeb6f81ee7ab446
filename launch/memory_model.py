"""Per-GPU memory of a GLM layout, by component: the planner's memory model (and the one submit
validates with).

Every pipeline stage is modelled separately (stages differ: the first holds the embedding and the
most in-flight micro-batches, the last holds the LM head and the fp32 logits). Bytes, for stage i
of p with P_i parameters in its tensor-parallel shard, data-parallel size d:

    weights      P_i x 2 (fp16/bf16; 4 in fp32)             Float16Module casts every parameter
    gradients    P_i x 4 with fp32 gradient buffers (megatron-core DDP grad_reduce_in_fp32, what
                 the trainer uses today), P_i x 2 with half-precision ones (GLM-130B's DeepSpeed
                 ZeRO-1 fp16 kept and reduced fp16 gradients)
    optimizer    P_i x 12 / d (fp16/bf16; 8 / d in fp32)     DistributedOptimizer (ZeRO-1): fp32
                                                            master copy + Adam m and v, sharded;
                 + P_i x 4 / d with half-precision gradients (the fp32 copy of the gradient shard)
    activations  in-flight micro-batches x what one micro-batch keeps for backward, plus the
                 working set of the layer being recomputed (full recompute)
    comm         pipeline send/recv buffers (2 x 2 x s b h x 2 bytes) + NCCL workspace
    margin       FRAGMENTATION of everything above (caching-allocator fragmentation) + the CUDA
                 context, on GPUs

P_i is counted exactly as megatron-core builds our model (checked against the meta-device build
at world 768, tests/test_launch_plan.py): per layer 6h + (4h^2 + 3h + 3fh + 2f) / t (two
LayerNorms and the row-parallel biases replicated, QKV / projection / GeGLU fc1 (h -> 2f) / fc2
split), the first stage adds the word embedding V h / t, the last the final LayerNorm 2h and, with
more than one stage, its own copy of the tied output weight V h / t.

Activations kept for backward per transformer layer and micro-batch, fp16/bf16 (s sequence,
b micro-batch, h hidden, a heads, f GeGLU inner size, t TP degree; no sequence parallelism):

    no recompute   s b (12 h + 12 h / t + 8 f / t + 8 h / a + 8) + 8 b a s^2 / t
    selective      the same without the 8 b a s^2 / t of the attention core
    full           6 s b h (three fp16 [s, b, h] tensors per checkpointed layer), plus one
                   layer's no-recompute activations as working set while it is recomputed
    LM head        s b (6 h + 4 V / t + 23) + b s^2 (boolean mask) on the last stage

These coefficients were measured, not assumed: `launch/activation_probe.py` builds GLM layers on
CPU in fp16 at TP 1/2/4 (torch's fake process group), runs a forward with labels and adds up the
bytes of every tensor autograd saves for backward (parameters excluded, shared storages once);
a least-squares fit over 12 shapes reproduces every measurement exactly (residual 1e-15) for the
layer terms and within 0.03 % for the head. The CPU path is megatron's unfused one (fp32 softmax output and fp16 probabilities
both kept), so on GPUs with the fused softmax kernel this slightly over-estimates: a safe margin.
fp32 runs double every term (an upper bound).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from megatron_glm.config.schema import RunConfig

GB = 1e9
FRAGMENTATION = 0.08
"""Share of the allocated bytes lost to the caching allocator's fragmentation (assumed: 5-10% is
what PyTorch's allocator typically shows in long pipeline-parallel runs)."""
NCCL_WORKSPACE_GB = 0.4
"""NCCL's internal buffers per GPU (channels x peers x 4 MiB buffers), assumed."""
CUDA_CONTEXT_GB = 0.5
"""CUDA context and cuBLAS workspaces per GPU, outside the caching allocator (assumed)."""

LAYER_COEFFICIENTS = {"h": 12.0, "h_tp": 12.0, "f_tp": 8.0, "head_dim": 8.0, "token": 8.0, "scores": 8.0}
"""Bytes per token (per attention score for "scores") of one layer's saved activations in fp16,
measured by launch/activation_probe.py (see the module docstring)."""
FULL_RECOMPUTE_BYTES_PER_ELEMENT = 6.0
HEAD_COEFFICIENTS = {"h": 6.0, "vocab_tp": 4.0, "token": 23.0, "mask": 1.0}


@dataclass(frozen=True)
class Layout:
    tp: int
    pp: int
    dp: int
    vpp: int = 1
    mbs: int = 1
    gbs: int = 1
    recompute: str = "full"
    precision: str = "fp16"
    grad_dtype: str = "fp32"
    """Gradient buffer dtype: "fp32" (the trainer: grad_reduce_in_fp32) or the precision's half type."""
    first_stage_layers: Optional[int] = None
    last_stage_layers: Optional[int] = None

    @property
    def world(self) -> int:
        return self.tp * self.pp * self.dp

    @property
    def micro_batches(self) -> int:
        return self.gbs // (self.mbs * self.dp)


@dataclass
class StageMemory:
    stage: int
    layers: int
    params: int
    in_flight: float
    """Micro-batches (in units of the whole stage) whose activations are held at the peak."""
    gb: Dict[str, float] = field(default_factory=dict)

    @property
    def total_gb(self) -> float:
        return sum(self.gb.values())


def stage_layers(num_layers: int, layout: Layout) -> List[int]:
    """Layers per pipeline stage: uneven first/last stages as configured, the rest even
    (megatron-core's num_layers_in_first/last_pipeline_stage)."""
    p = layout.pp
    if p == 1:
        return [num_layers]
    first, last = layout.first_stage_layers, layout.last_stage_layers
    middle_stages = p - (first is not None) - (last is not None)
    rest = num_layers - (first or 0) - (last or 0)
    if middle_stages == 0:
        if rest != 0:
            raise ValueError(f"first + last stage layers must equal {num_layers} with 2 stages")
        return [first, last]
    if rest < 0 or rest % middle_stages:
        raise ValueError(f"{rest} layers do not split evenly over {middle_stages} middle pipeline stages")
    each = rest // middle_stages
    return [first if first is not None else each] + [each] * (p - 2) + [last if last is not None else each]


def stage_parameters(run: RunConfig, layout: Layout) -> List[int]:
    """Parameters of each pipeline stage's tensor-parallel shard, exactly as megatron-core builds them."""
    m = run.model
    h, f, v, t = m.hidden_size, m.resolved_ffn_hidden_size, m.resolved_padded_vocab_size, layout.tp
    per_layer = 6 * h + (4 * h * h + 3 * h + 3 * f * h + 2 * f) // t
    layers = stage_layers(m.num_layers, layout)
    params = [n * per_layer for n in layers]
    params[0] += v * h // t
    params[-1] += 2 * h + (v * h // t if layout.pp > 1 else 0)
    return params


def layer_activation_bytes(run: RunConfig, layout: Layout, recompute: str) -> float:
    """Bytes one transformer layer keeps for backward per micro-batch (fp16/bf16)."""
    m = run.model
    s, b, h, a, t = m.seq_length, layout.mbs, m.hidden_size, m.num_attention_heads, layout.tp
    f = m.resolved_ffn_hidden_size
    if recompute == "full":
        return FULL_RECOMPUTE_BYTES_PER_ELEMENT * s * b * h
    c = LAYER_COEFFICIENTS
    per_token = c["h"] * h + c["h_tp"] * h / t + c["f_tp"] * f / t + c["head_dim"] * h / a + c["token"]
    total = s * b * per_token
    if recompute != "selective":
        total += c["scores"] * b * a * s * s / t
    return total


def head_activation_bytes(run: RunConfig, layout: Layout) -> float:
    m = run.model
    s, b = m.seq_length, layout.mbs
    c = HEAD_COEFFICIENTS
    return s * b * (c["h"] * m.hidden_size + c["vocab_tp"] * m.resolved_padded_vocab_size / layout.tp
                    + c["token"]) + c["mask"] * b * s * s


def in_flight_micro_batches(stage: int, layout: Layout) -> float:
    """How many micro-batches' activations stage `stage` holds at its peak under 1F1B, in units of
    the whole stage: p - stage (capped by the micro-batch count); interleaved with v chunks,
    megatron-core's warm-up count ((p - stage - 1) x 2 + (v - 1) x p + 1) chunks of 1/v stage each."""
    p, v, m = layout.pp, layout.vpp, layout.micro_batches
    if v > 1:
        chunks = (p - stage - 1) * 2 + (v - 1) * p + 1
        return min(chunks, m * v) / v
    return float(min(p - stage, m))


def memory_per_stage(run: RunConfig, layout: Layout, gpu: bool = True) -> List[StageMemory]:
    """Memory of one GPU in each pipeline stage, by component, in GB (1e9 bytes)."""
    half = layout.precision in ("fp16", "bf16")
    grad_bytes = 4 if layout.grad_dtype == "fp32" else 2
    scale = 1.0 if half else 2.0
    m = run.model
    layers = stage_layers(m.num_layers, layout)
    stages = []
    for i, (n_layers, params) in enumerate(zip(layers, stage_parameters(run, layout))):
        in_flight = in_flight_micro_batches(i, layout)
        stored = in_flight * n_layers * layer_activation_bytes(run, layout, layout.recompute)
        working = layer_activation_bytes(run, layout, "none") if layout.recompute == "full" else 0.0
        head = head_activation_bytes(run, layout) if i == layout.pp - 1 else 0.0
        comm = 4 * m.seq_length * layout.mbs * m.hidden_size * 2 + (NCCL_WORKSPACE_GB * GB if gpu else 0.0)
        gb = {
            "weights": params * (2 if half else 4) / GB,
            "gradients": params * grad_bytes / GB,
            "optimizer": params * ((12 if half else 8) + (4 if grad_bytes == 2 else 0)) / layout.dp / GB,
            "activations": scale * (stored + working + head) / GB,
            "communication": comm / GB,
        }
        gb["fragmentation_margin"] = FRAGMENTATION * sum(gb.values()) + (CUDA_CONTEXT_GB if gpu else 0.0)
        stages.append(StageMemory(stage=i, layers=n_layers, params=params, in_flight=in_flight, gb=gb))
    return stages
