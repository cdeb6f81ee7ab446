"""The console scripts a user types."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_glm.config.loader import model_preset_names


BIN = Path(sys.executable).parent  # the environment's console scripts, activated or not


def _run(command, *args, timeout=180):
    executable = command if "/" in command else str(BIN / command)
    return subprocess.run([executable, *args], capture_output=True, text=True, timeout=timeout)


def test_describe_glm130b_counts_the_built_model():
    result = _run("glm-train", "describe", "glm-130b")
    assert result.returncode == 0, result.stderr
    described = json.loads(result.stdout)
    assert 128.0e9 <= described["params"] <= 129.5e9
    assert described["params"] == 128_697_794_560  # 126.85 B in layers + 1.85 B embedding (§1.1)
    for key in ("name", "num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size",
                "padded_vocab_size", "seq_length"):
        assert key in described
    assert result.stderr == ""  # quiet by default


def test_every_preset_describes():
    code = (
        "import json\n"
        "from megatron_glm.config.loader import load_run_config, model_preset_names\n"
        "from megatron_glm.model.describe import describe\n"
        "print(json.dumps({n: describe(load_run_config(n))['params'] for n in model_preset_names()}))\n"
    )
    result = _run(sys.executable, "-W", "ignore", "-c", code)
    assert result.returncode == 0, result.stderr
    params = json.loads(result.stdout)
    assert set(params) == set(model_preset_names())
    # The overview's nominal sizes, within 10%.
    for name, nominal in {"glm-base": 110e6, "glm-large": 335e6, "glm-410m": 410e6, "glm-515m": 515e6,
                          "glm-2b": 2e9, "glm-10b": 10e9}.items():
        assert abs(params[name] - nominal) / nominal < 0.1, (name, params[name])


def test_describe_explains_bad_input():
    result = _run("glm-train", "describe", "glm-tiny", "model.num_heads=3")
    assert result.returncode == 2
    assert "unknown field 'model.num_heads'" in result.stderr


def test_train_rejects_a_bad_config_before_starting(tmp_path):
    """Layout that does not divide, data that does not exist: exit 2 with the fixes, nothing created."""
    result = subprocess.run([str(BIN / "glm-train"), "--config", "tiny-cpu", "--run-dir", str(tmp_path / "run"),
                             "parallel.tensor=3"], capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert result.returncode == 2
    assert "num_attention_heads=4 is not divisible by parallel.tensor=3" in result.stderr
    assert "data.tokenizer_model=runs/demo/data/tokenizer.model: no such file" in result.stderr
    assert not (tmp_path / "run").exists()


def test_train_rejects_an_unwritable_run_dir_and_bad_batches_before_starting(tmp_path):
    """No process group, no directory: the run dir's parent is read-only, the batch does not divide."""
    import os

    if os.geteuid() == 0:
        parent = tmp_path / "a-file"
        parent.write_text("not a directory")
        expected = "is a file, not a directory"
    else:
        parent = tmp_path / "read-only"
        parent.mkdir(mode=0o555)
        expected = "is not writable"
    result = subprocess.run([str(BIN / "glm-train"), "--config", "glm-tiny", "--run-dir", str(parent / "run")],
                            capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert result.returncode == 2 and expected in result.stderr and "choose another --run-dir" in result.stderr
    env = dict(os.environ, RANK="0", WORLD_SIZE="4", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="1")
    result = subprocess.run([str(BIN / "glm-train"), "--config", "glm-tiny", "--run-dir", str(tmp_path / "run"),
                             "parallel.tensor=2", "train.global_batch_size=7", "train.rampup_batch_size=[2,3,10]"],
                            capture_output=True, text=True, timeout=180, cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert "train.global_batch_size=7 must be a multiple of train.micro_batch_size 1 x data-parallel size 2" \
        in result.stderr
    assert "rampup_batch_size start" not in result.stderr  # start 2 divides; the increment 3 does not
    assert "train.rampup_batch_size increment=3 must be a multiple" in result.stderr
    assert not (tmp_path / "run").exists()
