"""Render the sbatch script of a run: one task per GPU, stop signals forwarded to the ranks, and
after `srun` the decision to finish, requeue or stop (launch/job_hooks.py), a requeue keeping the
nodes the hooks blamed out of the next allocation.

Why the batch shell forwards the time-limit signal (`--signal=B:USR1@N`) instead of letting Slurm
signal the tasks: the shell waits until the trainer is up (it has written its start/restart event
in this allocation) before forwarding, so a signal that arrives while the ranks are still importing
torch does not kill them; and torchrun is not used because it would kill the ranks on a signal
before a 130B checkpoint is written. `srun` forwards SIGUSR1/SIGTERM to every task.

With `slurm.container_image` (pyxis/enroot) every Python step runs in the container: the ranks,
and the job hooks and run-directory queries as one-task steps (`srun --overlap --nodes=1
--ntasks=1`: they share the allocation's resources, so a query while the ranks run does not wait
for them). Each carries `--container-image`, `--container-mounts` (the profile's mounts, then the
repository, the run directory and the directories of the run's data, tokenizer, cache and
init_from paths, each at its own path unless a mount already covers it) and `--container-workdir`
(the repository, so `python -m launch...` imports this checkout; PYTHONPATH says the same), and
names the container after the job (`--container-name`: imported once per node and job, not once
per step). The batch shell itself (scontrol, sbatch, the signal forwarding) stays on the host.
Without an image the script runs the host's interpreter directly, as it always did.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, List, Optional, Sequence

from launch.clusters import ClusterProfile, parse_mounts
from megatron_glm.config.loader import ConfigError

if TYPE_CHECKING:
    from megatron_glm.config.schema import RunConfig

SCRIPT_NAME = "job.sbatch"
REPO_ROOT = str(Path(__file__).resolve().parent.parent)
"""The checkout that holds `launch`, `megatron_glm` and `data_prep` (mounted into a container)."""


@dataclass
class JobSpec:
    name: str
    run_dir: str
    """Absolute."""
    config: str
    """Absolute path of the frozen run config (the submitted config with overrides applied)."""
    workdir: str
    """Where relative data paths resolve (the directory submit ran in)."""
    python: str
    """The interpreter on the compute nodes (this environment's, or "python" in a container)."""
    script: str
    """Absolute path of the rendered script (continuation jobs resubmit it)."""
    run: Optional["RunConfig"] = None
    """The run's config: with a container image, the directories of its data paths are mounted."""
    repo: str = REPO_ROOT
    """The repository (mounted into a container, its working directory)."""


def _q(value: str) -> str:
    return shlex.quote(str(value))


def sbatch_header(cluster: ClusterProfile, job: JobSpec) -> List[str]:
    s = cluster.slurm
    lines = [
        f"#SBATCH --job-name={job.name}",
        f"#SBATCH --nodes={cluster.nodes}",
        f"#SBATCH --ntasks-per-node={cluster.gpus_per_node}",
        f"#SBATCH --time={s.time_limit}",
        f"#SBATCH --signal=B:USR1@{s.signal_seconds}",
        f"#SBATCH --output={job.run_dir}/slurm/%j.out",
        "#SBATCH --open-mode=append",
    ]
    if s.requeue:
        lines.append("#SBATCH --requeue")
    else:
        lines.append("#SBATCH --no-requeue")
    if s.exclusive:
        lines.append("#SBATCH --exclusive")
    lines.extend(site_options(s))
    lines.extend(f"#SBATCH {extra}" for extra in s.extra_sbatch)
    return lines


def site_options(slurm) -> List[str]:
    """#SBATCH lines of the site settings every job of a cluster carries (partition, account, QoS,
    excluded nodes, CPUs per task)."""
    lines = [f"#SBATCH --{key}={getattr(slurm, key)}" for key in ("partition", "account", "qos")
             if getattr(slurm, key)]
    if slurm.exclude:
        lines.append(f"#SBATCH --exclude={','.join(slurm.exclude)}")
    if slurm.cpus_per_task:
        lines.append(f"#SBATCH --cpus-per-task={slurm.cpus_per_task}")
    return lines


SYSTEM_DIRS = frozenset(["/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/opt", "/proc", "/run", "/sbin",
                         "/sys", "/usr", "/var"])
"""Never mounted over the image's own (a cache directory meant to be created in /opt, say)."""


def host_dir(path: str, base: str) -> Optional[str]:
    """The directory to mount for `path` (relative to `base`): the path itself if it is a
    directory, else its parent if that is one (a file's or a dataset prefix's directory, that of
    a cache directory not created yet); None when neither exists here (a dry run for another
    machine) or it is a system directory of the image."""
    path = os.path.normpath(os.path.join(base, os.path.expanduser(path)))
    for candidate in (path, os.path.dirname(path)):
        if os.path.isdir(candidate):
            return None if candidate in SYSTEM_DIRS else candidate
    return None


def run_paths(run: Optional["RunConfig"]) -> List[str]:
    """The host paths a run reads or writes besides its run directory."""
    if run is None:
        return []
    data = run.data
    paths = [data.tokenizer_model, data.instruction_prefix, data.cache_dir, run.train.init_from]
    paths += [source.prefix for source in data.sources]
    return [p for p in paths if p]


def _within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def container_mounts(user_mounts: str, paths: Iterable[str]) -> List[str]:
    """pyxis --container-mounts entries: the profile's own (exact duplicates dropped), then each of
    `paths` (absolute host directories) at the same path inside, unless a writable mount of it or
    of a directory above it at the same place is already there, or something is mounted at that
    exact place; parents before children (a later mount of a parent would hide its children)."""
    entries: List[str] = []
    for entry in parse_mounts(user_mounts):
        if entry.text not in entries:
            entries.append(entry.text)
    mounts = parse_mounts(",".join(entries))
    for path in paths:
        covered = any(m.target == path or (m.source == m.target and _within(path, m.source) and not m.read_only)
                      for m in mounts)
        if covered:
            continue
        if "," in path or ":" in path:
            raise ConfigError([f"{path}: a path with ',' or ':' cannot be given to --container-mounts; "
                               f"mount a directory above it with slurm.container_mounts"])
        # A directory below this one, added before it, is covered now.
        mounts = [m for m in mounts if not (m.auto and _within(m.target, path))]
        mounts += parse_mounts(f"{path}:{path}", auto=True)
    depth = {m.text: m.target.rstrip("/").count("/") for m in mounts}
    return sorted((m.text for m in mounts), key=lambda text: depth[text])


def container_options(slurm, mounts: Sequence[str], workdir: str, name: str = "") -> str:
    """The pyxis options of a step ("" without an image)."""
    if not slurm.container_image:
        return ""
    options = [f"--container-image={_q(slurm.container_image)}", f"--container-mounts={_q(','.join(mounts))}",
               f"--container-workdir={_q(workdir)}"]
    if name:
        options.append(f"--container-name={name}")
    return " ".join(options)


def render(cluster: ClusterProfile, job: JobSpec) -> str:
    """The complete sbatch script as text."""
    s = cluster.slurm
    env = "\n".join(f"export {key}={_q(value)}" for key, value in sorted(cluster.env.items())) or "# (none)"
    container = ""
    # How the script runs Python: the hooks (`helper`), the run-directory query (`query`) and the ranks.
    helper, query, ranks = "$PYTHON", '"$PYTHON"', f"srun --wait={s.task_exit_grace_seconds}"
    if s.cpus_per_task:  # Slurm >= 22.05: srun no longer inherits sbatch's --cpus-per-task
        ranks += f" --cpus-per-task={s.cpus_per_task}"
    in_container = ""
    if s.container_image:
        relative = [p for p in run_paths(job.run) if not os.path.isabs(os.path.expanduser(p))]
        if relative and os.path.realpath(job.workdir) != os.path.realpath(job.repo):
            raise ConfigError([f"data path {p}: in the container a relative path resolves against the repository "
                               f"{job.repo} (its working directory), not against {job.workdir}: give it as an "
                               f"absolute path" for p in relative])
        paths = [job.repo, job.run_dir] + [p for p in (host_dir(p, job.workdir) for p in run_paths(job.run)) if p]
        options = container_options(s, container_mounts(s.container_mounts, paths), job.repo,
                                    name='"glm-$SLURM_JOB_ID"')
        container = f" {options}"
        helper = query = f'srun --overlap --nodes=1 --ntasks=1 {options} "$PYTHON"'
        in_container = f"""
# Every Python step runs in the container (pyxis), the repository its working directory: the
# ranks, and the job hooks and queries as one-task steps sharing the allocation (--overlap).
export PYTHONPATH={_q(job.repo)}"""
    static_exclude = f" --exclude {_q(','.join(s.exclude))}" if s.exclude else ""
    if s.requeue:
        # Slurm refuses ExcNodeList for a running job but takes it once `scontrol requeue` has
        # made the job pending again (it stays COMPLETING until this script ends, so it cannot
        # start before the update). The requeue sends this script SIGTERM: ignore it from here.
        requeue = """requeue() {
    trap '' TERM
    scontrol requeue "$SLURM_JOB_ID" || return 1
    if [ -n "$EXCLUDE" ] && ! scontrol update JobId="$SLURM_JOB_ID" ExcNodeList="$EXCLUDE"; then
        log "could not exclude $EXCLUDE from the requeued job"; return 1
    fi
}"""
    else:
        requeue = (f'requeue() {{ sbatch --parsable --dependency=afterany:"$SLURM_JOB_ID" ${{EXCLUDE:+--exclude="$EXCLUDE"}} '
                   f'{_q(job.script)} >> "$RUN_DIR/slurm/job_ids"; }}')
    header = "\n".join(sbatch_header(cluster, job))
    return f"""#!/bin/bash
# {job.name}: GLM training on {cluster.name} ({cluster.description}).
# Rendered by `glm-launch submit`; resubmit with `sbatch {job.script}`.
# One task per GPU; the trainer maps SLURM_PROCID / SLURM_LOCALID / SLURM_NTASKS and takes the
# first host of SLURM_JOB_NODELIST as rendezvous. Resume is always "load latest".
{header}

set -uo pipefail
RUN_DIR={_q(job.run_dir)}
CONFIG={_q(job.config)}
PYTHON={_q(job.python)}
MAX_FAILURES={s.max_failures}
cd {_q(job.workdir)}{in_container}
mkdir -p "$RUN_DIR/slurm"
log() {{ echo "[glm-launch $(date -u +%Y-%m-%dT%H:%M:%SZ) job $SLURM_JOB_ID] $*"; }}

# Fabric and runtime settings of {cluster.name}.
{env}
# Same port on every task of this allocation, a different one after a requeue.
export MASTER_PORT=$(( 20000 + (SLURM_JOB_ID * 7 + ${{SLURM_RESTART_COUNT:-0}} * 131) % 20000 ))

# Start again ({'requeue this job' if s.requeue else 'this site has no requeue: a new job that waits for this one'}),
# keeping the nodes in $EXCLUDE (comma-separated, from the job hooks) out of the next allocation.
{requeue}

# "run"; "stop" (kill switch); "avoid" plus the nodes to exclude when this allocation has nodes
# the run excluded (e.g. a job resubmitted by hand: the exclusions live in the run directory).
NODES=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | paste -sd, -)
read -r ACTION EXCLUDE <<< "$({helper} -m launch.job_hooks before --run-dir "$RUN_DIR" --nodes "$NODES"{static_exclude})"
case "$ACTION" in
    run) ;;
    stop) log "kill switch $RUN_DIR/STOP present: not starting"; exit 0 ;;
    avoid) log "excluded node(s) in this allocation ($NODES): starting again without $EXCLUDE"
           requeue || {{ log "cancelling the job rather than landing on $EXCLUDE again"; scancel "$SLURM_JOB_ID"; }}
           exit 0 ;;
    *) log "the job hook failed: not starting"; exit 1 ;;
esac

# The trainer is up once it has written a start/restart event in this allocation.
starts() {{ {query} -m megatron_glm.rundir started-count "$RUN_DIR"; }}
STARTS_BEFORE=$(starts)
trainer_up() {{ [ "$(starts)" -gt "$STARTS_BEFORE" ]; }}

# Stop signals (Slurm's USR1 before the time limit, TERM on preemption/requeue) go to the ranks,
# which save a checkpoint and exit 75 -- once they are up; until then the signal is held.
PENDING=""
SRUN_PID=""
forward() {{ PENDING=$1; log "got SIG$1"; deliver; }}
deliver() {{
    if [ -n "$PENDING" ] && [ -n "$SRUN_PID" ] && trainer_up; then
        log "forwarding SIG$PENDING to the ranks"; kill -s "$PENDING" "$SRUN_PID" 2>/dev/null; PENDING=""
    fi
}}
trap 'forward USR1' USR1
trap 'forward TERM' TERM

log "starting {cluster.nodes} x {cluster.gpus_per_node} tasks (restart ${{SLURM_RESTART_COUNT:-0}})"
# --wait: once a task has ended (a crash, or the first rank done saving), the others get
# {s.task_exit_grace_seconds} s to follow before srun ends them (a crashed peer leaves them blocked).
{ranks}{container} \\
    "$PYTHON" -m launch.rank_entry "$RUN_DIR" -- --config "$CONFIG" --run-dir "$RUN_DIR" &
SRUN_PID=$!
while true; do
    wait "$SRUN_PID"; RC=$?
    if ! kill -0 "$SRUN_PID" 2>/dev/null; then break; fi
    while [ -n "$PENDING" ] && kill -0 "$SRUN_PID" 2>/dev/null && ! trainer_up; do sleep 1; done
    deliver
done
log "srun exited with $RC"

# One line: the action, and for a requeue the nodes the next allocation must avoid (nodes blamed
# for a hang, a failed pre-flight check or a crash, RUN_DIR/slurm/excluded_nodes.json).
DECISION=$({helper} -m launch.job_hooks after --run-dir "$RUN_DIR" --exit-code "$RC" --max-failures "$MAX_FAILURES" \\
    --max-excluded {s.max_excluded_nodes}{static_exclude})
read -r ACTION EXCLUDE <<< "$DECISION"
log "action: ${{ACTION:-none (the job hook failed)}}${{EXCLUDE:+, excluding $EXCLUDE}}"
case "$ACTION" in
    done) exit 0 ;;
    requeue) requeue; exit 0 ;;
    *) exit 1 ;;
esac
"""
