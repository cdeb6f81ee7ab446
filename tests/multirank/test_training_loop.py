"""glm-train end to end on CPU: metrics/events, exact resume, resume at another layout, spike guard."""

import json
import math

import pytest
import yaml

from megatron_glm.monitor.schema import read_events, read_metrics
from multirank.harness import run_ranks

pytestmark = pytest.mark.multirank

RUN = {"model": {"preset": "glm-tiny", "seq_length": 64},
       "train": {"steps": 8, "global_batch_size": 8, "peak_lr": 1e-3, "min_lr": 1e-4, "decay_samples": 512,
                 "eval_interval": 0}}
TP2_PP2 = ["parallel.tensor=2", "parallel.pipeline=2"]


def _train(workdir, run_dir, ranks, *overrides):
    config = workdir / "run.yaml"
    config.write_text(yaml.safe_dump(RUN))
    run_ranks("train_cli", ranks, workdir, "--config", str(config), "--run-dir", str(run_dir), *overrides,
              timeout_s=400)
    return [int((workdir / f"exit.rank{r}").read_text()) for r in range(ranks)]


def _losses(run_dir):
    records, _ = read_metrics(run_dir)
    return {r["step"]: r["loss"] for r in records}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("loop")
    results = {}
    results["straight"] = _train(workdir, workdir / "straight", 4, *TP2_PP2)
    results["first_half"] = _train(workdir, workdir / "resumed", 4, *TP2_PP2, "train.steps=4")
    results["second_half"] = _train(workdir, workdir / "resumed", 4, *TP2_PP2)
    results["first_half_other"] = _train(workdir, workdir / "other", 4, *TP2_PP2, "train.steps=4")
    results["second_half_other"] = _train(workdir, workdir / "other", 2)  # TP1 x PP1 x DP2
    return workdir, results


def test_runs_finish_with_done_and_exit_zero(runs):
    workdir, codes = runs
    assert all(code == 0 for ranks in codes.values() for code in ranks)
    for name in ("straight", "resumed", "other"):
        assert (workdir / name / "DONE").exists()
        assert (workdir / name / "config.yaml").exists()


def test_metrics_and_events_follow_the_schema(runs):
    workdir, _ = runs
    records, _ = read_metrics(workdir / "straight", validate=True)
    assert [r["step"] for r in records] == list(range(1, 9))
    assert "val_loss" in records[-1] and math.isfinite(records[-1]["val_loss"])
    events, _ = read_events(workdir / "straight", validate=True)
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "stop" and "checkpoint_saved" in kinds
    resumed_events, _ = read_events(workdir / "resumed")
    assert [e["kind"] for e in resumed_events].count("checkpoint_loaded") == 1


def test_resume_is_bitwise_exact(runs):
    workdir, _ = runs
    straight, resumed = _losses(workdir / "straight"), _losses(workdir / "resumed")
    assert sorted(resumed) == list(range(1, 9))
    for step in range(1, 9):
        assert resumed[step] == straight[step], step


def test_resume_at_another_layout_stays_within_1e5(runs):
    workdir, _ = runs
    straight, other = _losses(workdir / "straight"), _losses(workdir / "other")
    for step in range(5, 9):
        assert abs(other[step] - straight[step]) / straight[step] < 1e-5, step


@pytest.mark.parametrize("kind, policy", [("spike", "skip"), ("nan", "skip"), ("spike", "rollback")])
def test_spike_guard_acts_and_records(tmp_path, kind, policy):
    run_dir = tmp_path / "run"
    codes = _train(tmp_path, run_dir, 1, "train.steps=30", "train.save_interval=10",
                   f"train.fault_injection.step=25", f"train.fault_injection.kind={kind}",
                   f"train.spike_policy={policy}", "train.rollback_skip_samples=16")
    assert codes == [0]
    events, _ = read_events(run_dir, validate=True)
    spikes = [e for e in events if e["kind"] == "spike"]
    assert spikes and spikes[0]["step"] == 25 and spikes[0]["action"] == policy
    records, _ = read_metrics(run_dir, validate=True)
    if policy == "skip":
        assert records[-1]["skipped"] >= 1
    assert all(math.isfinite(r["param_norm"]) for r in records)  # NaN never reached the weights
    if kind == "nan":
        assert records[-1]["nan"] >= 1
    if policy == "rollback":
        kinds = [e["kind"] for e in events]
        assert "rollback" in kinds and "skip" in kinds
        rollback = next(e for e in events if e["kind"] == "rollback")
        assert rollback["to_step"] == 20
