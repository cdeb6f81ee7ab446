"""TP2 and TP4 reproduce TP1: logits, every parameter gradient, and the attention structure."""

import pytest
import torch

from glm_inputs import build_inputs
from multirank.harness import run_ranks

pytestmark = pytest.mark.multirank


def _relative_error(actual, expected) -> float:
    scale = expected.double().abs().max().clamp(min=1e-30)
    return float((actual.double() - expected.double()).abs().max() / scale)


@pytest.fixture(scope="module")
def tp_results(tiny_workdir):
    run_ranks("tp_equivalence", 4, tiny_workdir, timeout_s=400)
    return {tp: torch.load(tiny_workdir / f"tp{tp}.pt") for tp in (1, 2, 4)}


@pytest.mark.parametrize("tp", [2, 4])
def test_logits_equal_tp1(tp_results, tp):
    for ours, reference in zip(tp_results[tp]["logits"], tp_results[1]["logits"]):
        assert _relative_error(ours, reference) < 1e-5


@pytest.mark.parametrize("tp", [2, 4])
def test_every_gradient_equals_tp1(tp_results, tp):
    reference = tp_results[1]["grads"]
    grads = tp_results[tp]["grads"]
    assert set(grads) == set(reference)
    for name in reference:
        assert grads[name].shape == reference[name].shape, name
        assert _relative_error(grads[name], reference[name]) < 1e-5, name


def test_tp1_matches_the_single_rank_model(tp_results, tiny_workdir):
    """The weights loaded onto shards are the weights the reference test checked."""
    for ours, reference in zip(tp_results[1]["logits"], torch.load(tiny_workdir / "init_logits.pt")):
        assert _relative_error(ours, reference) < 1e-6


@pytest.mark.parametrize("tp", [1, 2])
def test_model_respects_masks_and_positions(tp_results, tp):
    """Changing what a position may not see leaves its logits unchanged; what it sees changes them."""
    _, variants = build_inputs()
    logits = tp_results[tp]["logits"]
    for variant in variants:
        base, changed = logits[variant.base][0], logits[variant.index][0]
        for position in variant.same:
            assert _relative_error(changed[position], base[position]) < 1e-5, (variant.name, position)
        for position in variant.different:
            assert _relative_error(changed[position], base[position]) > 1e-4, (variant.name, position)
