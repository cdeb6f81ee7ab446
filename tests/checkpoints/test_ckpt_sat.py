"""Must-be-true 2: a SAT checkpoint written by an independent plain-PyTorch writer (docs/glm130b.md §6)
imports and gives the logits of the independent float64 reference forward of the same weights;
and our SAT export is, tensor for tensor, what that writer produces."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from checkpoints.shapes import GLMShape
from ckpt_helpers import ckpt, convert, logits
from plain_sat_writer import write_sat
from reference_glm import reference_logits


@pytest.fixture(scope="module")
def weights(tiny_workdir):
    return torch.load(tiny_workdir / "weights.pt")


@pytest.fixture(scope="module")
def reference(tiny_workdir, weights):
    inputs = torch.load(tiny_workdir / "inputs.pt")
    return [reference_logits(weights, x["tokens"], x["position_ids"], x["attention_mask"], num_layers=8, num_heads=4)
            for x in inputs]


@pytest.mark.parametrize("world", [4])
def test_plain_sat_imports_with_reference_logits(capsys, tmp_path, tiny_workdir, weights, reference, world):
    write_sat(weights, tmp_path / "sat", world, iteration=49300, num_layers=8, head_dim=16)
    convert(capsys, tmp_path / "sat", tmp_path / "dist", "--to", "dist", "--tp", "2", "--pp", "2")
    code, out, _ = ckpt(capsys, "inspect", tmp_path / "dist")
    assert code == 0 and "step              49300" in out and "TP2 x PP2" in out
    for source in (tmp_path / "sat", tmp_path / "dist"):
        got = logits(capsys, source, tiny_workdir / "inputs.pt", tmp_path / "l.pt")
        worst = max(float((g.double() - r).abs().max() / r.abs().max()) for g, r in zip(got, reference))
        assert worst < 1e-5, (source, worst)


def test_sat_export_equals_the_plain_writer(capsys, tmp_path, train_ckpt, weights):
    write_sat(weights, tmp_path / "plain", 2, iteration=12, num_layers=8, head_dim=16)
    convert(capsys, train_ckpt, tmp_path / "ours", "--to", "sat", "--tp", "2")
    for rank in range(2):
        name = f"12/mp_rank_{rank:02d}_model_states.pt"
        plain = torch.load(tmp_path / "plain" / name, weights_only=True)["module"]
        ours = torch.load(tmp_path / "ours" / name, weights_only=True)["module"]
        assert list(ours) and set(ours) == set(plain)
        for key in plain:
            assert ours[key].dtype == plain[key].dtype and torch.equal(ours[key], plain[key]), key


def test_sat_needs_the_head_count(capsys, tmp_path, weights):
    write_sat(weights, tmp_path / "sat", 1, iteration=1, num_layers=8, head_dim=16)
    code, _, err = ckpt(capsys, "inspect", tmp_path / "sat")
    assert code == 2 and "--num-attention-heads" in err
    code, out, _ = ckpt(capsys, "inspect", tmp_path / "sat", "--model", "glm-tiny")
    assert code == 0 and "4 heads" in out


def test_inspect_of_sat_labels_what_it_counts(tmp_path):
    """SAT records no consumed samples ("not recorded", not "None"); the model's parameter count and
    the values stored in the files (replicated tensors once per TP shard, rotary buffers) are two
    labelled numbers, each exact."""
    glm = GLMShape(num_layers=2, hidden_size=64, num_attention_heads=4, ffn_hidden_size=128, padded_vocab_size=256)
    weights = {key: torch.zeros(spec.shape(glm), dtype=torch.float16) for key, spec, _ in glm.entries()}
    write_sat(weights, tmp_path / "sat", 2, iteration=7, num_layers=2, head_dim=16)
    stored = sum(t.numel() for rank in range(2)
                 for t in torch.load(tmp_path / "sat" / "7" / f"mp_rank_{rank:02d}_model_states.pt")["module"].values())
    parameters = sum(w.numel() for w in weights.values())
    assert stored > parameters
    result = subprocess.run([str(Path(sys.executable).parent / "glm-ckpt"), "inspect", str(tmp_path / "sat"),
                             "--num-attention-heads", "4"], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    lines = dict(line.split("  ", 1) for line in result.stdout.splitlines())
    assert "None" not in result.stdout
    assert lines["consumed samples"].strip() == "not recorded" and lines["step"].strip() == "7"
    assert lines["parameters"].strip() == f"{parameters:,} (the model's, each tensor once)"
    assert lines["stored values"].strip().startswith(
        f"{stored:,} (as stored in the files: whole tensors repeated in each of the 2 TP shards, rotary inv_freq "
        f"buffers if kept); by dtype: float16 {stored - 2 * 2 * 8:,}, float32 32")
    assert list(tmp_path.iterdir()) == [tmp_path / "sat"]
