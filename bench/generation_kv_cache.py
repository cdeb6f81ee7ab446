"""CPU benchmark: one KV-cache decode step vs one full forward at a 1,000-token context.

A small GLM (random weights written as a safetensors checkpoint, loaded with load_inference_model:
the real megatron-core GLMModel at TP1) gets a 1,000-token [gMASK] context. Timed, alternating over
several rounds, median of each (and the ratio of the minima, the least disturbed by other load):
  - full:   model.logits over the 1,001 tokens (what a cache-less loop pays per generated token)
  - decode: model.extend of one token onto a cache holding the 1,000-token context
            (the cache is rolled back after each step, so every step sees 1,000 cached tokens)
The goal is full / decode >= 10. Generated-token throughput (greedy, 32 tokens) with the cache is
reported too.

    python bench/generation_kv_cache.py --out bench/results/cpu_generation_kv_cache.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--ffn", type=int, default=704)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--context", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="write the numbers as JSON here")
    args = parser.parse_args(argv)

    import torch

    from checkpoints.shapes import GLMShape
    from generation_fixtures import SPECIAL, tiny_weights, write_safetensors
    from megatron_glm.inference import GenerationConfig, generate, load_inference_model
    from megatron_glm.inference.generation import blank_context

    torch.set_num_threads(args.threads)
    glm = GLMShape(num_layers=args.layers, hidden_size=args.hidden, num_attention_heads=args.heads,
                   ffn_hidden_size=args.ffn, padded_vocab_size=args.vocab, vocab_size=args.vocab)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_safetensors(Path(tmp) / "ckpt", glm, tiny_weights(glm))
        model = load_inference_model(str(path), special_token_ids=SPECIAL, max_sequence_length=args.context + 64)
    text = torch.randint(10, args.vocab, (args.context - 2,), generator=torch.Generator().manual_seed(0)).tolist()
    context = blank_context(text + [SPECIAL["gmask"]], len(text), True, SPECIAL["sop"], 8)
    cl = len(context.tokens)
    assert cl == args.context
    n = cl + 1
    tokens = torch.tensor([context.tokens + [11]])
    positions = torch.tensor([context.position_ids + [context.generation_position_ids[0]]])
    visible = torch.ones(n, n, dtype=torch.bool).tril()
    visible[:, :cl - 1] = True
    mask = (~visible)[None, None]

    cache = model.new_cache(1, n)
    model.extend(cache, tokens[:, :cl], positions[:, :cl], mask[:, :, :cl, :cl], logits_at=torch.tensor([cl - 1]))

    def full() -> None:
        model.logits(tokens, positions, mask)

    def decode() -> None:
        model.extend(cache, tokens[:, cl:], positions[:, cl:], mask[:, :, cl:, :])
        cache.context.sequence_len_offset = cl  # roll back: the next step sees the same 1,000 tokens

    times = {"full": [], "decode": []}
    for fn in (full, decode):  # warm-up
        fn()
    for round_index in range(args.rounds):
        order = (("full", full), ("decode", decode)) if round_index % 2 == 0 else (("decode", decode), ("full", full))
        for name, fn in order:
            repeats = 1 if name == "full" else 10
            start = time.perf_counter()
            for _ in range(repeats):
                fn()
            times[name].append((time.perf_counter() - start) / repeats)
    full_s, decode_s = statistics.median(times["full"]), statistics.median(times["decode"])

    prompt = text[: args.context - 40]
    start = time.perf_counter()
    result = generate(model, prompt, GenerationConfig(max_new_tokens=32, banned_token_ids=[SPECIAL["eop"],
                                                                                          SPECIAL["eos"]]))
    generate_s = time.perf_counter() - start
    generated = len(result.blanks[0])
    model.close()
    record = {
        "model": {"layers": args.layers, "hidden": args.hidden, "heads": args.heads, "ffn": args.ffn,
                  "vocab": args.vocab},
        "context_tokens": args.context, "threads": args.threads, "rounds": args.rounds,
        "full_forward_s": full_s, "decode_step_s": decode_s, "ratio": full_s / decode_s,
        "ratio_of_minima": min(times["full"]) / min(times["decode"]),
        "full_forward_all_s": times["full"], "decode_step_all_s": times["decode"],
        "generate_greedy": {"prompt_tokens": len(prompt), "new_tokens": generated, "seconds": generate_s,
                            "tokens_per_s": generated / generate_s},
    }
    print(json.dumps(record, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
