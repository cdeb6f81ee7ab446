"""Weight-only INT8/INT4 inference (megatron_glm.quantization, docs/quantization.md): GLM-130B's INT4
nibble order, quantized layers equal dequantize-then-matmul, glm-ckpt's quantized files load without
being dequantized (and the TP they can and cannot be split to), quantize-on-load equals the files
glm-ckpt writes, the quality order INT8 < INT4 on a fixed checkpoint, bad files, and peak memory."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from checkpoints.formats.base import WriteOptions
from checkpoints.formats.sat import SatWriter
from checkpoints.quantize import dequantize, quantize
from generation_fixtures import SPECIAL, tiny_shape, tiny_weights, write_safetensors
from megatron_glm.inference import InferenceError, load_inference_model
from megatron_glm.model.describe import _single_process_groups
from megatron_glm.model.tp_shard import shard
from megatron_glm.quantization import kernels
from megatron_glm.quantization.layers import QUANTIZED_LINEAR
from megatron_glm.quantization.load import local_quantized, quantized_modules, stored_pieces

VOCAB = 128
LINEAR = ("linear_qkv.weight", "linear_proj.weight", "linear_fc1.weight", "linear_fc2.weight")
BITS = {"int8": 8, "int4": 4}


def mild_weights(glm, seed: int = 0):
    """tiny_weights with the linear layers at std 1/sqrt(fan-in): a model whose logits respond
    smoothly to weight noise (tiny_weights' 3/sqrt(n) is chaotic: any perturbation changes everything)."""
    weights = tiny_weights(glm, seed)
    return {k: v / 3 if k.endswith(LINEAR) else v for k, v in weights.items()}


def write_sat(root: Path, glm, weights, tp: int, scheme) -> Path:
    """What `glm-ckpt convert --to sat --tp TP --quantize SCHEME` writes (its SatWriter)."""
    root.mkdir(parents=True)
    writer = SatWriter(root, glm, WriteOptions(tp=tp, quantize=scheme, dtype="fp32"), 7,
                       {k: v.dtype for k, v in weights.items()})
    for key, spec, layer in glm.entries():
        writer.write(key, spec, layer, weights[key])
    writer.close()
    return root


def inputs(length: int = 12, batch: int = 2):
    generator = torch.Generator().manual_seed(5)
    tokens = torch.randint(10, VOCAB, (batch, length), generator=generator)
    positions = torch.arange(length).repeat(batch, 1)
    mask = ~torch.ones(length, length, dtype=torch.bool).tril()
    mask[:, :4] = False  # a bidirectional prefix of 4, GLM's layout
    return tokens, positions, mask[None, None].expand(batch, 1, length, length).clone()


def load(path, **kwargs):
    return load_inference_model(str(path), special_token_ids=SPECIAL, max_sequence_length=32,
                                num_attention_heads=4, **kwargs)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("quantized")
    glm = tiny_shape(VOCAB)
    weights = mild_weights(glm)
    write_safetensors(root / "full", glm, weights)
    for scheme in ("int8", "int4"):
        write_sat(root / f"sat-{scheme}-tp1", glm, weights, 1, scheme)
        write_sat(root / f"sat-{scheme}-tp2", glm, weights, 2, scheme)
    return root, glm, weights


# -------------------------------------------------------------------------------------------------
# Packing and the layers


def test_int4_nibble_order_and_round_trip():
    every = torch.arange(-8, 8, dtype=torch.int8)
    pairs = torch.cartesian_prod(every, every).reshape(16, 32)
    packed = kernels.pack_int4(pairs)
    assert torch.equal(kernels.unpack_int4(packed), pairs)
    # GLM-130B (cuda/quantization.cu): even column in the high nibble, odd column in the low one
    assert kernels.pack_int4(torch.tensor([[3, -2]], dtype=torch.int8)).tolist() == [[(3 << 4) | 0xE]]
    assert kernels.pack_int4(torch.tensor([[-8, 7]], dtype=torch.int8)).tolist() == [[-128 | 7]]


def _layer(kind: str, scheme: str, rows: int, columns: int, bias: bool = True, skip_bias_add: bool = False,
           dtype=torch.float32):
    config = SimpleNamespace(use_cpu_initialization=True, params_dtype=dtype, sequence_parallel=False)
    column, row = QUANTIZED_LINEAR[scheme]
    cls = column if kind == "column" else row
    return cls(columns, rows, config=config, bias=bias, skip_bias_add=skip_bias_add, gather_output=False,
               input_is_parallel=True)


@pytest.mark.parametrize("scheme", ["int8", "int4"])
@pytest.mark.parametrize("kind", ["column", "row"])
def test_layer_equals_dequantize_then_matmul(scheme, kind):
    bits = BITS[scheme]
    generator = torch.Generator().manual_seed(bits)
    weight = torch.randn(24, 40, generator=generator) * torch.linspace(0.1, 2, 24)[:, None]
    bias = torch.randn(24, generator=generator)
    x = torch.randn(5, 3, 40, generator=generator)
    values, scale = quantize(weight, bits)
    with _single_process_groups():
        layer = _layer(kind, scheme, 24, 40, skip_bias_add=kind == "row")
        layer.set_quantized(values, scale)
        layer.bias.data.copy_(bias)
        output, returned_bias = layer(x)
        expected = x @ dequantize(values, scale, bits).t()
        if kind == "column":
            assert returned_bias is None
            assert torch.equal(output, expected + bias)  # fp32: exact (the dequantized values are exact)
        else:
            assert returned_bias is layer.bias and torch.equal(output, expected)
        assert layer.weight.dtype == torch.int8 and layer.weight.shape == (24, 40 * bits // 8)
        assert not any(p.dtype.is_floating_point and p.numel() >= weight.numel() for p in layer.parameters())
        # bf16 activations: the weight is dequantized to bf16 scratch (one rounding of the exact product)
        out16 = kernels.quantized_matmul(x.bfloat16(), layer.weight, layer.weight_scale, bits)
        assert out16.dtype == torch.bfloat16
        assert torch.equal(out16, x.bfloat16() @ dequantize(values, scale, bits).bfloat16().t())
        assert torch.allclose(out16.float(), expected, rtol=0.05, atol=0.25)


def test_kernel_hook_selection_and_fallback(monkeypatch):
    x, (values, scale) = torch.randn(3, 16), quantize(torch.randn(8, 16), 8)
    calls = []
    kernels.register_kernel("test-kernel", lambda x2d, w, s, bits: calls.append(bits) or None)
    monkeypatch.setenv("GLM_QUANT_KERNEL", "test-kernel")
    expected = kernels.torch_quantized_matmul(x, values, scale, 8)
    assert torch.equal(kernels.quantized_matmul(x, values, scale, 8), expected)
    assert calls == [8]  # asked, declined, torch path used
    # torch's fused INT8 op where it applies, equal to the torch path within bf16 rounding; shapes it
    # gets wrong (bf16, one token, 24 columns on CPU) fall back to the torch path
    monkeypatch.setenv("GLM_QUANT_KERNEL", "int8pack")
    for columns in (24, 64):
        x16, (v, s) = torch.randn(1, columns).bfloat16(), quantize(torch.randn(192, columns), 8)
        got, want = kernels.quantized_matmul(x16, v, s, 8).float(), x16.float() @ dequantize(v, s, 8).t()
        assert float((got - want).abs().max() / want.abs().max()) < 0.02, columns
    monkeypatch.setenv("GLM_QUANT_KERNEL", "no-such-kernel")
    with pytest.raises(ValueError, match="no-such-kernel"):
        kernels.quantized_matmul(x, values, scale, 8)


def test_int4_needs_an_even_number_of_local_columns():
    with _single_process_groups(), pytest.raises(ValueError, match="odd"):
        _layer("row", "int4", 8, 15)


# -------------------------------------------------------------------------------------------------
# Loading


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_glm_ckpt_files_stay_quantized_and_equal_quantize_on_load(tiny, scheme):
    """A TP1 SAT file from glm-ckpt loads as the stored bytes; a full-precision checkpoint quantized
    on load holds the same bytes; both give the same logits, and equal a full-precision model of the
    dequantized weights."""
    root, glm, weights = tiny
    bits = BITS[scheme]
    stored = load(root / f"sat-{scheme}-tp1", rope_precision="fp32")
    on_load = load(root / "full", quantize=scheme)
    plain = load(root / "full", quantize="none")
    try:
        assert stored.quantization == on_load.quantization == scheme and plain.quantization is None
        for (name, module), (_, other) in zip(quantized_modules(stored.model), quantized_modules(on_load.model)):
            key = name + ".weight"
            values, scale = quantize(weights[key], bits)
            assert torch.equal(module.weight, values) and torch.equal(module.weight_scale, scale), key
            assert torch.equal(other.weight, values) and torch.equal(other.weight_scale, scale), key
        assert len(quantized_modules(stored.model)) == 4 * glm.num_layers
        assert not quantized_modules(plain.model)
        tokens, positions, mask = inputs()
        a, b = stored.logits(tokens, positions, mask), on_load.logits(tokens, positions, mask)
        assert torch.equal(a, b)
        # the KV-cache path runs through the same layers
        cache = on_load.new_cache(2, 12)
        step = on_load.extend(cache, tokens[:, :8], positions[:, :8], mask[:, :, :8, :8])
        step = on_load.extend(cache, tokens[:, 8:9], positions[:, 8:9], mask[:, :, 8:9, :9])
        assert torch.allclose(step[:, 0], b[:, 8], atol=3e-4, rtol=0)
    finally:
        for model in (stored, on_load, plain):
            model.close()


def test_quantized_model_equals_the_dequantized_model(tiny, tmp_path):
    root, glm, weights = tiny
    tokens, positions, mask = inputs()
    for scheme, bits in BITS.items():
        dequantized = {k: dequantize(*quantize(v, bits), bits) if k.endswith(LINEAR) else v for k, v in weights.items()}
        reference = load(write_safetensors(tmp_path / scheme, glm, dequantized))
        quantized = load(root / "full", quantize=scheme)
        try:
            assert torch.allclose(quantized.logits(tokens, positions, mask), reference.logits(tokens, positions, mask),
                                  atol=1e-5, rtol=0)
        finally:
            quantized.close()
            reference.close()


def test_tp2_files_reshard_for_tp2_and_tp4_and_refuse_tp1(tiny):
    """Column-parallel weights and their row scales split at any TP; row-parallel ones carry one scale
    per row of each stored shard: TP2 and TP4 ranks take (slices of) one stored shard, TP1 cannot."""
    root, glm, weights = tiny
    from checkpoints.convert import ReadOptions, open_checkpoint

    for scheme, bits in BITS.items():
        reader = open_checkpoint(str(root / f"sat-{scheme}-tp2"), ReadOptions(num_attention_heads=4))
        try:
            for key, spec, _ in reader.glm.entries():
                if not spec.quantize:
                    continue
                pieces = stored_pieces(reader, key, spec)
                assert pieces is not None and len(pieces[0]) == 2
                for world in (2, 4):
                    for rank in range(world):
                        values, scale = local_quantized(key, spec, glm, bits, *pieces, rank, world)
                        local = shard(weights[key], rank, world, spec.mapping.dim, spec.mapping.stride)
                        if spec.mapping.dim == 0 or world == 2:  # exactly GLM-130B's per-shard quantization
                            want_values, want_scale = quantize(local, bits)
                            assert torch.equal(values, want_values) and torch.equal(scale, want_scale), (key, world)
                        else:  # TP4 from TP2 row-parallel: a slice of the TP2 shard, with its scales
                            two = quantize(shard(weights[key], rank // 2, 2, 1), bits)
                            width = values.shape[1]
                            assert torch.equal(values, two[0][:, (rank % 2) * width:(rank % 2 + 1) * width])
                            assert torch.equal(scale, two[1])
                        assert torch.allclose(dequantize(values, scale, bits), local,
                                              atol=float(scale.float().max()) * 0.51)
                if spec.mapping.dim == 1:
                    with pytest.raises(InferenceError, match=r"TP2 quantized checkpoint .* --tp 1 --quantize"):
                        local_quantized(key, spec, glm, bits, *pieces, 0, 1)
        finally:
            reader.close()
    # a TP1 file (GLM-130B's scales of whole rows) at TP2: row slices keep their row's scale
    reader = open_checkpoint(str(root / "sat-int4-tp1"), ReadOptions(num_attention_heads=4))
    try:
        for key, spec, _ in reader.glm.entries():
            if spec.quantize:
                whole = quantize(weights[key], 4)
                for rank in range(2):
                    values, scale = local_quantized(key, spec, glm, 4, *stored_pieces(reader, key, spec), rank, 2)
                    if spec.mapping.dim == 1:
                        width = whole[0].shape[1] // 2
                        assert torch.equal(values, whole[0][:, rank * width:(rank + 1) * width])
                        assert torch.equal(scale, whole[1])
                    else:
                        assert torch.equal(values, shard(whole[0], rank, 2, 0, spec.mapping.stride))
    finally:
        reader.close()
    with pytest.raises(InferenceError, match=r"linear_proj\.weight.*Run it at TP2"):
        load(root / "sat-int4-tp2")
    model = load(root / "sat-int4-tp2", quantize="none")  # dequantized: any TP
    assert model.quantization is None
    model.close()


def test_quality_int8_is_nearly_lossless_and_int4_small(tiny):
    """The expected order on this fixed checkpoint (docs/quantization.md records the numbers)."""
    root, _, _ = tiny
    tokens, positions, mask = inputs(length=16, batch=4)
    full = load(root / "full")
    reference = full.logits(tokens, positions, mask)
    full.close()
    errors = {}
    for scheme in ("int8", "int4"):
        model = load(root / "full", quantize=scheme)
        logits = model.logits(tokens, positions, mask)
        model.close()
        errors[scheme] = float((logits - reference).norm() / reference.norm())
        agree = (logits.argmax(-1) == reference.argmax(-1)).float().mean()
        assert agree > (0.97 if scheme == "int8" else 0.6), (scheme, float(agree))
    assert errors["int8"] < errors["int4"] / 4, errors
    assert errors["int8"] < 0.02 and errors["int4"] < 0.3, errors


def _tamper(path: Path, key: str, change) -> None:
    file = next(path.glob("*/mp_rank_00_model_states.pt"))
    state = torch.load(file, weights_only=True)
    state["module"][key] = change(state["module"][key])
    torch.save(state, file)


def test_bad_scales_and_packing_name_the_tensor(tiny, tmp_path):
    root, glm, weights = tiny
    write_sat(tmp_path / "scales", glm, weights, 1, "int8")
    _tamper(tmp_path / "scales", "transformer.layers.1.mlp.dense_4h_to_h.weight_scale", lambda s: s[:-2].clone())
    with pytest.raises(InferenceError, match=r"decoder\.layers\.1\.mlp\.linear_fc2\.weight.*_scale: expected one .* "
                                             r"per row \[64\]"):
        load(tmp_path / "scales")
    write_sat(tmp_path / "packing", glm, weights, 1, "int8")
    _tamper(tmp_path / "packing", "transformer.layers.0.attention.dense.weight",
            lambda w: kernels.pack_int4(w.clamp(-7, 7)))
    with pytest.raises(InferenceError, match=r"linear_proj\.weight in .*mp_rank_00.*expected INT8 .*packing is INT4"):
        load(tmp_path / "packing")
    with pytest.raises(InferenceError, match="quantize must be int8, int4 or none"):
        load(root / "full", quantize="int3")


# -------------------------------------------------------------------------------------------------
# Peak memory

def _anonymous_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    pytest.skip("no RssAnon in /proc/self/status")


def _peak_while(fn):
    """(result, peak anonymous memory above the start while fn runs), sampled every 0.5 ms."""
    import threading
    import time

    base, peak, stop = _anonymous_bytes(), [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _anonymous_bytes())
            time.sleep(0.0005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        result = fn()
    finally:
        stop.set()
        thread.join()
    return result, max(peak[0], _anonymous_bytes()) - base


def test_loading_peak_memory_stays_near_the_quantized_size(tmp_path):
    """8 layers of hidden 384: 75 MB of fp32 linear weights, 9.4 MB in INT4. Loading an INT4 SAT
    file, or quantizing a full-precision file on load, stays within the quantized size plus a few
    layers of scratch. Anonymous memory is sampled: the pages of memory-mapped checkpoint files are
    the page cache's, not the model's."""
    import gc

    from checkpoints.formats.safetensors_format import SafetensorsWriter
    from checkpoints.shapes import GLMShape

    glm = GLMShape(num_layers=8, hidden_size=384, num_attention_heads=8, ffn_hidden_size=1536,
                   padded_vocab_size=VOCAB, vocab_size=VOCAB)
    dtypes = {k: torch.float32 for k, _, _ in glm.entries()}
    (tmp_path / "full").mkdir()
    (tmp_path / "int4").mkdir()
    full = SafetensorsWriter(tmp_path / "full", glm, WriteOptions(), None, dtypes)
    sat = SatWriter(tmp_path / "int4", glm, WriteOptions(quantize="int4", dtype="fp32"), 1, dtypes)
    for index, (key, spec, layer) in enumerate(glm.entries()):
        shape = tuple(spec.shape(glm))
        count = 1
        for size in shape:
            count *= size
        value = torch.arange(count, dtype=torch.float32).mul_(0.618 + index).remainder_(2.0).sub_(1.0).reshape(shape)
        full.write(key, spec, layer, value)
        sat.write(key, spec, layer, value)
    full.close()
    sat.close()
    layer_fp32 = 4 * (4 * 384 * 384 + 3 * 384 * 1536)
    model_fp32 = glm.num_layers * layer_fp32
    write_safetensors(tmp_path / "tiny", tiny_shape(VOCAB), tiny_weights(tiny_shape(VOCAB)))
    load(tmp_path / "tiny", quantize="int4").close()  # imports and one-time allocations, not measured
    gc.collect()
    for source, quantize_mode in (("int4", None), ("full", "int4")):
        model, peak = _peak_while(lambda: load(tmp_path / source, quantize=quantize_mode))
        held = sum(b.numel() * b.element_size() for b in model.model.buffers())
        model.close()
        del model
        gc.collect()
        assert held < model_fp32 / 7
        assert peak < held + 2 * layer_fp32 + 8 * 2 ** 20, (source, peak, held, layer_fp32)
        assert peak < model_fp32 / 2, (source, peak, model_fp32)


# -------------------------------------------------------------------------------------------------
# glm-eval / glm-generate --quantize


def test_glm_eval_and_generate_quantize(tiny, tmp_path, capsys):
    """glm-eval scores of a multiple-choice and an LM task move little under --quantize int8, more
    under int4 (the order is asserted, not the numbers); glm-generate runs quantized."""
    import json

    from megatron_glm.cli.evaluate import main as glm_eval
    from megatron_glm.cli.generate import main as glm_generate

    root, _, _ = tiny
    special = ",".join(f"{k}={v}" for k, v in SPECIAL.items())
    tasks = tmp_path / "tasks"
    (tasks / "choice").mkdir(parents=True)
    (tasks / "lm").mkdir()
    generator = torch.Generator().manual_seed(2)
    rows = [{"inputs": torch.randint(10, VOCAB, (6,), generator=generator).tolist(),
             "choices": [torch.randint(10, VOCAB, (2,), generator=generator).tolist() for _ in range(3)],
             "label": i % 3} for i in range(12)]
    (tasks / "choice" / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tasks / "lm" / "a.jsonl").write_text(json.dumps({"text": torch.randint(10, VOCAB, (60,), generator=generator)
                                                      .tolist(), "text_pretokenized": "x"}) + "\n")
    (tasks / "choice.yaml").write_text("name: choice\ntype: mul\npath: choice\nmicro-batch-size: 4\n"
                                       "max_seq_length: 32\n")
    (tasks / "lm.yaml").write_text("name: lm\ntype: lm\npath: lm\nuse_task_mask: true\nmax_seq_length: 24\n"
                                   "generation_length: 8\n")
    scores, predictions = {}, {}
    for mode in ("none", "int8", "int4"):
        out = tmp_path / f"{mode}.json"
        assert glm_eval(["run", str(root / "full"), "--tasks", str(tasks), "--special-token-ids", special, "--quiet",
                         "--quantize", mode, "--output", str(out),
                         "--predictions", str(tmp_path / f"{mode}.jsonl")]) == 0
        result = json.loads(out.read_text())
        assert result["settings"]["quantization"] == (None if mode == "none" else mode)
        scores[mode] = result["tasks"]["lm"]["groups"]["all"]["PPL"]["average"]
        predictions[mode] = [json.loads(line) for line in (tmp_path / f"{mode}.jsonl").read_text().splitlines()]
    choice = {mode: [p["scores"] for p in lines if p["task"] == "choice"] for mode, lines in predictions.items()}
    drift = {mode: float((torch.tensor(choice[mode]) - torch.tensor(choice["none"])).abs().max())
             for mode in ("int8", "int4")}
    assert drift["int8"] < drift["int4"], drift
    loss = {mode: [p["scores"]["loss"] for p in lines if p["task"] == "lm"][0] for mode, lines in predictions.items()}
    change = {mode: abs(loss[mode] / loss["none"] - 1) for mode in ("int8", "int4")}  # perplexity's log
    assert change["int8"] < change["int4"] and change["int8"] < 0.002 and change["int4"] < 0.05, (loss, change)
    assert all(value > 0 for value in scores.values())
    capsys.readouterr()
    assert glm_generate([str(root / "full"), "--input-ids", "20 21 22 4", "--special-token-ids", special,
                         "--max-new-tokens", "4", "--quantize", "int4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])


# -------------------------------------------------------------------------------------------------
# glm-launch plan --inference


def test_inference_plan_reproduces_glm130b_hardware_claims(capsys):
    """GLM-130B: INT4 on 4 x RTX 3090, INT8 on 8 x RTX 3090, FP16 on 8 x A100-40GB; not INT8 on 4 x 3090."""
    import json

    from launch.cli import main as glm_launch

    def plan(*args):
        code = glm_launch(["plan", "--inference", "--model", "glm-130b", "--json", *args])
        out, err = capsys.readouterr()
        return code, (json.loads(out) if out.strip() else None), err

    code, result, _ = plan("--quantize", "int4", "--gpus", "4xrtx3090")
    assert code == 0 and result["fits"] and result["tp"] == 4 and result["smallest_fitting_tp"] == 4
    assert 14.6 < result["linear_weights_gb"] < 14.9  # 126.8 B linear parameters / 4 GPUs / 2 per byte = 15.85e9 B
    assert 1.5 < result["kv_cache_gb"] < 1.7  # 70 layers x 2 x 2048 x 3072 x 2 bytes
    code, result, _ = plan("--quantize", "int8", "--gpus", "8xrtx3090")
    assert code == 0 and result["fits"] and result["smallest_fitting_tp"] == 8
    code, result, _ = plan("--quantize", "int8", "--gpus", "4xrtx3090")
    assert code == 1 and not result["fits"] and result["smallest_fitting_tp"] is None
    code, result, _ = plan("--gpus", "8xa100-40gb")
    assert code == 0 and result["fits"] and result["quantize"] is None
    code, result, _ = plan("--quantize", "int4", "--gpus", "8xrtx2080ti", "--seq", "1024")
    assert code == 0 and result["fits"]
    code, result, _ = plan("--quantize", "int4", "--gpus", "1xh200")
    assert code == 0 and result["fits"] and result["tp"] == 1
    code, _, err = plan("--gpus", "4xgtx480")
    assert code == 2 and "COUNTxCARD" in err and "rtx3090" in err
    assert glm_launch(["plan", "--model", "glm-130b"]) == 2  # training plans still need --cluster
    assert "--cluster" in capsys.readouterr().err


_TRITON_CHECK = """
import torch
from megatron_glm.quantization import kernels
torch.manual_seed(0)
for bits in (8, 4):
    for m, n, k in ((1, 70, 96), (33, 130, 200)):
        values, scale = kernels.quantize_rows(torch.randn(n, k), bits)
        for dtype, tolerance in ((torch.float32, 1e-5), (torch.float16, 2e-3)):
            x = torch.randn(m, k).to(dtype)
            kernels.set_kernel("triton")
            got = kernels.quantized_matmul(x, values, scale, bits)
            kernels.set_kernel(None)
            want = x.float() @ kernels.dequantize(values, scale, bits).t()
            assert got is not None and got.dtype == dtype and got.shape == (m, n)
            error = float((got.float() - want).abs().max() / want.abs().max())
            assert error < tolerance, (bits, m, n, k, dtype, error)
print("ok")
"""


def test_triton_kernel_in_the_interpreter():
    """The fused Triton kernel (INT8 and GLM-130B's packed INT4, odd sizes, one token) against
    dequantize-then-matmul, run by Triton's CPU interpreter (bf16 dots are not emulated there: GPU)."""
    import importlib.util
    import os
    import subprocess
    import sys

    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed (it is in NVIDIA's containers and on PyPI)")
    result = subprocess.run([sys.executable, "-c", _TRITON_CHECK], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, TRITON_INTERPRET="1"))
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]
