"""Weight-only INT8/INT4 matmul vs the full-precision GEMM at GLM-130B's per-GPU shard shapes.

One transformer layer's four linear layers on one tensor-parallel rank (docs/glm130b.md §1.1:
hidden h = 12288, GeGLU inner size f = 32768):

    QKV    [3h/TP, h]      column-parallel
    dense  [h, h/TP]       row-parallel
    fc1    [2f/TP, h]      column-parallel (GeGLU: both halves)
    fc2    [h, f/TP]       row-parallel

for TP4 and TP8, at decode (1 and 8 tokens: batch 1 and 8, one new token each) and prefill (2048
tokens). The baseline is `x @ W.t()` in fp16/bf16 (cuBLAS on GPU); the quantized layers run
megatron_glm.quantization.kernels.quantized_matmul with each registered kernel (`torch`:
dequantize into scratch + GEMM, GLM-130B's own scheme; `int8pack`: torch's fused
`_weight_int8pack_mm`, INT8 only, where torch implements it; `triton`: the fused INT8 / packed-INT4
kernel of megatron_glm/quantization/triton_kernel.py, GPU only). Times are per layer (the four matmuls),
fastest and median of --iters after --warmup (CUDA events on GPU, perf_counter on CPU; the
fastest is the estimate, the median shows how noisy the machine was).

    python bench/quantized_matmul.py                         # GPU: the full GLM-130B shard shapes
    python bench/quantized_matmul.py --cpu-small             # CPU: shapes / 8 (h 1536), fp32 and bf16
    python bench/quantized_matmul.py --device cpu --scale 16 --dtypes fp32 --json out.json

Output: a markdown table (speed-up = baseline time / quantized time, > 1: quantized is faster; the
last column checks every kernel's output against dequantize-then-matmul in fp32, so one GPU run
both validates a kernel and times it) and, with --json, every number plus the card, torch version
and command.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_glm.quantization import kernels  # noqa: E402

HIDDEN, FFN = 12288, 32768
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def shapes(tp: int, scale: int):
    h, f = HIDDEN // scale, FFN // scale
    return {"qkv": (3 * h // tp, h), "dense": (h, h // tp), "fc1": (2 * f // tp, h), "fc2": (h, f // tp)}


def timer(device: torch.device, fn, warmup: int, iters: int) -> dict:
    """Fastest and median milliseconds of fn() (the fastest is the estimate on a shared machine)."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(iters):
            begin = time.perf_counter()
            fn()
            times.append((time.perf_counter() - begin) * 1e3)
    return {"ms": min(times), "median_ms": statistics.median(times)}


def bench(device, dtype, tp, tokens, scale, kernel_names, warmup, iters):
    generator = torch.Generator().manual_seed(0)
    layer = {}
    for name, (rows, columns) in shapes(tp, scale).items():
        weight = (torch.randn(rows, columns, generator=generator) * 0.02).to(device)
        layer[name] = {"w": weight.to(dtype), 8: kernels.quantize_rows(weight, 8), 4: kernels.quantize_rows(weight, 4)}
        del weight
    xs = {name: torch.randn(tokens, columns, generator=generator).to(device=device, dtype=dtype)
          for name, (_, columns) in shapes(tp, scale).items()}

    def baseline():
        for name, entry in layer.items():
            torch.matmul(xs[name], entry["w"].t())

    rows = [{"variant": f"{dtype_name(dtype)} GEMM", **timer(device, baseline, warmup, iters)}]
    weight_bytes = {"full": sum(e["w"].numel() * e["w"].element_size() for e in layer.values())}
    for bits in (8, 4):
        weight_bytes[f"int{bits}"] = sum(e[bits][0].numel() + 2 * e[bits][1].numel() for e in layer.values())
        for kernel in kernel_names:
            if kernel == "int8pack" and bits == 4:
                continue
            kernels.set_kernel(kernel)
            probe = next(iter(layer))
            if kernel != "torch" and kernels._KERNELS[kernel](xs[probe], *layer[probe][bits], bits) is None:
                continue  # not supported here (device, dtype or torch version)

            def quantized(bits=bits):
                for name, entry in layer.items():
                    kernels.quantized_matmul(xs[name], *entry[bits], bits)

            error = 0.0  # against dequantize-then-matmul in fp32, every layer
            for name, entry in layer.items():
                got = kernels.quantized_matmul(xs[name], *entry[bits], bits).float()
                want = xs[name].float() @ kernels.dequantize(*entry[bits], bits).t()
                error = max(error, float((got - want).abs().max() / want.abs().max().clamp_min(1e-30)))
            rows.append({"variant": f"int{bits} {kernel}", **timer(device, quantized, warmup, iters),
                         "max_rel_error": error})
    kernels.set_kernel(None)
    base = rows[0]["ms"]
    for row in rows:
        row["speedup"] = base / row["ms"]
    return rows, weight_bytes


def dtype_name(dtype):
    return next(k for k, v in DTYPES.items() if v == dtype)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cpu-small", action="store_true",
                        help="CPU preset: --device cpu --scale 8 --dtypes fp32,bf16")
    parser.add_argument("--scale", type=int, default=1, help="divide hidden and FFN sizes by this (CPU)")
    parser.add_argument("--dtypes", default="fp16,bf16", help="activation/baseline dtypes")
    parser.add_argument("--tp", default="4,8")
    parser.add_argument("--tokens", default="1,8,2048", help="decode batch 1 and 8, prefill 2048")
    parser.add_argument("--kernels", default="torch,int8pack,triton")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--json", help="write every number here")
    args = parser.parse_args(argv)
    if args.cpu_small:
        args.device, args.scale, args.dtypes = "cpu", 8, "fp32,bf16"
    device = torch.device(args.device)
    if device.type == "cuda":
        card = torch.cuda.get_device_name(device)
    else:
        card = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"# {card}, torch {torch.__version__}, hidden {HIDDEN // args.scale}, FFN {FFN // args.scale}")
    print("| dtype | TP | tokens | variant | ms / layer (fastest) | median | speed-up vs GEMM | weight MB / layer "
          "| max rel. error vs dequantize-then-matmul |")
    print("|---|---|---|---|---|---|---|---|---|")
    results = []
    for dtype in (DTYPES[d] for d in args.dtypes.split(",")):
        for tp in map(int, args.tp.split(",")):
            for tokens in map(int, args.tokens.split(",")):
                rows, weight_bytes = bench(device, dtype, tp, tokens, args.scale, args.kernels.split(","),
                                           args.warmup, args.iters)
                for row in rows:
                    kind = "full" if "GEMM" in row["variant"] else row["variant"].split()[0]
                    print(f"| {dtype_name(dtype)} | {tp} | {tokens} | {row['variant']} | {row['ms']:.3f} | "
                          f"{row['median_ms']:.3f} | {row['speedup']:.2f} | {weight_bytes[kind] / 1e6:.1f} | "
                          f"{row.get('max_rel_error', float('nan')):.1e} |", flush=True)
                    results.append({"dtype": dtype_name(dtype), "tp": tp, "tokens": tokens, **row,
                                    "weight_bytes": weight_bytes[kind]})
    if args.json:
        Path(args.json).write_text(json.dumps({"card": card, "torch": torch.__version__, "scale": args.scale,
                                               "command": " ".join(sys.argv), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
