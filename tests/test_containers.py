"""Slurm jobs in a container (pyxis/enroot, `slurm.container_image`): every Python step of the
training script (the ranks, the job hooks before and after srun, the run-directory query) and of
the prep array and merge scripts is an `srun` with `--container-image`, `--container-mounts` (the
profile's mounts plus the repository, the run directory and the data directories, deduplicated)
and `--container-workdir`; without an image the scripts carry none of it. Rendering only: the
local Slurm of tests/slurm/ has no pyxis, so no container runs here."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from launch.cli import main
from launch.clusters import load_cluster
from launch.prep import PrepRequest, render_scripts
from launch.sbatch import REPO_ROOT, JobSpec, container_mounts, render
from megatron_glm.config.loader import ConfigError, load_run_config

IMAGE = "nvcr.io#nvidia/pytorch:24.05-py3"
GLM130B_TP8 = ["parallel.tensor=8", "parallel.pipeline=8", "parallel.first_stage_layers=8",
               "parallel.last_stage_layers=8", "precision=fp16", "recompute.granularity=full",
               "train.global_batch_size=4224", "data.synthetic=true"]
INTERPRETER = re.compile(r'(?:"\$PYTHON"|\$PYTHON\b|(?<![\w.-])(?:/\S*/)?python3?(?=\s))(\s+-m\s+([\w.]+))?')
"""The interpreter as a command word (not a path or name containing "python"), and its module."""


def python_steps(script: str):
    """[(options of the srun that runs it, or None; module)] for every Python invocation of the
    script (continuation lines joined, comments skipped). Fails on an interpreter that runs no
    module (a script path, -c), so no invocation escapes the check."""
    steps = []
    for line in script.replace("\\\n", " ").splitlines():
        code = line.strip()
        if not code or code.startswith("#") or re.match(r"(export )?PYTHON(PATH)?=", code):
            continue
        for match in INTERPRETER.finditer(code):
            assert match.group(2), f"Python run some other way: {code}"
            before = code[:match.start()]
            srun = before.rfind("srun ")
            options = shlex.split(before[srun + len("srun "):].split("$(")[-1]) if srun >= 0 else None
            steps.append((options, match.group(2)))
    return steps


def option(options, name):
    values = [o.split("=", 1)[1] for o in options if o.startswith(f"--{name}=")]
    assert len(values) == 1, (name, options)
    return values[0]


def assert_in_container(steps, mounted):
    for options, module in steps:
        assert options is not None, f"python -m {module} runs outside srun"
        assert option(options, "container-image") == IMAGE
        mounts = option(options, "container-mounts").split(",")
        for path in mounted:
            assert f"{path}:{path}" in mounts, (module, path, mounts)
        assert len(mounts) == len(set(mounts))
        assert option(options, "container-workdir") == REPO_ROOT


def _dry_run(capsys, tmp_path, *sets):
    code = main(["submit", "glm-130b", "--cluster", "dgx-a100-96", "--run-dir", str(tmp_path / "run"),
                 *(item for s in sets for item in ("--set", s)), *GLM130B_TP8, "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_every_python_step_of_the_training_script_runs_in_the_container(capsys, tmp_path):
    script = _dry_run(capsys, tmp_path, f"slurm.container_image={IMAGE}", "slurm.container_mounts=/lustre:/lustre:ro")
    steps = python_steps(script)
    assert sorted(m for _, m in steps) == ["launch.job_hooks", "launch.job_hooks", "launch.rank_entry",
                                           "megatron_glm.rundir"]
    run_dir = str(tmp_path / "run")
    assert_in_container(steps, [REPO_ROOT, run_dir])
    for options, module in steps:
        assert option(options, "container-mounts").startswith("/lustre:/lustre:ro,")  # the profile's own first
        assert option(options, "container-name") == "glm-$SLURM_JOB_ID"  # imported once per node and job
        if module == "launch.rank_entry":  # the ranks: one step over the whole allocation
            assert "--overlap" not in options and option(options, "wait") == "600"
        else:  # hooks and queries: one task beside the ranks' step, sharing its resources
            assert {"--overlap", "--nodes=1", "--ntasks=1"} <= set(options)
    assert "PYTHON=python\n" in script and f"export PYTHONPATH={REPO_ROOT}\n" in script
    assert sys.executable not in script
    syntax = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr


def test_without_an_image_the_training_script_runs_the_host_interpreter(capsys, tmp_path):
    script = _dry_run(capsys, tmp_path)
    assert "container" not in script and "--overlap" not in script and "PYTHONPATH" not in script
    assert f"PYTHON={sys.executable}\n" in script
    steps = python_steps(script)
    assert [options for options, m in steps if m != "launch.rank_entry"] == [None, None, None]
    # the ranks ask for their CPUs again: srun does not inherit sbatch's --cpus-per-task (Slurm >= 22.05)
    assert [options for options, m in steps if m == "launch.rank_entry"] == [["--wait=600", "--cpus-per-task=16"]]
    for line in ('"$($PYTHON -m launch.job_hooks before', 'starts() { "$PYTHON" -m megatron_glm.rundir',
                 'DECISION=$($PYTHON -m launch.job_hooks after', 'srun --wait=600 --cpus-per-task=16 \\\n    "$PYTHON" -m launch.rank_entry'):
        assert line in script, line


def _job(tmp_path, run, workdir):
    return JobSpec(name="glm-run", run_dir=str(tmp_path / "run"), config=str(tmp_path / "run" / "slurm" / "run.yaml"),
                   workdir=str(workdir), python="python", script=str(tmp_path / "run" / "slurm" / "job.sbatch"), run=run)


def test_the_data_directories_of_the_run_are_mounted(tmp_path):
    for sub in ("tok", "data", "cache", "ckpt/iter_0000010"):
        (tmp_path / sub).mkdir(parents=True)
    (tmp_path / "tok" / "glm.model").write_text("")
    run = load_run_config("glm-tiny", [f"data.tokenizer_model={tmp_path}/tok/glm.model",
                                       f"data.sources=[{{prefix: {tmp_path}/data/pile}}]",
                                       f"data.instruction_prefix={tmp_path}/data/mip",
                                       f"data.cache_dir={tmp_path}/cache/not-yet",  # created by rank 0
                                       f"train.init_from={tmp_path}/ckpt"])
    cluster = load_cluster("local-slurm", [f"slurm.container_image={IMAGE}"])
    steps = python_steps(render(cluster, _job(tmp_path, run, REPO_ROOT)))
    assert len(steps) == 4
    assert_in_container(steps, [REPO_ROOT, tmp_path / "run", *(tmp_path / d for d in ("tok", "data", "cache", "ckpt"))])

    # Never over the image's own system directories, nor anything for paths absent here.
    run.data.cache_dir, run.train.init_from = "/opt/glm-cache", "/nonexistent/ckpt/iter_0000010"
    mounts = option(python_steps(render(cluster, _job(tmp_path, run, REPO_ROOT)))[0][0], "container-mounts")
    assert "/opt" not in mounts and "/nonexistent" not in mounts and f"{tmp_path}/tok:" in mounts

    # A relative data path would resolve against the repository inside: refused before submitting.
    run.data.tokenizer_model = "tok/glm.model"
    with pytest.raises(ConfigError, match="tok/glm.model: in the container a relative path resolves"):
        render(cluster, _job(tmp_path, run, tmp_path))


def test_mounts_are_deduplicated_and_parents_come_first():
    assert container_mounts("/lustre:/lustre, /lustre:/lustre,/scratch:/data:ro",
                            ["/work/repo", "/lustre/runs/x", "/scratch/tok"]) == [
        "/lustre:/lustre", "/scratch:/data:ro", "/work/repo:/work/repo", "/scratch/tok:/scratch/tok"]
    # A read-only mount above does not cover a directory the job writes; a user mount below an
    # automatic one comes after it (a later parent mount would hide it).
    assert container_mounts("/lustre/runs:/lustre/runs:ro,/lustre/data:/lustre/data", ["/lustre/runs/x", "/lustre"]) == [
        "/lustre:/lustre", "/lustre/runs:/lustre/runs:ro", "/lustre/data:/lustre/data"]
    assert container_mounts("", ["/a/b", "/a/b", "/a", "/c"]) == ["/a:/a", "/c:/c"]
    assert container_mounts("/elsewhere:/a/b", ["/a/b"]) == ["/elsewhere:/a/b"]  # the user's choice of what is there
    with pytest.raises(ConfigError, match="cannot be given to --container-mounts"):
        container_mounts("", ["/data/a,b"])


@pytest.mark.parametrize("mounts, ok", [
    ("/lustre:/lustre:ro+rprivate,tmpfs:/dev/shm,./scratch:/scratch,/data", True),
    ("data:/data", False),
    ("/a:/a,,/b:/b", False),
    ("/a::ro", False),
    ("/a:data", False),
])
def test_profile_mounts_are_checked_for_pyxis_syntax(mounts, ok):
    if ok:
        assert load_cluster("dgx-a100-96", [f"slurm.container_mounts={mounts}"]).slurm.container_mounts == mounts
    else:
        with pytest.raises(ConfigError, match="slurm.container_mounts entry"):
            load_cluster("dgx-a100-96", [f"slurm.container_mounts={mounts}"])


def _prep(tmp_path, *sets):
    for name in ("in/a.jsonl", "in/more/b.jsonl", "tok/glm.model"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    files = [str(tmp_path / "in/a.jsonl"), str(tmp_path / "in/more/b.jsonl")]
    request = PrepRequest(cluster="dgx-a100-96", inputs=files, output_prefix=str(tmp_path / "out/pile"),
                          tokenizer_model=str(tmp_path / "tok/glm.model"), prep_args=["--format", "jsonl"],
                          cluster_overrides=list(sets))
    array, merge, _ = render_scripts(request, files)
    return array, merge


def test_prep_shards_and_merge_run_in_the_container(tmp_path):
    array, merge = _prep(tmp_path, f"slurm.container_image={IMAGE}", "slurm.container_mounts=/lustre:/lustre")
    for script, module in ((array, "tokenize"), (merge, "merge")):
        steps = python_steps(script)
        assert [m for _, m in steps] == ["data_prep.cli"] and f"data_prep.cli {module}" in script
        # inputs (in/more inside in/), output and tokenizer directories
        assert_in_container(steps, [REPO_ROOT, tmp_path / "in", tmp_path / "out", tmp_path / "tok"])
        options = steps[0][0]
        assert "/lustre:/lustre" in option(options, "container-mounts").split(",")
        assert f"{tmp_path}/in/more:{tmp_path}/in/more" not in option(options, "container-mounts")
        assert {"--nodes=1", "--ntasks=1", "--cpus-per-task=16"} <= set(options)
        assert "exec srun " in script


def test_prep_without_an_image_runs_the_host_interpreter(tmp_path):
    for script in _prep(tmp_path):
        assert "container" not in script and "srun" not in script
        assert [options for options, _ in python_steps(script)] == [None]
        assert f"exec {sys.executable} -m data_prep.cli " in script
