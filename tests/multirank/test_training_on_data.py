"""glm-train on the blended demo stream: batch-size ramp-up, per-source loss, TensorBoard mirror."""

import math

import pytest
import yaml

from megatron_glm.metrics.schema import read_metrics
from megatron_glm.training.schedules import BatchRampup, global_batch_size_at
from multirank.harness import run_ranks

pytestmark = pytest.mark.multirank

RAMPUP = [4, 4, 16]  # 4, 4, 8, then the full 12 (megatron-core: one increment per 8 samples)
STEPS = 6


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, demo_tokenizer, demo_data_section):
    """TP1 x PP2 x DP2 (4 ranks), micro batch 1, global batch ramping 4 -> 12."""
    workdir = tmp_path_factory.mktemp("data_run")
    run = {
        "model": {"preset": "glm-tiny", "vocab_size": demo_tokenizer.vocab_size, "seq_length": 128},
        "parallel": {"tensor": 1, "pipeline": 2},
        "data": demo_data_section(workdir / "cache", instruction_ratio=0.2),
        "train": {"steps": STEPS, "global_batch_size": 12, "rampup_batch_size": RAMPUP, "peak_lr": 1e-3,
                  "min_lr": 1e-4},
    }
    config = workdir / "run.yaml"
    config.write_text(yaml.safe_dump(run))
    run_ranks("train_cli", 4, workdir, "--config", str(config), "--run-dir", str(workdir / "run"), timeout_s=400)
    return workdir / "run"


def test_batch_size_follows_megatron_cores_rampup(run_dir):
    records, _ = read_metrics(run_dir, validate=True)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    rampup = BatchRampup(*RAMPUP, global_batch_size=12)
    consumed = 0
    for record in records:
        expected = global_batch_size_at(consumed, rampup, micro_batch_size=1, data_parallel_size=2)
        assert record["batch_size"] == expected, record["step"]
        consumed += expected
        assert record["consumed_samples"] == consumed
    assert [r["batch_size"] for r in records] == [4, 4, 8, 12, 12, 12]


def test_per_source_losses_bracket_the_batch_loss(run_dir):
    """The batch loss is the sequence-weighted mean of the per-source losses, so it lies between them."""
    records, _ = read_metrics(run_dir)
    seen = set()
    for record in records:
        sources = {key: value for key, value in record.items() if key.startswith("loss/")}
        assert sources, record
        assert set(sources) <= {"loss/pile", "loss/wudao", "loss/mip"}
        assert all(math.isfinite(v) for v in sources.values())
        assert min(sources.values()) - 1e-9 <= record["loss"] <= max(sources.values()) + 1e-9
        if len(sources) == 1:
            assert next(iter(sources.values())) == pytest.approx(record["loss"], rel=1e-12)
        seen |= set(sources)
    assert seen == {"loss/pile", "loss/wudao", "loss/mip"}


def test_tensorboard_mirrors_the_metrics(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    records, _ = read_metrics(run_dir)
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"loss", "lr", "batch_size", "grad_norm", "val_loss", "loss/pile"} <= set(tags)
    scalars = events.Scalars("loss")
    assert [s.step for s in scalars] == [r["step"] for r in records]
    for scalar, record in zip(scalars, records):
        assert scalar.value == pytest.approx(record["loss"], rel=1e-6)  # stored as float32
    assert [s.value for s in events.Scalars("batch_size")] == [r["batch_size"] for r in records]
