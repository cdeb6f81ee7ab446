"""GPU benchmark: a GLM layer stack against megatron-core's GPTModel with the same shapes.

One GPU, TP1, one process. For each precision (bf16, fp16) and recompute setting (none, full) it
times forward + backward of a micro-batch (no optimizer step) for
  - gpt        megatron-core GPTModel, local spec (pre-LN, causal mask, RoPE, GeGLU of the same size)
  - glm-local  our GLMModel with megatron-core's local DotProductAttention (explicit FP32 softmax)
  - glm-sdpa   our GLMModel with torch scaled_dot_product_attention and GLM's boolean mask
and prints model TFLOP/s per GPU, MFU against the dense peak, and each GLM variant's ratio to the
GPT baseline measured in the same process. Results also go to --out as JSON.

Model FLOPs per token and layer, forward: 2 (3h^2 + h^2 + 2hf + fh) + 4 s h (scores and context over
the full square: GLM's masks are not causal, and the unfused kernels compute the square anyway);
LM head 2 h V. Training = 3x forward; full recompute adds one forward of the layers (hardware FLOPs).

    python bench/gpu_layer_stack.py --layers 8 --hidden 4096 --heads 32 --ffn 10944 --seq 2048
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import traceback
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def peak_tflops() -> float:
    name = torch.cuda.get_device_name()
    for key, value in PEAK_TFLOPS.items():
        if key in name:
            return value
    raise SystemExit(f"unknown GPU {name}: add its dense fp16/bf16 peak to PEAK_TFLOPS")


def model_flops_per_token(args):
    """Forward FLOPs per token of the layers and of the LM head (megatron_glm.training.flops)."""
    from megatron_glm.config.schema import ModelConfig
    from megatron_glm.training.flops import forward_flops_per_sequence

    config = ModelConfig(num_layers=args.layers, hidden_size=args.hidden, num_attention_heads=args.heads,
                         ffn_hidden_size=args.ffn, vocab_size=args.vocab, seq_length=args.seq)
    parts = forward_flops_per_sequence(config, args.seq)
    return parts["layers"] / args.seq, parts["head"] / args.seq


def build(kind: str, precision: str, recompute: str, args):
    from megatron.core.transformer.module import Float16Module

    if kind == "gpt":
        import torch.nn.functional as F
        from megatron.core.models.gpt import GPTModel
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
        from megatron.core.transformer import TransformerConfig

        from megatron_glm.model.transformer_config import fused_softmax_available

        config = TransformerConfig(
            num_layers=args.layers, hidden_size=args.hidden, num_attention_heads=args.heads,
            ffn_hidden_size=args.ffn, gated_linear_unit=True, activation_func=F.gelu, add_bias_linear=True,
            bias_activation_fusion=False, attention_softmax_in_fp32=True, masked_softmax_fusion=fused_softmax_available(),
            bias_dropout_fusion=torch.cuda.is_available(), hidden_dropout=0.0, attention_dropout=0.0,
            params_dtype=torch.bfloat16 if precision == "bf16" else torch.float16,
            bf16=precision == "bf16", fp16=precision == "fp16",
            apply_query_key_layer_scaling=precision == "fp16",
            recompute_granularity="full" if recompute == "full" else None,
            recompute_method="uniform" if recompute == "full" else None,
            recompute_num_layers=1 if recompute == "full" else None,
        )
        model = GPTModel(config=config, transformer_layer_spec=get_gpt_layer_local_spec(),
                         vocab_size=args.vocab, max_sequence_length=args.seq, position_embedding_type="rope")
    else:
        from megatron_glm.config.loader import load_run_config
        from megatron_glm.model.build import build_model

        run = load_run_config("glm-10b", [
            f"model.num_layers={args.layers}", f"model.hidden_size={args.hidden}",
            f"model.num_attention_heads={args.heads}", f"model.ffn_hidden_size={args.ffn}",
            f"model.vocab_size={args.vocab}", f"model.seq_length={args.seq}",
            "model.hidden_dropout=0.0", "model.attention_dropout=0.0",
            f"model.attention_backend={kind.split('-')[1]}", f"precision={precision}",
            f"recompute.granularity={recompute}",
        ])
        model = build_model(run)
        config = model.config
    return Float16Module(config, model).cuda()


def time_model(model, kind: str, args):
    b, s = args.micro_batch, args.seq
    tokens = torch.randint(0, args.vocab, (b, s), device="cuda")
    positions = torch.arange(s, device="cuda").expand(b, s)
    # GLM: a [gMASK]-style prefix-LM mask (bidirectional first half); GPT: causal.
    mask = torch.ones(s, s, dtype=torch.bool, device="cuda").triu(1)
    if kind != "gpt":
        mask[:, : s // 2] = False
    mask = mask.expand(b, 1, s, s)

    def step():
        loss = model(tokens, positions, mask, labels=tokens).float().mean()
        loss.backward()

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(args.iters):
        step()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1000.0 / args.iters


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--ffn", type=int, default=10944)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=50304)
    parser.add_argument("--micro-batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--precisions", default="bf16,fp16")
    parser.add_argument("--recompute", default="none,full")
    parser.add_argument("--kinds", default="gpt,glm-local,glm-sdpa")
    parser.add_argument("--out", default="bench_gpu_layer_stack.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    from megatron_glm.config.loader import load_run_config
    from megatron_glm.runtime.distributed import WorldInfo, initialize_distributed

    initialize_distributed(load_run_config("glm-tiny"), WorldInfo(0, 0, 1, "127.0.0.1", 29517, "single"))
    peak = peak_tflops()
    layer_flops, head_flops = model_flops_per_token(args)
    tokens = args.micro_batch * args.seq
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "peak_tflops": peak,
               "args": vars(args), "runs": []}
    print(f"device {results['device']}, torch {torch.__version__}, peak {peak} TFLOP/s", flush=True)
    for precision in args.precisions.split(","):
        for recompute in args.recompute.split(","):
            baseline = None
            for kind in args.kinds.split(","):
                entry = {"kind": kind, "precision": precision, "recompute": recompute}
                try:
                    torch.cuda.reset_peak_memory_stats()
                    model = build(kind, precision, recompute, args)
                    seconds = time_model(model, kind, args)
                    model_tflops = 3 * (layer_flops + head_flops) * tokens / seconds / 1e12
                    hw_factor = (4 * layer_flops + 3 * head_flops) / (3 * (layer_flops + head_flops))
                    entry.update(step_s=seconds, model_tflops=model_tflops,
                                 hardware_tflops=model_tflops * (hw_factor if recompute == "full" else 1.0),
                                 mfu=model_tflops / peak, peak_mem_gb=torch.cuda.max_memory_allocated() / 2**30)
                    if kind == "gpt":
                        baseline = seconds
                    elif baseline:
                        entry["speed_vs_gpt"] = baseline / seconds
                    del model
                except Exception as error:  # one failing variant must not hide the others
                    entry["error"] = f"{type(error).__name__}: {error}"
                    traceback.print_exc()
                gc.collect()
                torch.cuda.empty_cache()
                results["runs"].append(entry)
                print(json.dumps(entry), flush=True)
    with open(args.out, "w") as handle:
        json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    started = time.time()
    code = main()
    print(f"total {time.time() - started:.0f}s")
    sys.exit(code)
