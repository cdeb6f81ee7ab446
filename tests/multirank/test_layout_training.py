"""Four optimizer steps (DDP + DistributedOptimizer, Adam) from the same weights and data give the
same losses at TP1xPP1xDP1, TP2xPP2xDP2 (8 ranks), TP1xPP4 and TP1xPP2 with the interleaved schedule
(virtual pipeline 2), an uneven TP1xPP3 pipeline (2 / 4 / 2 layers), with full (TP2xDP1) or selective
activation recompute, and with gradient reduction overlapped with the backward pass (PP2 x VPP2 x DP2)."""

import json

import pytest

from multirank.harness import run_ranks

pytestmark = pytest.mark.multirank

LAYOUTS = {  # name: (ranks, config overrides)
    "tp1_pp1_dp1": (1, []),
    "tp2_pp2_dp2": (8, ["parallel.tensor=2", "parallel.pipeline=2"]),
    "tp1_pp4_vpp2": (4, ["parallel.pipeline=4", "parallel.virtual_pipeline=2"]),
    # PP2: a rank's previous and next stage are the same rank (activations and gradients both ways)
    "tp1_pp2_vpp2": (2, ["parallel.pipeline=2", "parallel.virtual_pipeline=2"]),
    "tp1_pp3_uneven": (3, ["parallel.pipeline=3", "parallel.first_stage_layers=2",
                           "parallel.last_stage_layers=2"]),
    "tp2_full_recompute": (2, ["parallel.tensor=2", "recompute.granularity=full"]),
    "tp1_selective_recompute": (1, ["recompute.granularity=selective"]),
    "tp1_pp2_vpp2_dp2_overlap": (4, ["parallel.pipeline=2", "parallel.virtual_pipeline=2",
                                     "parallel.overlap_grad_reduce=true"]),
}


@pytest.fixture(scope="module")
def losses(tiny_workdir):
    results = {}
    for name, (ranks, overrides) in LAYOUTS.items():
        run_ranks("train_layout", ranks, tiny_workdir, name, *overrides, timeout_s=400)
        results[name] = json.loads((tiny_workdir / f"train_{name}.json").read_text())
    return results


def test_layouts_are_what_they_claim(losses):
    assert losses["tp2_pp2_dp2"]["dp"] == 2
    assert losses["tp1_pp4_vpp2"]["dp"] == 1
    assert losses["tp1_pp4_vpp2"]["rank0_layers"] == [1, 1]  # two chunks of one layer each
    assert losses["tp1_pp2_vpp2"]["rank0_layers"] == [2, 2]
    assert losses["tp1_pp3_uneven"]["rank0_layers"] == [2]
    assert losses["tp1_pp2_vpp2_dp2_overlap"]["dp"] == 2


@pytest.mark.parametrize("layout", [name for name in LAYOUTS if name != "tp1_pp1_dp1"])
def test_losses_match_single_rank(losses, layout):
    reference = losses["tp1_pp1_dp1"]["losses"]
    ours = losses[layout]["losses"]
    assert len(ours) == len(reference) == 4
    for step, (a, b) in enumerate(zip(ours, reference)):
        assert abs(a - b) / abs(b) < 1e-5, f"step {step + 1}: {a} vs {b}"


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_updates_were_applied(losses, layout):
    """The first batch, evaluated after the four steps, has a lower loss than before them (so the
    comparison above covers the optimizer updates), and that loss agrees across layouts too."""
    before = losses[layout]["losses"][0]
    after = losses[layout]["first_batch_after"]
    assert after < before - 1e-3
    reference = losses["tp1_pp1_dp1"]["first_batch_after"]
    assert abs(after - reference) / reference < 1e-5
