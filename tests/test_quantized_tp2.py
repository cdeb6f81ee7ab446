"""Quantized inference at TP2 (two gloo ranks): each rank holds GLM-130B's per-shard INT4 bytes
(QKV by heads, GeGLU fc1 as [X1_r; X2_r], row-parallel dense/fc2 by columns with the scales of its
own shard), whether read from glm-ckpt's TP2 SAT file or quantized on load from full precision, and
the logits (full forward and a KV-cache decode step) equal the TP1 model of the same dequantized
weights.

Run by pytest; each rank runs this file as a script: `test_quantized_tp2.py rank WORKDIR`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/ when run as a rank script

from generation_fixtures import SPECIAL, tiny_shape, write_safetensors  # noqa: E402

VOCAB = 128


def _load(path, **kwargs):
    from megatron_glm.inference import load_inference_model

    return load_inference_model(str(path), special_token_ids=SPECIAL, max_sequence_length=32,
                                num_attention_heads=4, rope_precision="fp32", **kwargs)


def rank_main(workdir: Path) -> None:
    from megatron_glm.config.loader import load_run_config
    from megatron_glm.model.tp_shard import shard
    from megatron_glm.quantization.kernels import quantize_rows
    from megatron_glm.quantization.load import quantized_modules
    from megatron_glm.runtime.distributed import destroy_distributed, discover_world, initialize_distributed

    run = load_run_config("glm-tiny", ["parallel.tensor=2", "parallel.pipeline=1"])
    initialize_distributed(run, discover_world())
    rank = int(os.environ["RANK"])
    try:
        case = torch.load(workdir / "case.pt")
        weights = torch.load(workdir / "weights.pt")
        tokens, positions, mask = case["tokens"], case["positions"], case["mask"]
        out = {}
        for name, path, quantize in (("stored", workdir / "sat-int4-tp2", None),
                                     ("on_load", workdir / "full", "int4")):
            model = _load(path, quantize=quantize)
            assert model.quantization == "int4", model.quantization
            for module_name, module in quantized_modules(model.model):
                key = module_name + ".weight"
                dim = 0 if "linear_qkv" in key or "linear_fc1" in key else 1
                stride = 2 if "linear_fc1" in key else 1
                values, scale = quantize_rows(shard(weights[key], rank, 2, dim, stride), 4)
                assert torch.equal(module.weight, values) and torch.equal(module.weight_scale, scale), (name, key)
            full = model.logits(tokens, positions, mask)
            cache = model.new_cache(tokens.shape[0], tokens.shape[1])
            model.extend(cache, tokens[:, :8], positions[:, :8], mask[:, :, :8, :8])
            step = model.extend(cache, tokens[:, 8:9], positions[:, 8:9], mask[:, :, 8:9, :9])
            out[name] = {"full": full, "step": step}
            model.close()
        torch.save(out, workdir / f"rank{rank}.pt")
    finally:
        destroy_distributed()


@pytest.mark.multirank
def test_tp2_int4_equals_the_tp1_dequantized_model(tmp_path):
    from checkpoints.formats.base import WriteOptions
    from checkpoints.formats.sat import SatWriter
    from multirank.harness import run_ranks
    from test_quantized import inputs, mild_weights

    glm = tiny_shape(VOCAB)
    weights = mild_weights(glm, seed=4)
    write_safetensors(tmp_path / "full", glm, weights)
    (tmp_path / "sat-int4-tp2").mkdir()
    writer = SatWriter(tmp_path / "sat-int4-tp2", glm, WriteOptions(tp=2, quantize="int4", dtype="fp32"), 1,
                       {k: v.dtype for k, v in weights.items()})
    for key, spec, layer in glm.entries():
        writer.write(key, spec, layer, weights[key])
    writer.close()
    tokens, positions, mask = inputs(length=12, batch=2)
    torch.save({"tokens": tokens, "positions": positions, "mask": mask}, tmp_path / "case.pt")
    torch.save(weights, tmp_path / "weights.pt")
    # TP1 reference: the TP2 file dequantized (its row-parallel weights carry TP2 shard scales)
    reference = _load(tmp_path / "sat-int4-tp2", quantize="none")
    expected = reference.logits(tokens, positions, mask)
    reference.close()

    run_ranks("rank", 2, tmp_path, timeout_s=300, script=Path(__file__))
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        for name in ("stored", "on_load"):
            assert torch.allclose(result[name]["full"], expected, atol=3e-4, rtol=0), (rank, name)
            assert torch.allclose(result[name]["step"][:, 0], expected[:, 8], atol=3e-4, rtol=0), (rank, name)
        assert torch.equal(result["stored"]["full"], result["on_load"]["full"])


if __name__ == "__main__":
    if sys.argv[1] != "rank":
        raise SystemExit(f"unknown scenario {sys.argv[1]}")
    rank_main(Path(sys.argv[2]))
