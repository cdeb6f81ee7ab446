"""Fixtures for the glm-ckpt tests: a real TP2 x PP2 training checkpoint of glm-tiny (written by the
trainer's save_checkpoint on 4 gloo ranks, with Adam state) from the shared tiny weights."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest

import multirank.harness as harness

SCENARIOS = Path(__file__).with_name("ckpt_scenarios.py")
HEADS = 4  # glm-tiny


def run_scenario(name: str, nproc: int, workdir: Path, *args: str, timeout_s: float = 240.0) -> None:
    """harness.run_ranks with this folder's scenario script."""
    with mock.patch.object(harness, "SCENARIOS", SCENARIOS):
        harness.run_ranks(name, nproc, workdir, *args, timeout_s=timeout_s)


@pytest.fixture(scope="session")
def train_ckpt(tiny_workdir) -> Path:
    """tiny_workdir/train_ckpt: glm-tiny at TP2 x PP2, step 12, 96 consumed samples, optimizer state."""
    path = tiny_workdir / "train_ckpt"
    if not path.exists():
        run_scenario("save_dist", 4, tiny_workdir, "2", "2")
    return path
