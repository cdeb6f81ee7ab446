"""glm-launch submit without a Slurm: the dgx-a100-96 dry run, what is refused before anything is
written, and the after-srun decisions (finish, requeue, give up) of launch/job_hooks.py."""

import subprocess

import pytest

from launch.cli import main
from launch.job_hooks import after, before
from megatron_glm.metrics.schema import read_events

GLM130B_TP8 = ["parallel.tensor=8", "parallel.pipeline=8", "parallel.first_stage_layers=8",
               "parallel.last_stage_layers=8", "precision=fp16", "recompute.granularity=full",
               "train.global_batch_size=4224", "data.synthetic=true"]


@pytest.fixture
def _submit(capsys):
    """glm-launch submit in this process (none of these cases reaches sbatch)."""

    def submit(*args):
        code = main(["submit", *args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return submit


@pytest.fixture
def _plan_json(capsys):
    """glm-launch plan --json on dgx-a100-96 in this process."""
    import json

    def plan(model, *overrides):
        main(["plan", "--model", model, "--cluster", "dgx-a100-96", "--json", *overrides])
        return json.loads(capsys.readouterr().out)

    return plan


def test_dry_run_for_dgx_a100_96_is_a_complete_sbatch_script(_submit, tmp_path):
    result = _submit("glm-130b", "--cluster", "dgx-a100-96", "--run-dir", str(tmp_path / "run"),
                     "--set", "slurm.partition=batch", "--set", "slurm.exclude=[dgx017]", *GLM130B_TP8, "--dry-run")
    assert result.returncode == 0, result.stderr
    script = result.stdout
    for line in ("#!/bin/bash", "#SBATCH --nodes=96", "#SBATCH --ntasks-per-node=8", "#SBATCH --exclusive",
                 "#SBATCH --requeue", "#SBATCH --open-mode=append", "#SBATCH --signal=B:USR1@900",
                 "#SBATCH --time=48:00:00", "#SBATCH --partition=batch", "#SBATCH --exclude=dgx017",
                 "#SBATCH --gres=gpu:8", "export NCCL_IB_HCA=mlx5_0,mlx5_1,mlx5_2,mlx5_3,mlx5_6,mlx5_7,mlx5_8,mlx5_9",
                 "export CUDA_DEVICE_MAX_CONNECTIONS=1", "export GLM_COLLECTIVE_TIMEOUT_S=1800", "trap 'forward USR1' USR1", "srun --wait=600 --cpus-per-task=16",
                 'scontrol requeue "$SLURM_JOB_ID"', "-m launch.job_hooks after"):
        assert line in script, line
    assert "#SBATCH --account" not in script  # unset site settings are left out
    syntax = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    assert not (tmp_path / "run").exists()  # a dry run writes nothing


def test_without_requeue_the_job_continues_with_a_dependent_job(_submit, tmp_path):
    result = _submit("glm-130b", "--cluster", "dgx-a100-96", "--run-dir", str(tmp_path / "run"),
                     "--set", "slurm.requeue=false", *GLM130B_TP8, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "#SBATCH --no-requeue" in result.stdout
    assert (f'sbatch --parsable --dependency=afterany:"$SLURM_JOB_ID" ${{EXCLUDE:+--exclude="$EXCLUDE"}} '
            f'{tmp_path}/run/slurm/job.sbatch') in result.stdout  # the continuation avoids the blamed nodes


@pytest.mark.parametrize("overrides, expected", [
    (["parallel.tensor=4", "parallel.pipeline=8", "parallel.first_stage_layers=8", "parallel.last_stage_layers=8",
      "precision=fp16", "recompute.granularity=full", "train.global_batch_size=4224", "data.synthetic=true"],
     "planner: pipeline stage 0 needs 41.7 GB > 40 GB"),
    (GLM130B_TP8[:-1], "no training data: the config has no data.sources"),  # synthetic only when asked for  # fp32 gradient buffers (the trainer today)
    (["parallel.tensor=3"], "is not divisible by parallel.tensor=3"),
    (GLM130B_TP8 + ["data.tokenizer_model=/nonexistent/tok.model", "data.sources=[{prefix: /nonexistent/pile}]"],
     "data.tokenizer_model=/nonexistent/tok.model: no such file"),
])
def test_submit_refuses_before_writing_anything(_submit, tmp_path, overrides, expected):
    result = _submit("glm-130b", "--cluster", "dgx-a100-96", "--run-dir", str(tmp_path / "run"), *overrides)
    assert result.returncode == 2
    assert "not submitted" in result.stderr and expected in result.stderr
    assert not (tmp_path / "run").exists()


def test_submit_refuses_an_unwritable_run_dir(_submit, tmp_path):
    (tmp_path / "a-file").write_text("")
    result = _submit("glm-130b", "--cluster", "dgx-a100-96", "--run-dir", str(tmp_path / "a-file" / "run"), *GLM130B_TP8)
    assert result.returncode == 2
    assert f"checkpoint directory {tmp_path}/a-file/run/checkpoints: {tmp_path}/a-file is not a writable directory" \
        in result.stderr


def test_submit_to_a_profile_without_slurm_points_at_run(_submit, tmp_path):
    result = _submit("glm-tiny", "--cluster", "local", "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 2 and "use glm-launch run" in result.stderr


def _launcher_events(run_dir):
    return [e for e in read_events(run_dir)[0] if e.get("source") == "launcher"]


def _checkpoint(run_dir, step):
    (run_dir / "checkpoints" / f"iter_{step:07d}").mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints" / "latest").write_text(f"iter_{step:07d}\n")


def test_after_srun_decisions(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    run = tmp_path
    _checkpoint(run, 10)
    assert before(run) == "run"
    assert after(run, 75, max_failures=3) == "requeue"  # a stop signal with a checkpoint saved
    assert _launcher_events(run)[-1]["reason"] == "requeue" and _launcher_events(run)[-1]["step"] == 10

    # Crashes without a new checkpoint: requeue twice, give up on the third, and say why.
    for attempt in (1, 2):
        assert before(run) == "run"
        assert after(run, 1, max_failures=3) == "requeue"
        assert f"({attempt}/3 failures in a row)" in _launcher_events(run)[-1]["message"]
    assert before(run) == "run"
    assert after(run, 139, max_failures=3) == "stop"
    last = _launcher_events(run)[-1]
    assert last["kind"] == "error" and "without a new checkpoint 3 allocations in a row" in last["message"]

    # A crash after progress starts the count again.
    assert before(run) == "run"
    _checkpoint(run, 12)
    assert after(run, 1, max_failures=3) == "requeue"
    assert "(0/3 failures in a row)" in _launcher_events(run)[-1]["message"]

    assert before(run) == "run"
    assert after(run, 2, max_failures=3) == "stop"  # bad configuration: never requeued
    assert "rejected the configuration" in _launcher_events(run)[-1]["message"]

    (run / "STOP").touch()  # the kill switch
    assert before(run) == "stop"
    assert _launcher_events(run)[-1]["reason"] == "kill_switch"
    assert after(run, 75, max_failures=3) == "stop"
    (run / "STOP").unlink()
    (run / "DONE").write_text("step 12\n")
    assert after(run, 0, max_failures=3) == "done"
    assert all(e["job_id"] == "42" for e in _launcher_events(run))
    read_events(run, validate=True)  # the launcher's events follow the shared schema


def test_dry_run_refuses_a_run_dir_it_could_not_create(_submit, tmp_path):
    """Permission bits say yes to root on /proc: the check creates (and removes) a directory."""
    result = _submit("glm-130b", "--cluster", "dgx-a100-96", "--run-dir", "/proc/nope", *GLM130B_TP8, "--dry-run")
    assert result.returncode == 2
    assert "checkpoint directory /proc/nope/checkpoints: /proc is not a writable directory" in result.stderr


def test_status_of_a_directory_that_is_no_run(tmp_path):
    import sys
    from pathlib import Path

    status = subprocess.run([str(Path(sys.executable).parent / "glm-launch"), "status", str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 2 and "not a run directory" in status.stderr


def test_plan_into_a_closed_pipe_is_quiet():
    """`glm-launch plan ... | head`: the reader is gone before the plan is written."""
    import sys
    from pathlib import Path

    proc = subprocess.Popen([str(Path(sys.executable).parent / "glm-launch"), "plan", "--model", "glm-130b",
                             "--cluster", "dgx-a100-96"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "BrokenPipeError" not in err and "Traceback" not in err, err


def test_submit_and_plan_size_the_same_config_the_same_way(_submit, _plan_json, tmp_path):
    """The paper's layout with fp32 gradient buffers (the trainer's default): both say 41.7 GB, and
    the refusal names the settings that fit (plan's own figure for them included)."""
    paper = ["parallel.tensor=4", "parallel.pipeline=8", "parallel.first_stage_layers=8", "parallel.last_stage_layers=8",
             "precision=fp16", "recompute.granularity=full", "train.global_batch_size=4224", "data.synthetic=true"]
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text("model: glm-130b\n")
    plan = _plan_json(str(run_yaml), *paper)
    assert not plan["fits"] and plan["memory_gb"]["total"] == pytest.approx(41.7, abs=0.05)
    result = _submit(str(run_yaml), "--cluster", "dgx-a100-96", "--run-dir", str(tmp_path / "run"), *paper)
    assert result.returncode == 2 and f"needs {plan['memory_gb']['total']:.1f} GB > 40 GB" in result.stderr
    assert "to fit, change one of (dotted.key=value overrides):" in result.stderr
    assert "    train.grad_reduce_in_fp32=false  ->  peak 33.6 GB" in result.stderr
    assert plan["fixes"][0]["overrides"] == ["train.grad_reduce_in_fp32=false"]
    fixed = _plan_json(str(run_yaml), *paper, "train.grad_reduce_in_fp32=false")
    assert fixed["fits"] and fixed["memory_gb"]["total"] == pytest.approx(33.6, abs=0.05)
    result = _submit(str(run_yaml), "--cluster", "dgx-a100-96", "--run-dir", str(tmp_path / "run"), *paper,
                     "train.grad_reduce_in_fp32=false", "--dry-run")
    assert result.returncode == 0, result.stderr
