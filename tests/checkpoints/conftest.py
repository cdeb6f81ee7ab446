"""Fixtures for the glm-ckpt tests: a real TP2 x PP2 training checkpoint of glm-tiny (written by the
trainer's save_checkpoint on 4 gloo ranks, with Adam state) from the shared tiny weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckpt_helpers import run_scenario


@pytest.fixture(scope="session")
def train_ckpt(tiny_workdir) -> Path:
    """tiny_workdir/train_ckpt: glm-tiny at TP2 x PP2, step 12, 96 consumed samples, optimizer state."""
    path = tiny_workdir / "train_ckpt"
    if not path.exists():
        run_scenario("save_dist", 4, tiny_workdir, "2", "2")
    return path
