"""CPU benchmark: one GLM training step vs megatron-core's own GPTModel, same shapes, TP2 x PP2.

Four gloo ranks (TP2 x PP2 x DP1) each build both models with the same hidden size, heads, layers,
GeGLU inner size, vocabulary, sequence length and micro-batches:
  - gpt  megatron-core GPTModel, local spec (pre-LN, RoPE, GeGLU), fp32
  - glm  our GLMModel (DeepNorm post-LN, RoPE by position ids, GeGLU, FP32 softmax), fp32
and time full training steps through the same code path (megatron-core DDP, DistributedOptimizer,
1F1B schedule, optimizer step) on the same micro-batches (GLM's block attention masks are passed to
both, so attention does the same work). The two models alternate, in alternating order, over
several rounds in one run; the ratio of the medians is the result. Goal: glm / gpt <= 1.15.

    python bench/cpu_step_vs_gptmodel.py --out bench/results/cpu_step_vs_gptmodel.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WORLD = 4


def _parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--ffn", type=int, default=1408)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--micro-batches", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps-per-round", type=int, default=3)
    parser.add_argument("--out", default="")
    return parser.parse_args(argv)


def _run_config(args):
    from megatron_glm.config.loader import load_run_config

    return load_run_config("glm-tiny", [
        f"model.num_layers={args.layers}", f"model.hidden_size={args.hidden}",
        f"model.num_attention_heads={args.heads}", f"model.ffn_hidden_size={args.ffn}",
        f"model.vocab_size={args.vocab}", f"model.seq_length={args.seq}",
        "model.hidden_dropout=0.0", "model.attention_dropout=0.0",
        "parallel.tensor=2", "parallel.pipeline=2",
    ])


def _gpt_chunks(args):
    import torch
    import torch.nn.functional as F
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer import TransformerConfig

    config = TransformerConfig(
        num_layers=args.layers, hidden_size=args.hidden, num_attention_heads=args.heads,
        ffn_hidden_size=args.ffn, tensor_model_parallel_size=2, pipeline_model_parallel_size=2,
        pipeline_dtype=torch.float32, gated_linear_unit=True, activation_func=F.gelu, add_bias_linear=True,
        bias_activation_fusion=False, attention_softmax_in_fp32=True, masked_softmax_fusion=False,
        bias_dropout_fusion=False, hidden_dropout=0.0, attention_dropout=0.0, use_cpu_initialization=True,
        gradient_accumulation_fusion=False, persist_layer_norm=False, apply_rope_fusion=False,
    )
    return [GPTModel(config=config, transformer_layer_spec=get_gpt_layer_local_spec(), vocab_size=args.vocab,
                     max_sequence_length=args.seq, position_embedding_type="rope",
                     pre_process=parallel_state.is_pipeline_first_stage(),
                     post_process=parallel_state.is_pipeline_last_stage())]


def _worker(args) -> None:
    import torch
    import torch.distributed as dist

    from megatron_glm.model.build import build_model_chunks
    from megatron_glm.runtime.distributed import destroy_distributed, discover_world, initialize_distributed
    from megatron_glm.training.batches import SyntheticBatches
    from megatron_glm.training.step import (build_optimizer, forward_backward, guarded_optimizer_step,
                                            wrap_for_training)

    run = _run_config(args)
    initialize_distributed(run, discover_world())
    try:
        torch.manual_seed(0)
        setups = {}
        for kind, chunks in (("gpt", _gpt_chunks(args)), ("glm", build_model_chunks(run))):
            model = wrap_for_training(chunks)
            setups[kind] = (model, build_optimizer(model, lr=1e-4))
        batches = SyntheticBatches(run, args.micro_batches, 1, args.seq).batches_at(0)

        def steps(kind: str, count: int) -> float:
            model, optimizer = setups[kind]
            dist.barrier()
            started = time.perf_counter()
            for _ in range(count):
                forward_backward(model, optimizer, batches, 1, args.seq)  # the training loop's step
                guarded_optimizer_step(optimizer)
            dist.barrier()
            return (time.perf_counter() - started) / count

        for kind in setups:  # warm-up
            steps(kind, 1)
        times = {"gpt": [], "glm": []}
        for index in range(args.rounds):
            for kind in (("gpt", "glm") if index % 2 == 0 else ("glm", "gpt")):
                times[kind].append(steps(kind, args.steps_per_round))
        if dist.get_rank() == 0:
            median = {kind: statistics.median(values) for kind, values in times.items()}
            result = {"layout": "TP2 x PP2 x DP1 (4 gloo ranks)", "shapes": vars(args),
                      "seconds_per_step": times, "median_s": median,
                      "ratio_glm_over_gpt": median["glm"] / median["gpt"],
                      "per_round_ratios": [g / p for g, p in zip(times["glm"], times["gpt"])],
                      "cpu_threads_per_rank": torch.get_num_threads(), "cpus": os.cpu_count()}
            print(json.dumps(result))
    finally:
        destroy_distributed()


def _launch(args) -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = []
    for rank in range(WORLD):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        procs.append(subprocess.Popen([sys.executable, __file__, *sys.argv[1:]], env=env,
                                      stdout=subprocess.PIPE if rank == 0 else subprocess.DEVNULL, text=True))
    output = procs[0].communicate()[0]
    codes = [proc.wait() for proc in procs]
    if any(codes):
        print(f"a rank failed: exit codes {codes}", file=sys.stderr)
        return 1
    result = json.loads(output.strip().splitlines()[-1])
    print(f"GLM step {result['median_s']['glm']:.3f} s, GPTModel step {result['median_s']['gpt']:.3f} s: "
          f"ratio {result['ratio_glm_over_gpt']:.3f} (goal <= 1.15); per round "
          + ", ".join(f"{r:.3f}" for r in result["per_round_ratios"]))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=1)
    return 0


if __name__ == "__main__":
    arguments = _parse()
    if "RANK" in os.environ:
        _worker(arguments)
    else:
        sys.exit(_launch(arguments))
