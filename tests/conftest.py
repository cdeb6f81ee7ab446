"""Shared fixtures: one set of glm-tiny weights and inputs per session, made by a 1-rank run."""

from __future__ import annotations

import torch
import pytest

from glm_inputs import build_inputs
from multirank.harness import run_ranks


@pytest.fixture(scope="session")
def tiny_workdir(tmp_path_factory):
    """inputs.pt, weights.pt, init_logits.pt, egs_grads.pt for glm-tiny (seq 64)."""
    workdir = tmp_path_factory.mktemp("glm_tiny")
    inputs, _ = build_inputs()
    torch.save(inputs, workdir / "inputs.pt")
    run_ranks("init", 1, workdir, timeout_s=240)
    return workdir
