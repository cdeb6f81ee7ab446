"""glm-eval on four gloo ranks at TP2 x DP2: the examples split over the two data-parallel groups,
each a tensor-parallel pair, give the float64 reference's numbers in file order, written once by
rank 0 (the data-parallel gather runs over megatron-core's DP groups, not the world)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from multirank.harness import free_port
from test_evaluation_cli import assert_predictions_match, eval_command, reference_run, write_checkpoint_and_tasks

pytestmark = pytest.mark.multirank


def test_tp2_dp2_matches_the_reference(tmp_path):
    root = write_checkpoint_and_tasks(tmp_path)
    out = tmp_path / "out"
    port = str(free_port())
    procs = []
    for rank in range(4):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="4", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=port, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        procs.append(subprocess.Popen(eval_command(root, out, "--quiet", "--tp", "2"), env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, start_new_session=True))
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=300))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, (stdout, stderr) in zip(procs, outputs):
        assert proc.returncode == 0, stderr[-3000:]
    assert "choice" in outputs[0][0] and all(stdout == "" for stdout, _ in outputs[1:])  # rank 0 prints
    settings = json.loads((out / "results.json").read_text())["settings"]
    assert (settings["tp"], settings["data_parallel"]) == (2, 2)
    lines = [json.loads(line) for line in (out / "preds.jsonl").read_text().splitlines()]
    _, ref_lines = reference_run(root)
    assert_predictions_match(lines, ref_lines)
