"""Training FLOPs, hardware FLOPs and MFU for the GLM architecture (docs/glm130b.md §1.1, §3).

Formula (the same as bench/gpu_layer_stack.py), per token, forward pass, with h = hidden size,
f = GeGLU inner size (fc1 has 2f outputs), s = sequence length, V = padded vocabulary, L = layers:

    layer  = 2 * (3h^2 + h^2 + 2hf + fh)     QKV, attention output proj, GeGLU fc1 (h -> 2f), fc2 (f -> h)
           + 4 * s * h                       QK^T scores and scores @ V over the *full* s x s square
    head   = 2 * h * V                       LM head (tied with the input embedding; the matmul is
                                             counted once: the embedding lookup is a gather, 0 FLOPs)
    forward per token = L * layer + head

Training (model) FLOPs = 3 x forward (backward = 2 x forward: gradients w.r.t. inputs and weights).
Hardware FLOPs add what activation recomputation runs again:
    full:      one more forward of the transformer layers (L * layer per token; the head is not
               recomputed)
    selective: the attention core only (the 4 s h score/context matmuls of each layer)
    none:      hardware == model

Attention is counted over the full square, not the causal half: GLM's masks are bidirectional over
the prefix (and the [MASK] spans attend to their whole context), and the unfused kernels compute
every s x s score anyway. Biases, LayerNorm, softmax, GeLU and RoPE are elementwise and ignored
(as in the Megatron-LM / PaLM accounting).

Check against the paper (docs/glm130b.md §3, [LOG]): the 96-node speed test at global batch 4224
(4224 x 2048 tokens per step) on 768 A100s took 88.5 s/iter and was reported as 134 TFLOP/s per
GPU of *hardware* FLOPs, with full recompute. This formula gives 134.15 TFLOP/s hardware (+0.1%)
and 100.96 TFLOP/s model FLOPs, i.e. HFU 43.0% and MFU 32.4% of the A100's 312, against the paper's
HFU 43.3% / MFU 32.5% (P §2.3; their numbers are rounded from the same 88.5 s measurement).
Counting attention as causal (half the square) would give 132.35 (-1.2%), and dropping the LM head
132.73 (-0.9%): the full-square count with the head matches best. See `glm130b_throughput_check`.
"""

from __future__ import annotations

import time
from typing import Dict, Optional, get_args

import torch

from megatron_glm.config.schema import ModelConfig, RecomputeGranularity

RECOMPUTE_GRANULARITIES = get_args(RecomputeGranularity)

PEAK_TFLOPS: Dict[str, float] = {
    "A100": 312.0,
    "H100": 989.0,
    "H200": 989.0,
}
"""Dense (no 2:4 sparsity) BF16/FP16 tensor-core peaks in TFLOP/s, from the vendor datasheets:
NVIDIA A100 Tensor Core GPU datasheet (312 dense, 624 with sparsity), NVIDIA H100 datasheet, SXM
(989 dense, "1,979*" with sparsity), NVIDIA H200 datasheet (same Hopper SXM tensor cores: 989 dense).
The PCIe / NVL variants have lower clocks; these are the SXM numbers."""


def _layer_forward_flops_per_token(model: ModelConfig, seq_length: int) -> tuple:
    """(dense matmul FLOPs, attention-core FLOPs) of one layer's forward per token."""
    h = model.hidden_size
    f = model.resolved_ffn_hidden_size
    dense = 2 * (3 * h * h + h * h + 2 * h * f + f * h)
    attention = 4 * seq_length * h
    return float(dense), float(attention)


def forward_flops_per_sequence(model: ModelConfig, seq_length: int) -> Dict[str, float]:
    """The forward pass of one sequence, by part: 'dense', 'attention' (both summed over layers),
    'layers' (their sum) and 'head'."""
    dense, attention = _layer_forward_flops_per_token(model, seq_length)
    layers = model.num_layers
    head = 2.0 * model.hidden_size * model.resolved_padded_vocab_size
    parts = {
        "dense": layers * dense * seq_length,
        "attention": layers * attention * seq_length,
        "head": head * seq_length,
    }
    parts["layers"] = parts["dense"] + parts["attention"]
    return parts


def model_flops_per_sequence(model: ModelConfig, seq_length: int) -> float:
    """Training FLOPs (forward + backward = 3 x forward) of one sequence of `seq_length` tokens.

    Per token and layer, forward: 2(3h^2 + h^2 + 2hf + fh) + 4sh (attention over the full square);
    plus the tied LM head 2hV once. See the module docstring for the derivation and for the
    GLM-130B consistency check (134 TFLOP/s hardware at 88.5 s/iter, batch 4224, 768 A100s).
    """
    parts = forward_flops_per_sequence(model, seq_length)
    return 3.0 * (parts["layers"] + parts["head"])


