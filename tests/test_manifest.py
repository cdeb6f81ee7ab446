"""Checkpoint manifests and the recovery of a publish that a kill interrupted (pure file logic; the
multi-rank paths are in tests/multirank/test_chaos.py and tests/test_run_recovery.py)."""

from pathlib import Path

from megatron_glm.rundir import RunDir, read_latest, write_latest
from megatron_glm.training import manifest
from megatron_glm.training.checkpointing import finish_interrupted_publish


def _checkpoint(directory: Path, step: int, payload: bytes = b"weights", complete: bool = True) -> Path:
    directory.mkdir(parents=True)
    (directory / "__0_0.distcp").write_bytes(payload * 100)
    (directory / "common.pt").write_bytes(b"common")
    if complete:
        manifest.write_manifest(directory, manifest.checksum_files(directory, manifest.list_files(directory)), step)
    return directory


def test_verify_finds_missing_truncated_flipped_and_unlisted_files(tmp_path):
    checkpoint = _checkpoint(tmp_path / "iter_0000004", 4)
    assert manifest.verify_checkpoint(checkpoint) == []
    shard = checkpoint / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[10] ^= 1
    shard.write_bytes(bytes(data))
    (checkpoint / "common.pt").unlink()
    (checkpoint / "extra.pt").write_bytes(b"x")
    problems = [p.problem for p in manifest.verify_checkpoint(checkpoint)]
    assert problems[0].startswith("__0_0.distcp has CRC-32") and problems[0].endswith("(corrupted)")
    assert problems[1].startswith("common.pt is missing")
    assert problems[2].startswith("extra.pt is not in the manifest")
    shard.write_bytes(bytes(data[:50]))
    sizes_only = manifest.verify_files(checkpoint, manifest.read_manifest(checkpoint), ["__0_0.distcp"],
                                       checksums=False)
    assert [p.problem for p in sizes_only] == ["__0_0.distcp has 50 bytes, the manifest says 700 "
                                               "(truncated or rewritten)"]


def test_a_checkpoint_without_a_manifest_is_incomplete(tmp_path):
    checkpoint = _checkpoint(tmp_path / "iter_0000002.tmp", 2, complete=False)
    [problem] = manifest.verify_checkpoint(checkpoint)
    assert "no manifest.json" in problem.problem and problem.file == "manifest.json"


def test_a_publish_killed_during_a_same_step_resave_is_completed(tmp_path):
    """_publish of an existing step: `latest` -> iter_N.tmp (complete), remove iter_N, rename, then
    `latest` -> iter_N. A kill after the first step, half way through the removal, or after the
    rename leaves a state the next start completes, always onto the new copy."""
    root = tmp_path / "checkpoints"
    _checkpoint(root / "iter_0000004", 4, payload=b"old")
    _checkpoint(root / "iter_0000004.tmp", 4, payload=b"new")
    write_latest(root, "iter_0000004.tmp")
    (root / "iter_0000004" / "common.pt").unlink()  # the old copy half removed
    finish_interrupted_publish(root)
    assert read_latest(root) == ("iter_0000004", None)
    assert not (root / "iter_0000004.tmp").exists()
    assert (root / "iter_0000004" / "__0_0.distcp").read_bytes() == b"new" * 100
    assert manifest.verify_checkpoint(root / "iter_0000004") == []

    write_latest(root, "iter_0000004.tmp")  # killed after the rename, before `latest` moved
    finish_interrupted_publish(root)
    assert read_latest(root) == ("iter_0000004", None)


def test_an_incomplete_tmp_is_never_published(tmp_path):
    root = tmp_path / "checkpoints"
    _checkpoint(root / "iter_0000002", 2)
    _checkpoint(root / "iter_0000004.tmp", 4, complete=False)  # a save killed while writing
    write_latest(root, "iter_0000002")
    finish_interrupted_publish(root)
    assert read_latest(root) == ("iter_0000002", None)
    assert (root / "iter_0000004.tmp").is_dir()  # the next save of step 4 removes it
    assert [step for step, _ in RunDir(tmp_path).published_checkpoints()] == [2]
