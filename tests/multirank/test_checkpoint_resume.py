"""Exact resume through dist_checkpointing: same layout bitwise, another layout within 1e-5."""

import json
import shutil

import pytest

from multirank.harness import run_ranks

pytestmark = pytest.mark.multirank

TP2_PP2 = ["parallel.tensor=2", "parallel.pipeline=2"]


@pytest.fixture(scope="module")
def resumed(tiny_workdir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("resume")
    shutil.copy(tiny_workdir / "weights.pt", workdir / "weights.pt")
    run_ranks("resume", 4, workdir, "uninterrupted", "reference", *TP2_PP2, timeout_s=400)
    run_ranks("resume", 4, workdir, "resumed", "same_layout", *TP2_PP2, timeout_s=400)
    run_ranks("resume", 2, workdir, "resumed", "tp1_pp1_dp2", timeout_s=400)
    return workdir, {name: {int(k): v for k, v in json.loads((workdir / f"resume_{name}.json").read_text()).items()}
                     for name in ("reference", "same_layout", "tp1_pp1_dp2")}


def test_checkpoint_is_published_with_latest(resumed):
    workdir, _ = resumed
    checkpoints = workdir / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == "iter_0000004"
    assert (checkpoints / "iter_0000004").is_dir()
    assert not list(checkpoints.glob("*.tmp"))


def test_resume_at_the_same_layout_is_bitwise_exact(resumed):
    _, losses = resumed
    assert sorted(losses["same_layout"]) == [5, 6, 7, 8]
    for step in range(5, 9):
        assert losses["same_layout"][step] == losses["reference"][step], step


def test_resume_at_another_layout_continues(resumed):
    _, losses = resumed
    for step in range(5, 9):
        a, b = losses["tp1_pp1_dp2"][step], losses["reference"][step]
        assert abs(a - b) / abs(b) < 1e-5, (step, a, b)
