"""`glm-launch submit RUN.yaml --cluster NAME --run-dir DIR`: validate, render, `sbatch --parsable`.

Everything is checked before anything is written: the config (the trainer's own validation at the
cluster's world size: the layout divides it, heads/layers split), data and tokenizer files exist
and are readable, the run directory can be written, and the planner says the layout fits the
device memory. Then RUN_DIR/slurm/run.yaml (the config with overrides applied, frozen so that a
requeued job trains what was submitted) and RUN_DIR/slurm/job.sbatch are written and submitted;
the job id is appended to RUN_DIR/slurm/job_ids.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from launch.clusters import ClusterProfile, load_cluster
from launch.fixes import fixes
from launch.planner import make_plan, run_layout
from launch.sbatch import SCRIPT_NAME, JobSpec, render
from megatron_glm.config.loader import ConfigError, load_run_config, to_yaml
from megatron_glm.config.schema import RunConfig
from megatron_glm.config.validate import config_problems

JOB_IDS = "slurm/job_ids"


@dataclass
class SubmitRequest:
    config: str
    cluster: str
    run_dir: str
    overrides: List[str] = field(default_factory=list)
    cluster_overrides: List[str] = field(default_factory=list)
    time_limit: Optional[str] = None
    signal_seconds: Optional[int] = None
    name: Optional[str] = None
    dry_run: bool = False


def _writable_dir_problem(path: Path, what: str) -> Optional[str]:
    """Whether `path` can be created: a directory is made (and removed) in its nearest existing
    ancestor, since permission bits say yes to root on /proc or a read-only mount."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    if probe.is_dir():
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".glm-launch-probe-", dir=probe))
            return None
        except OSError:
            pass
    return f"{what} {path}: {probe} is not a writable directory"


def problems_before_submit(run: RunConfig, cluster: ClusterProfile, run_dir: Path) -> List[str]:
    from megatron_glm.training.downstream import eval_task_file_problems

    problems = list(config_problems(run, world_size=cluster.world_size, training=True)) + eval_task_file_problems(run)
    data = run.data
    for name, path in [("data.tokenizer_model", data.tokenizer_model)] + [
            (f"data.sources[{i}].prefix", s.prefix + ext) for i, s in enumerate(data.sources) for ext in (".bin", ".idx")] + (
            [("data.instruction_prefix", data.instruction_prefix + ext) for ext in (".bin", ".idx")]
            if data.instruction_prefix else []):
        if path and os.path.isfile(path) and not os.access(path, os.R_OK):
            problems.append(f"{name}: {path} exists but is not readable by this user")
    problem = _writable_dir_problem(run_dir / "checkpoints", "checkpoint directory")
    if problem:
        problems.append(problem)
    if not problems:
        layout = run_layout(run, cluster)
        plan = make_plan(run, layout, cluster)
        problems.extend(f"planner: {p}" for p in plan.problems)
        if not plan.fits:
            found = fixes(run, layout, cluster)
            problems.append("to fit, " + ("change one of (dotted.key=value overrides):\n" +
                            "\n".join(f"    {fix.describe()}" for fix in found) if found else
                            "no change of one or two settings is enough; search with `glm-launch plan --model MODEL`"))
    return problems


def submit(request: SubmitRequest) -> int:
    """Returns the exit code: 0 submitted (or dry run printed), 2 invalid, else sbatch's failure."""
    try:
        cluster = load_cluster(request.cluster, request.cluster_overrides)
        run = load_run_config(request.config, request.overrides)
    except ConfigError as error:
        print(f"glm-launch submit: invalid configuration:\n{error}", file=sys.stderr)
        return 2
    if request.time_limit:
        cluster.slurm.time_limit = str(request.time_limit)
    if request.signal_seconds is not None:
        cluster.slurm.signal_seconds = request.signal_seconds
    if cluster.scheduler != "slurm":
        print(f"glm-launch submit: cluster {cluster.name} has no Slurm (scheduler: {cluster.scheduler}); "
              f"use glm-launch run", file=sys.stderr)
        return 2
    run_dir = Path(request.run_dir).resolve()
    problems = problems_before_submit(run, cluster, run_dir)
    if problems:
        print("glm-launch submit: not submitted:\n" + "\n".join(f"- {p}" for p in problems), file=sys.stderr)
        return 2
    slurm_dir = run_dir / "slurm"
    script = slurm_dir / SCRIPT_NAME
    job = JobSpec(name=request.name or f"glm-{run_dir.name}", run_dir=str(run_dir), config=str(slurm_dir / "run.yaml"),
                  workdir=os.getcwd(), python="python" if cluster.slurm.container_image else sys.executable,
                  script=str(script), run=run)
    text = render(cluster, job)
    if request.dry_run:
        print(text, end="")
        return 0
    slurm_dir.mkdir(parents=True, exist_ok=True)
    (slurm_dir / "run.yaml").write_text(to_yaml(run))
    script.write_text(text)
    script.chmod(0o755)
    result = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        print(f"glm-launch submit: sbatch failed (exit {result.returncode}): {result.stderr.strip()}", file=sys.stderr)
        return result.returncode
    job_id = result.stdout.strip().split(";")[0]
    with open(run_dir / JOB_IDS, "a") as ids:
        ids.write(job_id + "\n")
    print(job_id)
    return 0
