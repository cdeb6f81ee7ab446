"""The run directory survives what a long run meets: resumes that extend the run, a `latest` that
points at nothing, corrupt checkpoint files, a full disk, a rerun of a finished run, a config
without data. Each case runs the real trainer (glm-launch run, one CPU rank, glm-tiny)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from megatron_glm.metrics.schema import read_events, read_metrics
from megatron_glm.rundir import ExitCode, RunDir

BIN = Path(sys.executable).parent
TINY = ["data.synthetic=true", "model.seq_length=32", "train.global_batch_size=4", "train.eval_interval=0",
        "train.save_interval=2", "train.peak_lr=0.001", "train.min_lr=0.0001", "train.tensorboard=false"]


def _run(run_dir, *overrides):
    result = subprocess.run([str(BIN / "glm-launch"), "run", "glm-tiny", "--nproc", "1", "--run-dir", str(run_dir),
                             *TINY, *overrides], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONWARNINGS="ignore"))
    return result.returncode, result.stdout + result.stderr


def _events(run_dir, kind=None):
    events = read_events(run_dir, validate=True)[0] if (Path(run_dir) / "events.jsonl").exists() else []
    return [e for e in events if kind is None or e["kind"] == kind]


def _lrs(run_dir):
    return {r["step"]: r["lr"] for r in read_metrics(run_dir)[0]}


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory):
    """Run directories of finished 2-step and 4-step runs; the tests work on copies of them, as a
    user works on a run directory moved elsewhere (its events still name the original paths)."""
    root = tmp_path_factory.mktemp("finished")
    for steps in (2, 4):
        code, out = _run(root / str(steps), f"train.steps={steps}")
        assert code == 0, out
    return root


def _finished(finished_runs, steps, destination):
    """A copy, at `destination`, of the finished run of `steps` steps."""
    shutil.copytree(finished_runs / str(steps), destination)
    return destination


def test_extending_a_run_continues_its_lr_schedule(tmp_path, finished_runs):
    """train.decay_samples 0 means "the planned samples": resolved at the first start and kept, so
    raising train.steps continues the same cosine."""
    run = _finished(finished_runs, 4, tmp_path / "run")
    assert yaml.safe_load(RunDir(run).config.read_text())["train"]["decay_samples"] == 16  # 4 steps x 4
    code, out = _run(run, "train.steps=6")
    assert code == 0, out
    lrs = _lrs(run)
    assert sorted(lrs) == list(range(1, 7))
    assert lrs[5] == lrs[6] == pytest.approx(1e-4)  # the decay ended at sample 16: min_lr from then on
    assert yaml.safe_load(RunDir(run).config.read_text())["train"]["decay_samples"] == 16

    # override_lr_on_resume: the decay is planned again for the new length (8 steps = 32 samples).
    other = _finished(finished_runs, 4, tmp_path / "override")
    code, out = _run(other, "train.steps=8", "train.override_lr_on_resume=true")
    assert code == 0, out
    lrs = _lrs(other)
    assert lrs[5] > lrs[6] > lrs[7] > 1e-4
    assert yaml.safe_load(RunDir(other).config.read_text())["train"]["decay_samples"] == 32

    # An explicit change of the schedule without the override is refused with the fix, exit 2.
    code, out = _run(other, "train.steps=10", "train.peak_lr=0.0005")
    assert code == ExitCode.BAD_INPUT
    assert "train.peak_lr=0.0005 (the run's schedule has 0.001)" in out and "override_lr_on_resume" in out


def test_dangling_latest_falls_back_to_the_newest_complete_checkpoint(tmp_path, finished_runs):
    run = _finished(finished_runs, 4, tmp_path / "run")
    shutil.rmtree(run / "checkpoints" / "iter_0000004")  # what `latest` names
    code, out = _run(run, "train.steps=6")
    assert code == 0, out
    fallback = _events(run, "checkpoint_fallback")
    assert "names iter_0000004, which does not exist" in fallback[0]["message"]
    assert fallback[-1]["path"].endswith("iter_0000002")
    restart = _events(run, "restart")[-1]
    assert restart["step"] == 2  # resumed at step 2, not from scratch
    assert RunDir(run).latest_step() == 6

    # An unreadable `latest` (garbage in it) falls back the same way.
    (run / "checkpoints" / "latest").write_bytes(b"\x00\xff garbage")
    code, out = _run(run, "train.steps=8")
    assert code == 0, out
    assert "latest cannot be read" in _events(run, "checkpoint_fallback")[-2]["message"]
    assert _events(run, "restart")[-1]["step"] == 6


def test_checkpoints_that_are_gone_never_mean_a_fresh_start(tmp_path, finished_runs):
    """Also after the run directory moved: this one is a copy, its events name the checkpoints at
    the original path."""
    run = _finished(finished_runs, 2, tmp_path / "run")
    metrics_before = RunDir(run).metrics.read_text()
    shutil.rmtree(run / "checkpoints" / "iter_0000002")  # `latest` dangles and nothing else is left
    code, out = _run(run, "train.steps=4")
    assert code == ExitCode.BAD_INPUT, out
    assert "none is complete and intact" in out and "refusing to start from step 0" in out
    assert _events(run, "error")[-1]["reason"] == "bad_run_dir"

    shutil.rmtree(run / "checkpoints")  # the whole directory: the events still record the history
    code, out = _run(run, "train.steps=4")
    assert code == ExitCode.BAD_INPUT, out
    assert "its events record 1 published" in out
    assert RunDir(run).metrics.read_text() == metrics_before  # nothing trained over the history


def test_a_corrupt_checkpoint_is_never_loaded(tmp_path, finished_runs):
    run = _finished(finished_runs, 4, tmp_path / "run")
    shard = sorted((run / "checkpoints" / "iter_0000004").glob("*.distcp"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit, same size
    shard.write_bytes(bytes(data))
    verify = subprocess.run([str(BIN / "glm-ckpt"), "verify", str(run)], capture_output=True, text=True)
    assert verify.returncode == 1 and f"{shard.name} has CRC-32" in verify.stdout

    code, out = _run(run, "train.steps=6")
    assert code == 0, out
    corrupt = _events(run, "checkpoint_corrupt")
    assert corrupt and corrupt[0]["file"] == shard.name and corrupt[0]["path"].endswith("iter_0000004")
    assert _events(run, "restart")[-1]["step"] == 2

    # A truncated file of the (new) latest: same.
    latest = run / "checkpoints" / "iter_0000006"
    common = latest / "common.pt"
    common.write_bytes(common.read_bytes()[:100])
    code, out = _run(run, "train.steps=8")
    assert code == 0, out
    assert "common.pt has 100 bytes" in _events(run, "checkpoint_corrupt")[-1]["message"]


def test_a_finished_run_is_left_untouched(tmp_path, finished_runs):
    run = _finished(finished_runs, 2, tmp_path / "run")
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    code, out = _run(run, "train.steps=2")
    assert code == 0 and "finished at step 2 (DONE); nothing to do" in out
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before


def test_training_needs_data_or_an_explicit_synthetic_flag(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model": {"preset": "glm-tiny"}, "train": {"steps": 2}}))
    result = subprocess.run([str(BIN / "glm-launch"), "run", str(config), "--nproc", "1", "--run-dir",
                             str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "no training data" in result.stderr and "data.synthetic=true" in result.stderr
    assert not (tmp_path / "run").exists()

    # Synthetic data, when asked for, comes at the configured sequence length (not 64).
    code, out = _run(tmp_path / "synthetic", "model.seq_length=96", "train.steps=1")
    assert code == 0, out
    record = read_metrics(tmp_path / "synthetic")[0][-1]
    assert record["tokens"] == record["consumed_samples"] * 96


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_a_full_disk_keeps_the_previous_checkpoint_and_ends_clearly(tmp_path):
    """checkpoints/ on a 10 MB tmpfs: the step-2 checkpoint (7 MB) fits, step 4's does not."""
    run = tmp_path / "run"
    if not _tmpfs(run / "checkpoints", "10m"):
        pytest.skip("mounting a tmpfs needs root")
    try:
        code, out = _run(run, "train.steps=6")
        assert code == ExitCode.CHECKPOINT_IO, out
        assert "checkpoint save failed at step 4" in out and "GiB free of 0.01 GiB on the file system of" in out
        assert RunDir(run).latest_step() == 2
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["iter_0000002", "latest"]
        error = _events(run, "error")[-1]
        assert error["reason"] == "checkpoint_io" and error["exit_code"] == 74
        verify = subprocess.run([str(BIN / "glm-ckpt"), "verify", str(run)], capture_output=True, text=True)
        assert verify.returncode == 0, verify.stdout
    finally:
        subprocess.run(["umount", str(run / "checkpoints")], capture_output=True)


def test_default_dataset_cache_is_in_the_run_directory(tmp_path, demo_data_section, demo_tokenizer):
    """Multi-node ranks load megatron-core's blend index that global rank 0 built: it must be on the
    run's shared storage, not in a node-local /tmp."""
    config = tmp_path / "run.yaml"
    data = demo_data_section("")
    config.write_text(yaml.safe_dump({"model": {"preset": "glm-tiny", "vocab_size": demo_tokenizer.vocab_size,
                                                "seq_length": 128}, "data": data}))
    run = tmp_path / "run"
    result = subprocess.run([str(BIN / "glm-launch"), "run", str(config), "--nproc", "1", "--run-dir", str(run),
                             "train.steps=1", "train.global_batch_size=4", "train.tensorboard=false"],
                            capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONWARNINGS="ignore", TMPDIR=str(tmp_path / "node-local")))
    assert result.returncode == 0, result.stdout + result.stderr
    cache = RunDir(run).dataset_cache
    assert yaml.safe_load(RunDir(run).config.read_text())["data"]["cache_dir"] == str(cache)
    assert any(cache.rglob("*.npy"))
    assert not (tmp_path / "node-local").exists() or not any((tmp_path / "node-local").rglob("*.npy"))
