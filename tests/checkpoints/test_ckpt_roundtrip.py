"""Must-be-true 1: conversions between dist (any layout), SAT (any TP) and safetensors keep the
logits bit for bit (fp32 glm-tiny, max abs diff 0), and what we write loads in the trainer."""

from __future__ import annotations

import json

import pytest
import torch

from checkpoints.convert import open_checkpoint
from checkpoints.formats.sat import shard_name
from ckpt_helpers import HEADS_ARGS, ckpt, convert, logits, max_abs_diff
from ckpt_helpers import run_scenario

pytestmark = pytest.mark.multirank


@pytest.fixture(scope="module")
def source_logits(train_ckpt, tiny_workdir):
    return logits(None, train_ckpt, tiny_workdir / "inputs.pt", tiny_workdir / "train_ckpt_logits.pt")


def test_source_is_the_trainers_tp2_pp2_checkpoint(capsys, train_ckpt, tiny_workdir, source_logits):
    code, out, _ = ckpt(capsys, "inspect", train_ckpt, "--json", *HEADS_ARGS)
    summary = json.loads(out)
    assert code == 0
    assert summary["format"] == "dist" and summary["layout"] == {"tp": 2, "pp": 2}
    assert summary["step"] == 12 and summary["consumed_samples"] == 96 and summary["optimizer_state"]
    weights = torch.load(tiny_workdir / "weights.pt")
    assert summary["parameters"] == sum(w.numel() for w in weights.values())
    # The forward of a dist checkpoint equals the TP1 model's own logits of the same weights.
    assert max_abs_diff(source_logits, torch.load(tiny_workdir / "init_logits.pt")) == 0.0


def test_dist_tp2pp2_to_sat_tp1_to_dist_tp1pp1(capsys, tmp_path, train_ckpt, tiny_workdir, source_logits):
    convert(capsys, train_ckpt, tmp_path / "sat", "--to", "sat")
    convert(capsys, tmp_path / "sat", tmp_path / "dist", "--to", "dist", "--tp", "1", "--pp", "1")
    assert max_abs_diff(logits(capsys, tmp_path / "dist", tiny_workdir / "inputs.pt", tmp_path / "l.pt"),
                        source_logits) == 0.0
    reader = open_checkpoint(str(tmp_path / "dist"))
    assert (reader.info.tp, reader.info.pp, reader.info.step) == (1, 1, 12)


def test_dist_to_sat_tp2_to_sat_tp4_to_dist(capsys, tmp_path, train_ckpt, tiny_workdir, source_logits):
    convert(capsys, train_ckpt, tmp_path / "sat2", "--to", "sat", "--tp", "2")
    convert(capsys, tmp_path / "sat2", tmp_path / "sat4", "--to", "sat", "--tp", "4")
    convert(capsys, tmp_path / "sat4", tmp_path / "dist", "--to", "dist")
    assert max_abs_diff(logits(capsys, tmp_path / "dist", tiny_workdir / "inputs.pt", tmp_path / "l.pt"),
                        source_logits) == 0.0
    # The TP4 shards have docs/glm130b.md §6's shapes (hidden 64, 4 heads, ffn 128, vocab 1024).
    shard = torch.load(tmp_path / "sat4" / "12" / shard_name(3), weights_only=True)
    module = shard["module"]
    assert set(shard) == {"module"}
    assert module["transformer.word_embeddings.weight"].shape == (256, 64)
    assert module["transformer.layers.7.attention.query_key_value.weight"].shape == (48, 64)
    assert module["transformer.layers.7.attention.dense.weight"].shape == (64, 16)
    assert module["transformer.layers.7.mlp.dense_h_to_4h.weight"].shape == (64, 64)
    assert module["transformer.layers.7.mlp.dense_4h_to_h.weight"].shape == (64, 32)
    assert module["transformer.final_layernorm.bias"].shape == (64,)
    assert (tmp_path / "sat4" / "latest").read_text().strip() == "12"


def test_dist_to_safetensors_to_forward(capsys, tmp_path, train_ckpt, tiny_workdir, source_logits):
    convert(capsys, train_ckpt, tmp_path / "st", "--to", "safetensors")
    assert max_abs_diff(logits(capsys, tmp_path / "st", tiny_workdir / "inputs.pt", tmp_path / "l.pt"),
                        source_logits) == 0.0
    config = json.loads((tmp_path / "st" / "config.json").read_text())
    assert config["glm_model"]["num_attention_heads"] == 4
    weights = torch.load(tiny_workdir / "weights.pt")
    safetensors = pytest.importorskip("safetensors.torch")  # an independent reader of the file format
    loaded = safetensors.load_file(str(tmp_path / "st" / "model.safetensors"))
    assert set(loaded) == set(weights)
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)


def test_sharded_safetensors_with_index(capsys, tmp_path, train_ckpt, tiny_workdir, source_logits):
    convert(capsys, train_ckpt, tmp_path / "st", "--to", "safetensors", "--max-shard-size", "400KB")
    index = json.loads((tmp_path / "st" / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) >= 4 and index["metadata"]["total_size"] == 1_600_000
    header_bytes = 20_000  # the JSON header comes on top of the tensors' bytes
    assert all((tmp_path / "st" / f).stat().st_size <= 400 * 1024 + header_bytes for f in files)
    assert max_abs_diff(logits(capsys, tmp_path / "st", tiny_workdir / "inputs.pt", tmp_path / "l.pt"),
                        source_logits) == 0.0


def test_dist_reshard_keeps_optimizer_state_unless_model_only(capsys, tmp_path, train_ckpt):
    convert(capsys, train_ckpt, tmp_path / "full", "--to", "dist", "--tp", "4", "--pp", "8")
    convert(capsys, train_ckpt, tmp_path / "model", "--to", "dist", "--model-only")
    source, full = open_checkpoint(str(train_ckpt), _heads()), open_checkpoint(str(tmp_path / "full"))
    assert full.info.has_optimizer and (full.info.tp, full.info.pp) == (4, 8)
    assert not open_checkpoint(str(tmp_path / "model")).info.has_optimizer
    assert sorted(full.extra_keys()) == sorted(source.extra_keys())
    from checkpoints.formats.dist import spec_for

    for key in source.extra_keys():
        spec, _ = spec_for(key)
        assert torch.equal(source.read(key, spec), full.read(key, spec)), key


def _heads():
    from checkpoints.convert import ReadOptions

    return ReadOptions(num_attention_heads=4)


@pytest.mark.parametrize("tp,pp", [(2, 2)])
def test_written_dist_loads_in_the_trainer(capsys, tmp_path, train_ckpt, tiny_workdir, tp, pp):
    """megatron-core's dist_checkpointing.load (the trainer's load_checkpoint) reads our TP1 output
    at TP2 x PP2 and the pipeline's logits match the TP1 model's."""
    convert(capsys, train_ckpt, tmp_path / "dist", "--to", "dist", "--model-only")
    workdir = tmp_path
    (workdir / "inputs.pt").write_bytes((tiny_workdir / "inputs.pt").read_bytes())
    run_scenario("load_dist", tp * pp, workdir, str(tmp_path / "dist"), str(tp), str(pp))
    loaded = torch.load(workdir / "loaded_logits.pt")
    assert max_abs_diff(loaded, torch.load(tiny_workdir / "init_logits.pt")) < 1e-5
