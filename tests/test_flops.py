"""FLOP accounting (megatron_glm/training/flops.py): hand-computed values, GLM-130B consistency."""

from __future__ import annotations

import math

import pytest

from megatron_glm.config.schema import ModelConfig
from megatron_glm.training.flops import (
    PEAK_TFLOPS,
    device_peak_tflops,
    forward_flops_per_sequence,
    glm130b_throughput_check,
    hardware_flops_per_sequence,
    measure_cpu_matmul_peak_tflops,
    mfu,
    model_flops_per_sequence,
)

# h=4, f=8, V=16, L=2, s=3
TINY = ModelConfig(num_layers=2, hidden_size=4, num_attention_heads=2, ffn_hidden_size=8,
                   vocab_size=16, padded_vocab_size=16, seq_length=3)


def test_tiny_by_hand():
    # per layer and token: 2*(3*16 + 16 + 2*4*8 + 8*4) = 2*(48+16+64+32) = 320; attention 4*3*4 = 48
    # per token forward: 2*(320+48) + head 2*4*16 = 736 + 128 = 864; per sequence (3 tokens) 2592
    parts = forward_flops_per_sequence(TINY, 3)
    assert parts["dense"] == 2 * 320 * 3
    assert parts["attention"] == 2 * 48 * 3
    assert parts["head"] == 128 * 3
    assert model_flops_per_sequence(TINY, 3) == 3 * 2592 == 7776
    # full: + one forward of the layers (2 * 368 * 3 = 2208); selective: + attention (2 * 48 * 3 = 288)
    assert hardware_flops_per_sequence(TINY, 3, "full") == 7776 + 2208
    assert hardware_flops_per_sequence(TINY, 3, "selective") == 7776 + 288
    assert hardware_flops_per_sequence(TINY, 3, "full", recompute_num_layers=1) == 7776 + 1104


def test_default_ffn_and_vocab_padding_are_used():
    model = ModelConfig(num_layers=1, hidden_size=64, num_attention_heads=4, vocab_size=500)
    assert model.resolved_ffn_hidden_size == 192 and model.resolved_padded_vocab_size == 512
    h, f, v, s = 64, 192, 512, 16
    expected = 3 * s * (2 * (4 * h * h + 3 * h * f) + 4 * s * h + 2 * h * v)
    assert model_flops_per_sequence(model, s) == expected


def test_hardware_at_least_model():
    model = ModelConfig(num_layers=4, hidden_size=128, num_attention_heads=8)
    base = model_flops_per_sequence(model, 256)
    assert hardware_flops_per_sequence(model, 256, "none") == base
    assert base < hardware_flops_per_sequence(model, 256, "selective") < \
        hardware_flops_per_sequence(model, 256, "full")
    with pytest.raises(ValueError):
        hardware_flops_per_sequence(model, 256, "partial")


def test_glm130b_reported_throughput():
    """docs/glm130b.md §3: 134 TFLOP/s per GPU (hardware, full recompute) at 88.5 s/iter, batch 4224 x 2048
    tokens, 768 A100s. Tolerance +-5%; our formula lands at 134.15 (+0.1%)."""
    check = glm130b_throughput_check()
    print(f"\nGLM-130B check: hardware {check['hardware_tflops']:.2f} TFLOP/s/GPU (reported 134, "
          f"{100 * check['relative_error']:+.2f}%), model {check['model_tflops']:.2f}, "
          f"HFU {100 * check['hfu']:.1f}% (paper 43.3), MFU {100 * check['mfu']:.1f}% (paper 32.5)")
    assert abs(check["relative_error"]) < 0.05
    assert abs(check["hardware_tflops"] - 134.15) < 0.01
    assert abs(check["mfu"] - 0.325) < 0.005 and abs(check["hfu"] - 0.433) < 0.005


def test_glm130b_preset_matches_check_model():
    from megatron_glm.config.loader import load_model_config

    preset = load_model_config("glm-130b")
    assert glm130b_throughput_check(preset) == glm130b_throughput_check()
    # ~128.7B parameters: 6 * params per token is close to our model FLOPs per token (attention ~2.7%)
    per_token = model_flops_per_sequence(preset, 2048) / 2048
    assert 1.0 < per_token / (6 * 128.7e9) < 1.04


def test_peak_lookup():
    assert PEAK_TFLOPS == {"A100": 312.0, "H100": 989.0, "H200": 989.0}
    assert device_peak_tflops("NVIDIA A100-SXM4-40GB") == 312.0
    assert device_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert device_peak_tflops("NVIDIA H200") == 989.0
    assert device_peak_tflops("cpu") is None
    assert mfu(100.0, 312.0) == pytest.approx(100 / 312)
    assert math.isnan(mfu(1.0, None))
    with pytest.raises(ValueError):
        mfu(1.0, 0.0)


def test_cpu_matmul_peak():
    rate = measure_cpu_matmul_peak_tflops(seconds=0.2, size=256)
    assert rate > 0 and math.isfinite(rate)
    assert measure_cpu_matmul_peak_tflops(seconds=0.2, size=256) == rate  # cached per process
    print(f"\nCPU fp32 matmul: {rate * 1e3:.1f} GFLOP/s")
