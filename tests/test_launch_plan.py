"""glm-launch plan: GLM-130B's layout on 96 DGX-A100 nodes against the paper, the memory model
against the model megatron-core builds at world 768 (fake process group, meta device), and the
activation term against bytes measured on CPU."""

import dataclasses
import json

import pytest

from launch.cli import main
from launch.activation_probe import ProbeShape, layer_bytes, probe_run
from launch.clusters import load_cluster
from launch.memory_model import Layout, layer_activation_bytes, memory_per_stage, stage_parameters
from launch.meta_check import build_stages_on_meta
from megatron_glm.config.loader import load_run_config

PAPER = ["--tp", "4", "--pp", "8", "--mbs", "1", "--gbs", "4224", "--recompute", "full"]


@pytest.fixture
def _plan(capsys):
    """glm-launch plan in this process: (exit code, stdout, stderr)."""

    def plan(*args):
        code = main(["plan", *args])
        out, err = capsys.readouterr()
        return code, out, err

    return plan


def test_glm130b_paper_layout_fits_40gb_and_matches_the_measured_throughput(_plan):
    code, out, err = _plan("--model", "glm-130b", "--cluster", "dgx-a100-96", *PAPER, "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["fits"] and plan["world_size"] == 768
    assert plan["layout"]["dp"] == 24 and plan["micro_batches"] == 176
    assert plan["layout"]["first_stage_layers"] == 8 and plan["layout"]["last_stage_layers"] == 8
    assert plan["memory_gb"]["total"] <= 40
    for key in ("weights", "gradients", "optimizer", "activations", "communication", "fragmentation_margin"):
        assert plan["memory_gb"][key] > 0
    # docs/glm130b.md §3: 134 TFLOP/s per GPU (hardware) at 88.5 s per step, batch 4224.
    assert 108 <= plan["tflops_per_gpu_hardware"] <= 160
    assert abs(plan["step_time_s"] / 88.5 - 1) < 0.2
    assert plan["tflops_per_gpu_model"] < plan["tflops_per_gpu_hardware"]  # recompute costs FLOPs
    assert 0 < plan["mfu"] < plan["hfu"] < 1


def test_tp1_pp8_does_not_fit_and_says_why(_plan):
    code, out, _ = _plan("--model", "glm-130b", "--cluster", "dgx-a100-96", "--tp", "1", "--pp", "8")
    assert code == 1
    assert "does NOT fit" in out
    assert "weights, gradients and optimizer state alone take" in out and "raise TP or PP" in out


def test_search_ranks_fitting_layouts_and_finds_the_paper_layout(_plan):
    code, out, err = _plan("--model", "glm-130b", "--cluster", "dgx-a100-96", "--recompute", "full", "--mbs", "1",
                           "--top", "50", "--json")
    assert code == 0, err
    result = json.loads(out)
    plans = result["fitting"]
    assert plans and result["searched"] > len(plans)  # some layouts were rejected
    assert all(p["fits"] and p["memory_gb"]["total"] <= 40 for p in plans)
    speeds = [p["tokens_per_s"] for p in plans]
    assert speeds == sorted(speeds, reverse=True)
    assert any((p["layout"]["tp"], p["layout"]["pp"], p["layout"]["dp"]) == (4, 8, 24) for p in plans)
    assert all(p["layout"]["tp"] in (1, 2, 4, 8) for p in plans)  # TP never spans nodes


def test_weights_gradients_optimizer_equal_the_meta_built_shards_at_world_768():
    """Every pipeline stage of TP4 x PP8 x DP24 built by megatron-core on the meta device inside a
    fake process group of 768 ranks: the planner's bytes are that shard's bytes."""
    run = load_run_config("glm-130b", ["parallel.tensor=4", "parallel.pipeline=8", "parallel.first_stage_layers=8",
                                       "parallel.last_stage_layers=8", "precision=fp16", "recompute.granularity=full"])
    layout = Layout(tp=4, pp=8, dp=24, mbs=1, gbs=4224, recompute="full", precision="fp16",
                    first_stage_layers=8, last_stage_layers=8)
    built = build_stages_on_meta(run, layout)
    for grad_dtype, grad_bytes, optimizer_bytes in (("fp16", 2, 16), ("fp32", 4, 12)):
        layout = dataclasses.replace(layout, grad_dtype=grad_dtype)
        planned = memory_per_stage(run, layout)
        assert [b.params for b in built] == stage_parameters(run, layout)
        for stage, shard in zip(planned, built):
            assert stage.gb["weights"] * 1e9 == pytest.approx(shard.weight_bytes, rel=1e-12)
            assert shard.weight_bytes == 2 * shard.params  # every parameter fp16 (Float16Module)
            assert stage.gb["gradients"] * 1e9 == pytest.approx(shard.params * grad_bytes, rel=1e-12)
            assert stage.gb["optimizer"] * 1e9 == pytest.approx(shard.params * optimizer_bytes / 24, rel=1e-12)
    assert built[0].params != built[1].params != built[7].params  # embedding / 9 layers / head copy


def test_interleaved_uneven_stages_match_the_meta_build():
    run = load_run_config("glm-tiny", ["parallel.tensor=2", "parallel.pipeline=4", "parallel.virtual_pipeline=2"])
    layout = Layout(tp=2, pp=4, dp=1, vpp=2, gbs=8, recompute="none", precision="fp32")
    assert [b.params for b in build_stages_on_meta(run, layout)] == stage_parameters(run, layout)


@pytest.mark.parametrize("shape", [ProbeShape(40, 2, 96, 6, 160, 2), ProbeShape(24, 1, 128, 8, 320, 4)])
def test_activation_model_equals_bytes_measured_on_cpu(shape):
    """Shapes outside the calibration grid: the fitted formula reproduces the measurement."""
    run = probe_run(shape, 2)
    layout = Layout(tp=shape.tp, pp=1, dp=1, mbs=shape.micro_batch)
    for recompute in ("none", "selective", "full"):
        measured = layer_bytes(shape, recompute)
        assert layer_activation_bytes(run, layout, recompute) == pytest.approx(measured, rel=1e-3), recompute


def test_bad_input_is_named(_plan):
    code, _, err = _plan("--model", "glm-130b", "--cluster", "dgx-a100-69")
    assert code == 2 and "unknown cluster profile 'dgx-a100-69'" in err and "dgx-a100-96" in err
    code, out, err = _plan("--model", "glm-130b", "--cluster", "dgx-a100-96", "--tp", "5", "--pp", "8")
    assert code == 2 and not out  # an invalid layout is rejected before anything is sized
    assert "model.num_attention_heads=96 is not divisible by parallel.tensor=5" in err
    assert "world size 768 is not divisible by parallel.tensor x parallel.pipeline = 40" in err
    assert "TP: 1, 2, 4, 8 (divide 96 heads and 8 GPUs per node)" in err
    code, out, err = _plan("--model", "glm-130b", "--cluster", "dgx-a100-96", "--tp", "8", "--pp", "8", "--gbs", "8")
    assert code == 2 and not out
    assert "leaves 0 micro-batches per data-parallel rank" in err and "a multiple of 12" in err
    code, _, err = _plan("--model", "glm-130b", "--cluster", "dgx-a100-96", "--set", "device.memry_gb=80")
    assert code == 2 and "unknown field 'device.memry_gb'; did you mean 'memory_gb'?" in err


def test_cluster_profiles_load():
    dgx = load_cluster("dgx-a100-96")
    assert dgx.world_size == 768 and dgx.device.memory_gb == 40 and dgx.device.peak_tflops == 312
    assert "NCCL_IB_HCA" in dgx.env
    assert load_cluster("dgx-a100-96", ["slurm.partition=batch"]).slurm.partition == "batch"
    assert load_cluster("local-slurm").nodes == 2 and load_cluster("local").scheduler == "none"


def test_search_reports_how_many_layouts_fit_whatever_is_shown(_plan):
    code, out, _ = _plan("--model", "glm-130b", "--cluster", "dgx-a100-96", "--json", "--top", "50")
    fitting = json.loads(out)
    assert code == 0 and fitting["fit"] == len(fitting["fitting"]) > 3
    code, out, _ = _plan("--model", "glm-130b", "--cluster", "dgx-a100-96", "--top", "3")
    assert out.startswith(f"{fitting['fit']} of {fitting['searched']} layouts of 768 ranks fit (best 3 shown)")
    assert len([line for line in out.splitlines() if line.startswith("   ")]) == 3


def test_a_plan_that_does_not_fit_names_the_settings_that_would(_plan):
    code, out, _ = _plan("--model", "glm-130b", "--cluster", "dgx-a100-96", *PAPER, "--grad-dtype", "fp32")
    assert code == 1 and "does NOT fit: peak 41.7 GB of 40 GB" in out
    fixes = out.split("to fit, change one of:")[1].splitlines()
    assert fixes[1].startswith("  train.grad_reduce_in_fp32=false  ->  peak 33.6 GB")  # fewest changes, fastest first
    assert "where no flag says otherwise, GLM-130B's recipe: train.global_batch_size=4224" in out


def test_gradient_buffers_in_another_half_type_are_refused_in_one_line(_plan):
    code, out, err = _plan("--model", "glm-130b", "--cluster", "dgx-a100-96", *PAPER, "--grad-dtype", "bf16")
    assert code == 2 and not out
    assert ("- --grad-dtype bf16: half-precision gradient buffers are in the training precision (fp16); "
            "use --grad-dtype fp16 or fp32") in err
