"""GPU check: does the SDPA attention backend reproduce the local FP32-softmax attention?

Builds a small GLM (4 layers, hidden 1024, 16 heads, [gMASK]-style prefix-LM mask) once in fp32 with
the local backend as the reference, then in bf16 and fp16 with each backend on the same weights, and
prints the relative logit error of each against the fp32 reference (max |diff| / max |ref|). SDPA is
acceptable where its error is no larger than the local backend's in the same precision.

    python bench/gpu_attention_numerics.py
"""

from __future__ import annotations

import json
import os
import sys
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> int:
    warnings.filterwarnings("ignore")
    from megatron.core.transformer.module import Float16Module

    from megatron_glm.config.loader import load_run_config
    from megatron_glm.model.build import build_model
    from megatron_glm.runtime.distributed import WorldInfo, initialize_distributed

    base = ["model.num_layers=4", "model.hidden_size=1024", "model.num_attention_heads=16",
            "model.vocab_size=8192", "model.seq_length=1024", "model.hidden_dropout=0.0",
            "model.attention_dropout=0.0"]
    initialize_distributed(load_run_config("glm-10b", base), WorldInfo(0, 0, 1, "127.0.0.1", 29519, "single"))
    s, device = 1024, ("cuda" if torch.cuda.is_available() else "cpu")
    tokens = torch.randint(0, 8192, (2, s), generator=torch.Generator().manual_seed(0)).to(device)
    positions = torch.arange(s, device=device).expand(2, s)
    mask = torch.ones(s, s, dtype=torch.bool, device=device).triu(1)
    mask[:, : s // 3] = False
    mask = mask.expand(2, 1, s, s)

    reference_model = build_model(load_run_config("glm-10b", base + ["precision=fp32"]))
    weights = reference_model.state_dict()
    with torch.no_grad():
        reference = reference_model(tokens, positions, mask).float()
    results = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}
    for precision in ("bf16", "fp16"):
        for backend in ("local", "sdpa"):
            run = load_run_config("glm-10b", base + [f"precision={precision}", f"model.attention_backend={backend}"])
            model = build_model(run)
            model.load_state_dict(weights)
            model = Float16Module(model.config, model)
            with torch.no_grad():
                logits = model(tokens, positions, mask).float()
            error = float((logits - reference).abs().max() / reference.abs().max())
            results[f"{precision}-{backend}"] = error
            print(json.dumps({"precision": precision, "backend": backend, "relative_error_vs_fp32": error}),
                  flush=True)
    with torch.no_grad():  # the fp32 SDPA path against the fp32 local path
        run = load_run_config("glm-10b", base + ["precision=fp32", "model.attention_backend=sdpa"])
        model = build_model(run)
        model.load_state_dict(weights)
        error = float((model(tokens, positions, mask).float() - reference).abs().max() / reference.abs().max())
    results["fp32-sdpa"] = error
    print(json.dumps({"precision": "fp32", "backend": "sdpa", "relative_error_vs_fp32": error}))
    out = os.environ.get("OUT", ".")
    with open(os.path.join(out, "gpu_attention_numerics.json"), "w") as handle:
        json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
