"""The whole model (fp32, megatron-core code paths) against the float64 reference of the spec."""

import torch

from reference_glm import reference_logits

TINY_LAYERS, TINY_HEADS = 8, 4


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected).abs().max() / expected.abs().max())


def test_logits_match_float64_reference(tiny_workdir):
    weights = torch.load(tiny_workdir / "weights.pt")
    inputs = torch.load(tiny_workdir / "inputs.pt")
    logits = torch.load(tiny_workdir / "init_logits.pt")
    for x, ours in list(zip(inputs, logits))[:2]:
        expected = reference_logits(weights, x["tokens"], x["position_ids"], x["attention_mask"],
                                    num_layers=TINY_LAYERS, num_heads=TINY_HEADS)
        assert ours.shape == expected.shape
        assert _relative_error(ours, expected) < 1e-5


def test_reference_is_sensitive_to_the_formulas(tiny_workdir):
    """Guard against a vacuous comparison: a wrong GeGLU half or no alpha moves the logits a lot."""
    weights = torch.load(tiny_workdir / "weights.pt")
    x = torch.load(tiny_workdir / "inputs.pt")[0]
    ours = torch.load(tiny_workdir / "init_logits.pt")[0]
    swapped = dict(weights)
    for layer in range(TINY_LAYERS):
        key = f"decoder.layers.{layer}.mlp.linear_fc1.weight"
        first, second = weights[key].chunk(2, dim=0)
        swapped[key] = torch.cat([second, first])
    wrong = reference_logits(swapped, x["tokens"], x["position_ids"], x["attention_mask"],
                             num_layers=TINY_LAYERS, num_heads=TINY_HEADS)
    assert _relative_error(ours, wrong) > 1e-3


def test_embedding_gradient_shrink(tiny_workdir):
    grads = torch.load(tiny_workdir / "egs_grads.pt")
    full, both, input_only = grads["alpha1"], grads["alpha01_both"], grads["alpha01_input_only"]
    key = "embedding.word_embeddings.weight"
    # Forward unchanged, so every other gradient is identical; the tied weight's gradient scales.
    for name in full:
        if name != key:
            assert _relative_error(both[name], full[name].double()) < 1e-5, name
            assert _relative_error(input_only[name], full[name].double()) < 1e-5, name
    assert _relative_error(both[key], 0.1 * full[key].double()) < 1e-5
    # Input side only: 0.1 * g_in + g_out, far from both "no shrink" and "shrink everywhere".
    assert _relative_error(input_only[key], full[key].double()) > 1e-2
    assert _relative_error(input_only[key], both[key].double()) > 1e-2


def test_sdpa_backend_equals_local_attention(tiny_workdir):
    """torch SDPA with GLM's boolean mask reproduces the local FP32-softmax attention."""
    sdpa = torch.load(tiny_workdir / "sdpa.pt")
    local_logits = torch.load(tiny_workdir / "init_logits.pt")
    for ours, reference in zip(sdpa["logits"], local_logits):
        assert _relative_error(ours, reference.double()) < 1e-5
    local_grads = torch.load(tiny_workdir / "egs_grads.pt")["alpha1"]
    for name, grad in local_grads.items():
        assert _relative_error(sdpa["grads"][name], grad.double()) < 1e-5, name