def hardware_flops_per_sequence(model: ModelConfig, seq_length: int, recompute: str = "none",
                                recompute_num_layers: Optional[int] = None) -> float:
    """Model FLOPs plus what activation recomputation executes a second time.

    recompute: "full" adds one forward of the transformer layers (not the head), "selective" adds the
    attention core's score and context matmuls (4 s h per token and layer), "none" adds nothing.
    recompute_num_layers limits the extra work to that many layers (Megatron's "block" method);
    None means every layer.
    """
    if recompute not in RECOMPUTE_GRANULARITIES:
        raise ValueError(f"recompute must be one of {RECOMPUTE_GRANULARITIES}, got {recompute!r}")
    total = model_flops_per_sequence(model, seq_length)
    if recompute == "none":
        return total
    dense, attention = _layer_forward_flops_per_token(model, seq_length)
    layers = model.num_layers if recompute_num_layers is None else min(recompute_num_layers,
                                                                       model.num_layers)
    per_layer = dense + attention if recompute == "full" else attention
    return total + layers * per_layer * seq_length


def tflops_per_gpu(flops_per_sequence: float, sequences: int, seconds: float, num_gpus: int) -> float:
    """Achieved TFLOP/s per GPU for `sequences` sequences processed in `seconds` on `num_gpus`."""
    return flops_per_sequence * sequences / seconds / num_gpus / 1e12


def glm130b_throughput_check(model: Optional[ModelConfig] = None) -> Dict[str, float]:
    """Our formula applied to GLM-130B's reported speed test (docs/glm130b.md §3 'throughput' row):
    batch 4224 x 2048 tokens, 768 A100s, 88.5 s/iter, full recompute; reported 134 TFLOP/s hardware.

    Returns model and hardware TFLOP/s per GPU, MFU/HFU against the A100 peak and the relative
    error of the hardware figure against 134 (about +0.1%).
    """
    if model is None:
        model = ModelConfig(name="glm-130b", num_layers=70, hidden_size=12288, num_attention_heads=96,
                            ffn_hidden_size=32768, vocab_size=150008, padded_vocab_size=150528,
                            seq_length=2048)
    sequences, seconds, gpus, reported = 4224, 88.5, 768, 134.0
    model_tflops = tflops_per_gpu(model_flops_per_sequence(model, 2048), sequences, seconds, gpus)
    hardware_tflops = tflops_per_gpu(hardware_flops_per_sequence(model, 2048, "full"), sequences,
                                     seconds, gpus)
    peak = PEAK_TFLOPS["A100"]
    return {
        "model_tflops": model_tflops,
        "hardware_tflops": hardware_tflops,
        "reported_hardware_tflops": reported,
        "relative_error": hardware_tflops / reported - 1.0,
        "mfu": mfu(model_tflops, peak),
        "hfu": mfu(hardware_tflops, peak),
    }


def device_peak_tflops(device_name: str) -> Optional[float]:
    """Dense BF16/FP16 peak of a GPU by (a part of) its name, e.g. torch.cuda.get_device_name()
    'NVIDIA H100 80GB HBM3' -> 989.0. None when unknown (including CPUs)."""
    name = device_name.upper()
    for key, value in PEAK_TFLOPS.items():
        if key in name:
            return value
    return None


_CPU_PEAK_CACHE: Dict[tuple, float] = {}


def measure_cpu_matmul_peak_tflops(seconds: float = 1.0, size: int = 1024) -> float:
    """Measured FP32 torch.mm rate of this CPU in TFLOP/s (the MFU denominator on CPU runs).

    A few warmup matmuls, then square size x size matmuls for about `seconds` in five windows; the
    fastest window's rate is returned. Cached per process and per (seconds, size), so a training
    loop can call it every log step. On a shared, oversubscribed CPU the number drops sharply
    (OpenMP threads spin against other processes); measure when the machine is otherwise idle.
    """
    key = (float(seconds), int(size))
    if key in _CPU_PEAK_CACHE:
        return _CPU_PEAK_CACHE[key]
    a = torch.randn(size, size, dtype=torch.float32)
    b = torch.randn(size, size, dtype=torch.float32)
    out = torch.empty(size, size, dtype=torch.float32)
    for _ in range(3):
        torch.mm(a, b, out=out)
    # Five windows of seconds / 5 each; the best window is the peak (robust to a noisy neighbour
    # stealing a shared core for part of the measurement).
    flops_per_mm = 2.0 * size ** 3
    rate = 0.0
    for _ in range(5):
        iterations = 0
        start = time.perf_counter()
        elapsed = 0.0
        while iterations == 0 or elapsed < seconds / 5:
            torch.mm(a, b, out=out)
            iterations += 1
            elapsed = time.perf_counter() - start
        rate = max(rate, flops_per_mm * iterations / elapsed / 1e12)
    _CPU_PEAK_CACHE[key] = rate
    return rate


def mfu(model_tflops_per_gpu: float, peak: Optional[float]) -> float:
    """Model FLOPs utilisation: achieved model TFLOP/s per GPU over the peak (a fraction, not %).
    Returns NaN when the peak is unknown (None) so logging never fails."""
    if peak is None:
        return float("nan")
    if peak <= 0:
        raise ValueError(f"peak must be positive, got {peak}")
    return model_tflops_per_gpu / peak
