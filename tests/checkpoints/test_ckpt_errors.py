"""Must-be-true 5: corrupt or truncated files, a missing shard, shape or key mismatches and
impossible layouts fail with the file and key named, a non-zero exit, and no partial DST; errors
name the DST the user gave, never the hidden directory DST is built in; forward says what it wrote."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from checkpoints.cli import _user_paths
from checkpoints.shapes import GLMShape
from ckpt_helpers import HEADS_ARGS, ckpt, convert
from plain_sat_writer import write_sat

GLM_CKPT = str(Path(sys.executable).parent / "glm-ckpt")  # the installed console script


def _glm_ckpt(*args):
    return subprocess.run([GLM_CKPT, *map(str, args)], capture_output=True, text=True, timeout=180)


@pytest.fixture
def sat(tmp_path, tiny_workdir) -> Path:
    write_sat(torch.load(tiny_workdir / "weights.pt"), tmp_path / "sat", 2, iteration=5, num_layers=8, head_dim=16)
    return tmp_path / "sat"


def _fails(capsys, src: Path, dst: Path, *args: str, expect=()):
    code, _, err = ckpt(capsys, "convert", src, dst, "--to", "dist", "--quiet", *HEADS_ARGS, *args)
    assert code == 2
    for text in expect:
        assert text in err, err
    assert not dst.exists()
    assert not [p for p in dst.parent.iterdir() if p.name.startswith(f".{dst.name}.")]  # no tmp left over
    return err


def test_truncated_sat_shard(capsys, tmp_path, sat):
    shard = sat / "5" / "mp_rank_01_model_states.pt"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    _fails(capsys, sat, tmp_path / "out", expect=[str(shard), "truncated"])


def test_corrupt_tensor_bytes_in_a_dist_shard(capsys, tmp_path, train_ckpt):
    from checkpoints.formats.dist import DistReader

    reader = DistReader(train_ckpt, num_attention_heads=4)
    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(train_ckpt, broken)
    fqn = "decoder.layers.mlp.linear_fc2.weight"
    index = next(i for i in reader.metadata.storage_data if i.fqn == fqn)
    info = reader.metadata.storage_data[index]
    target = broken / "iter_0000012" / info.relative_path
    data = bytearray(target.read_bytes())
    data[info.offset: info.offset + 64] = b"\xff" * 64  # the chunk's zip header
    target.write_bytes(bytes(data))
    _fails(capsys, broken, tmp_path / "out", expect=[str(target), fqn, "corrupt"])


def test_missing_sat_and_dist_shards(capsys, tmp_path, sat, train_ckpt):
    (sat / "5" / "mp_rank_00_model_states.pt").unlink()
    _fails(capsys, sat, tmp_path / "out", expect=["mp_rank_00_model_states.pt", "shard is missing"])
    import shutil

    shutil.copytree(train_ckpt, tmp_path / "dist")
    (tmp_path / "dist" / "iter_0000012" / "__3_0.distcp").unlink()
    # The trainer's manifest names the missing file before anything is read ...
    _fails(capsys, tmp_path / "dist", tmp_path / "out", expect=["__3_0.distcp is missing", "glm-ckpt verify"])
    # ... and without one (a checkpoint written by glm-ckpt convert) the reader still finds it.
    (tmp_path / "dist" / "iter_0000012" / "manifest.json").unlink()
    _fails(capsys, tmp_path / "dist", tmp_path / "out", expect=["__3_0.distcp", "shard file is missing", "key"])


def test_shape_and_key_mismatch(capsys, tmp_path, sat):
    shard = sat / "5" / "mp_rank_01_model_states.pt"
    state = torch.load(shard, weights_only=True)
    key = "transformer.layers.2.attention.dense.weight"
    state["module"][key] = state["module"][key][:, :-1].clone()
    torch.save(state, shard)
    _fails(capsys, sat, tmp_path / "out", expect=[str(shard), key, "shape"])
    state["module"]["transformer.layers.2.attention.dense.weights"] = state["module"].pop(key)
    torch.save(state, shard)
    _fails(capsys, sat, tmp_path / "out", expect=[str(shard), key, "missing"])


def test_impossible_layouts(capsys, tmp_path, sat):
    _fails(capsys, sat, tmp_path / "out", "--tp", "3",
           expect=["key 'embedding.word_embeddings.weight': cannot split dimension 0 (size 1024) into --tp 3 equal "
                   "tensor-parallel pieces (this model splits for --tp 1, 2, 4)"])
    _fails(capsys, sat, tmp_path / "out", "--tp", "8", expect=["4 attention heads", "linear_qkv.weight"])
    _fails(capsys, sat, tmp_path / "out", "--pp", "3", expect=["8 layers", "--pp"])
    code, _, err = ckpt(capsys, "convert", sat, tmp_path / "out", "--to", "sat", "--pp", "2", *HEADS_ARGS)
    assert code == 2 and "no pipeline split" in err and not (tmp_path / "out").exists()


def test_existing_destination_needs_force(capsys, tmp_path, sat):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep").write_text("x")
    code, _, err = ckpt(capsys, "convert", sat, dst, "--to", "dist", *HEADS_ARGS)
    assert code == 2 and "--force" in err and (dst / "keep").exists()
    convert(capsys, sat, dst, "--to", "dist", "--force")
    assert not (dst / "keep").exists() and (dst / "latest").read_text().strip() == "iter_0000005"


def test_console_exit_code_and_bad_inputs(tmp_path, sat):
    """The real process exits non-zero; a forward with a float mask names the field."""
    torch.save({"tokens": torch.zeros(1, 4, dtype=torch.long), "position_ids": torch.zeros(1, 4, dtype=torch.long),
                "attention_mask": torch.zeros(1, 1, 4, 4)}, tmp_path / "in.pt")
    result = subprocess.run([sys.executable, "-m", "checkpoints.cli", "forward", str(sat), "--inputs",
                             str(tmp_path / "in.pt"), "--out", str(tmp_path / "o.pt"), *HEADS_ARGS],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "attention_mask" in result.stderr and "bool" in result.stderr
    assert not (tmp_path / "o.pt").exists()


@pytest.fixture
def small_sat(tmp_path) -> Path:
    """A 2-layer GLM (hidden 64, 4 heads, padded vocab 256) in SAT layout at TP2, step 7, random fp16
    weights, written in-process by the plain writer (no rank run)."""
    glm = GLMShape(num_layers=2, hidden_size=64, num_attention_heads=4, ffn_hidden_size=128, padded_vocab_size=256)
    generator = torch.Generator().manual_seed(0)
    weights = {key: (0.02 * torch.randn(*spec.shape(glm), generator=generator)).half()
               for key, spec, _ in glm.entries()}
    write_sat(weights, tmp_path / "sat", 2, iteration=7, num_layers=2, head_dim=16)
    return tmp_path / "sat"


def test_convert_errors_name_dst_not_its_staging_directory(capsys, tmp_path, small_sat):
    """DST is built in a hidden `.DST.tmp-<pid>` sibling: an error met there names DST. --verbose
    (a traceback first) goes before or after the subcommand."""
    dst = tmp_path / "stq"
    expected = "glm-ckpt: error: --to sat --pp 2: SAT checkpoints have no pipeline split (drop --pp or use --to dist)"
    args = ["--to", "sat", "--pp", "2", "--num-attention-heads", "4", "--quiet"]
    r = _glm_ckpt("convert", small_sat, dst, *args, "--verbose")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("Traceback") and r.stderr.splitlines()[-1] == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sat"]  # no DST, no staging directory
    code, out, err = ckpt(capsys, "--verbose", "convert", small_sat, dst, *args)
    assert (code, out) == (2, "") and err.startswith("Traceback") and err.splitlines()[-1] == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sat"]
    (tmp_path / "afile").write_text("x")  # where DST's folder should be
    code, _, err = ckpt(capsys, "convert", small_sat, tmp_path / "afile" / "dst", "--to", "dist", *args[4:])
    assert code == 2 and err == (f"glm-ckpt: error: cannot create the directory {tmp_path / 'afile'}: a file of "
                                 "that name is in the way\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "sat"]
    # Any other message (a full disk while writing, say) is rewritten the same way.
    assert _user_paths(f"{tmp_path}/.stq.tmp-1906/7/mp_rank_00_model_states.pt: No space left on device") == \
        f"{tmp_path}/stq/7/mp_rank_00_model_states.pt: No space left on device"
    assert _user_paths(".stq.tmp-1906: cannot write") == "stq: cannot write"
    assert _user_paths("old/x.tmp-3/y") == "old/x.tmp-3/y"  # not convert's staging name


def test_forward_documents_its_input_and_says_what_it_wrote(tmp_path, small_sat):
    shown = _glm_ckpt("forward", "--help")
    assert shown.returncode == 0
    for line in ("tokens          integer tensor [b, s]", "position_ids    integer tensor [b, s]",
                 "attention_mask  bool tensor [b, 1, s, s]    True = masked"):
        assert line in shown.stdout, line
    causal = torch.ones(8, 8, dtype=torch.bool).triu(1)
    batches = [{"tokens": torch.randint(0, 256, (b, 8)), "position_ids": torch.arange(8).repeat(b, 1),
                "attention_mask": causal.expand(b, 1, 8, 8).clone()} for b in (1, 2)]
    torch.save(batches, tmp_path / "in.pt")
    out = tmp_path / "logits" / "out.pt"
    r = _glm_ckpt("forward", small_sat, "--inputs", tmp_path / "in.pt", "--out", out, "--num-attention-heads", "4")
    assert r.returncode == 0, r.stderr
    assert r.stdout == (f"wrote {out}: logits of 2 batch(es), float32 [b, s, padded vocab]: [1, 8, 256], "
                        "[2, 8, 256] (a list, one tensor per input batch)\n")
    assert r.stderr == ""
    assert [tuple(t.shape) for t in torch.load(out)] == [(1, 8, 256), (2, 8, 256)]
