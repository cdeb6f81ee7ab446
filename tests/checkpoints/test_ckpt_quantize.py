"""Must-be-true 3: INT8/INT4 weight-only quantisation as docs/glm130b.md §5 -- dequantised weights within
one absmax step of the originals, INT4 packing exact, per-row scales of the local TP shard, and the
logit error of a quantised checkpoint reported by `glm-ckpt compare`."""

from __future__ import annotations

import re

import pytest
import torch

from checkpoints.quantize import dequantize, pack_int4, quantize, unpack_int4
from ckpt_helpers import HEADS_ARGS, ckpt, convert


@pytest.mark.parametrize("bits", [8, 4])
def test_dequantised_within_one_step(bits):
    weight = torch.randn(64, 48, generator=torch.Generator().manual_seed(bits)) * torch.linspace(0.01, 3, 64)[:, None]
    values, scale = quantize(weight, bits)
    assert scale.dtype == torch.float16 and scale.shape == (64,) and values.dtype == torch.int8
    assert values.shape == (64, 48 if bits == 8 else 24)
    levels = 2 ** (bits - 1) - 1
    assert torch.allclose(scale.float(), (weight.abs().amax(1) / levels).half().float())
    error = (dequantize(values, scale, bits) - weight).abs()
    assert (error <= scale.float()[:, None] * 0.5 + 1e-3 * scale.float()[:, None]).all()  # half a step (+fp16 scale)
    assert error.max() > 0  # it is lossy, so the check above can fail


def test_int4_packing_round_trips_exactly():
    every = torch.arange(-8, 8, dtype=torch.int8)
    pairs = torch.cartesian_prod(every, every).reshape(16, 32)  # every (high, low) pair of nibbles
    packed = pack_int4(pairs)
    assert packed.shape == (16, 16) and torch.equal(unpack_int4(packed), pairs)
    # GLM-130B's layout: even column in the high nibble.
    assert int(pack_int4(torch.tensor([[3, -2]], dtype=torch.int8))[0, 0]) == (3 << 4) | (-2 & 0xF)


@pytest.mark.parametrize("scheme,bits,limit", [("int8", 8, 0.005), ("int4", 4, 0.05)])
def test_quantised_sat_shards_and_logit_error(capsys, tmp_path, train_ckpt, tiny_workdir, scheme, bits, limit):
    convert(capsys, train_ckpt, tmp_path / "q", "--to", "sat", "--tp", "2", "--quantize", scheme)
    weights = torch.load(tiny_workdir / "weights.pt")
    shard = torch.load(tmp_path / "q" / "12" / "mp_rank_01_model_states.pt", weights_only=True)["module"]
    # Row-parallel dense: scales are per row of rank 1's column half, not of the whole row.
    original = weights["decoder.layers.3.self_attention.linear_proj.weight"][:, 32:]
    values, scale = quantize(original, bits)
    assert torch.equal(shard["transformer.layers.3.attention.dense.weight"], values)
    assert torch.equal(shard["transformer.layers.3.attention.dense.weight_scale"], scale)
    assert shard["transformer.word_embeddings.weight"].dtype == torch.float16  # the rest stays FP16
    code, out, err = ckpt(capsys, "compare", train_ckpt, tmp_path / "q", "--inputs", tiny_workdir / "inputs.pt",
                          *HEADS_ARGS)
    assert code == 0, err
    relative = float(re.search(r"max relative diff ([\d.e+-]+)", out).group(1))
    assert 0 < relative < limit
    code, _, _ = ckpt(capsys, "compare", train_ckpt, tmp_path / "q", "--inputs", tiny_workdir / "inputs.pt",
                      "--max-abs-diff", "1e-9", *HEADS_ARGS)
    assert code == 1  # a failed check, not bad input


def test_quantised_safetensors_round_trip_through_sat(capsys, tmp_path, train_ckpt):
    convert(capsys, train_ckpt, tmp_path / "st", "--to", "safetensors", "--quantize", "int4")
    convert(capsys, tmp_path / "st", tmp_path / "sat", "--to", "sat", "--quantize", "int4")
    code, out, _ = ckpt(capsys, "inspect", tmp_path / "sat", *HEADS_ARGS)
    assert code == 0 and "quantization      int4" in out
    st = torch.load(tmp_path / "sat" / "12" / "mp_rank_00_model_states.pt", weights_only=True)["module"]
    flat = pytest.importorskip("safetensors.torch").load_file(str(tmp_path / "st" / "model.safetensors"))
    # Requantising dequantised INT4 weights reproduces them exactly (TP1: the same rows).
    assert torch.equal(st["transformer.layers.0.mlp.dense_h_to_4h.weight"],
                       flat["decoder.layers.0.mlp.linear_fc1.weight"])


def test_forward_keeps_a_quantised_checkpoint_quantised_with_the_dequantised_logits(capsys, tmp_path, train_ckpt,
                                                                                   tiny_workdir, monkeypatch):
    """glm-ckpt forward/compare run an INT4 checkpoint through the quantized layers (int8 storage,
    two values per byte): the logits equal those of the same weights dequantised into a plain model."""
    import megatron_glm.model.build as model_build
    import megatron_glm.quantization.load as quantized_load
    from checkpoints import forward
    from checkpoints.convert import ReadOptions, open_checkpoint

    convert(capsys, train_ckpt, tmp_path / "q", "--to", "sat", "--quantize", "int4")
    batches, _ = forward.load_inputs(str(tiny_workdir / "inputs.pt"))
    options = ReadOptions(num_attention_heads=int(HEADS_ARGS[-1]))
    built, build = [], model_build.build_model
    monkeypatch.setattr(model_build, "build_model", lambda *a, **k: built.append(build(*a, **k)) or built[-1])
    quantized = forward.model_logits(open_checkpoint(str(tmp_path / "q"), options), batches)
    layers = [module for _, module in quantized_load.quantized_modules(built[0])]
    assert layers and all(m.weight.dtype == torch.int8 and m.bits == 4 for m in layers)
    reader = open_checkpoint(str(tmp_path / "q"), options)
    reader.info.quantization = None  # the same weights, dequantised on read, in a plain model
    plain = forward.model_logits(reader, batches)
    assert all(torch.equal(a, b) for a, b in zip(quantized, plain))
