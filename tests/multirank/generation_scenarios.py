"""What each rank runs in the multi-rank inference test (launched by harness.run_ranks).

    generation_scenarios.py layout WORKDIR TP PP
        TP x PP ranks load WORKDIR/ckpt (a tiny safetensors checkpoint) with load_inference_model and
        write WORKDIR/tp<TP>pp<PP>.rank<r>.pt: full-forward logits of WORKDIR/cases.pt, per-step
        KV-cache logits of the same sequence, greedy and beam generations.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: generation_fixtures

from generation_fixtures import SPECIAL  # noqa: E402


def layout(workdir: Path, tp: int, pp: int) -> None:
    from megatron_glm.config.loader import load_run_config
    from megatron_glm.inference import GenerationConfig, generate, generate_batch, load_inference_model
    from megatron_glm.runtime.distributed import destroy_distributed, discover_world, initialize_distributed

    run = load_run_config("glm-tiny", [f"parallel.tensor={tp}", f"parallel.pipeline={pp}"])
    initialize_distributed(run, discover_world())
    try:
        model = load_inference_model(str(workdir / "ckpt"), special_token_ids=SPECIAL, max_sequence_length=64)
        case = torch.load(workdir / "cases.pt")
        tokens, positions, mask, prefill = case["tokens"], case["position_ids"], case["attention_mask"], case["prefill"]
        full = model.logits(tokens, positions, mask)
        cache = model.new_cache(tokens.shape[0], tokens.shape[1])
        steps = [model.extend(cache, tokens[:, :prefill], positions[:, :prefill], mask[:, :, :prefill, :prefill])]
        for column in range(prefill, tokens.shape[1]):
            steps.append(model.extend(cache, tokens[:, column:column + 1], positions[:, column:column + 1],
                                      mask[:, :, column:column + 1, :column + 1]))
        greedy = [r.blanks for r in generate_batch(model, case["prompts"], GenerationConfig(max_new_tokens=5))]
        beam = generate(model, case["prompts"][0], GenerationConfig("beam", max_new_tokens=4, num_beams=3,
                                                                     no_repeat_ngram_size=2))
        torch.save({"full": full, "cached": torch.cat(steps, dim=1), "greedy": greedy,
                    "beam": [(b.tokens, b.score) for b in beam.beams]},
                   workdir / f"tp{tp}pp{pp}.rank{os.environ['RANK']}.pt")
    finally:
        destroy_distributed()


def main() -> None:
    scenario, workdir = sys.argv[1], Path(sys.argv[2])
    if scenario == "layout":
        layout(workdir, int(sys.argv[3]), int(sys.argv[4]))
    else:
        raise SystemExit(f"unknown scenario {scenario}")


if __name__ == "__main__":
    main()
