"""Render the sbatch script of a run: one task per GPU, stop signals forwarded to the ranks, and
after `srun` the decision to finish, requeue or stop (launch/job_hooks.py), a requeue keeping the
nodes the hooks blamed out of the next allocation.

Why the batch shell forwards the time-limit signal (`--signal=B:USR1@N`) instead of letting Slurm
signal the tasks: the shell waits until the trainer is up (it has written its start/restart event
in this allocation) before forwarding, so a signal that arrives while the ranks are still importing
torch does not kill them; and torchrun is not used because it would kill the ranks on a signal
before a 130B checkpoint is written. `srun` forwards SIGUSR1/SIGTERM to every task.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import List

from launch.clusters import ClusterProfile

SCRIPT_NAME = "job.sbatch"


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


def render(cluster: ClusterProfile, job: JobSpec) -> str:
    """The complete sbatch script as text."""
    s = cluster.slurm
    env = "\n".join(f"export {key}={_q(value)}" for key, value in sorted(cluster.env.items())) or "# (none)"
    container = ""
    if s.container_image:
        container = f" --container-image={_q(s.container_image)}"
        if s.container_mounts:
            container += f" --container-mounts={_q(s.container_mounts)}"
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
cd {_q(job.workdir)}
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
read -r ACTION EXCLUDE <<< "$($PYTHON -m launch.job_hooks before --run-dir "$RUN_DIR" --nodes "$NODES"{static_exclude})"
case "$ACTION" in
    run) ;;
    stop) log "kill switch $RUN_DIR/STOP present: not starting"; exit 0 ;;
    avoid) log "excluded node(s) in this allocation ($NODES): starting again without $EXCLUDE"
           requeue || {{ log "cancelling the job rather than landing on $EXCLUDE again"; scancel "$SLURM_JOB_ID"; }}
           exit 0 ;;
    *) log "the job hook failed: not starting"; exit 1 ;;
esac

# The trainer is up once it has written a start/restart event in this allocation.
starts() {{ "$PYTHON" -m megatron_glm.rundir started-count "$RUN_DIR"; }}
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
srun --wait={s.task_exit_grace_seconds}{container} \\
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
DECISION=$($PYTHON -m launch.job_hooks after --run-dir "$RUN_DIR" --exit-code "$RC" --max-failures "$MAX_FAILURES" \\
    --max-excluded {s.max_excluded_nodes}{static_exclude})
read -r ACTION EXCLUDE <<< "$DECISION"
log "action: ${{ACTION:-none (the job hook failed)}}${{EXCLUDE:+, excluding $EXCLUDE}}"
case "$ACTION" in
    done) exit 0 ;;
    requeue) requeue; exit 0 ;;
    *) exit 1 ;;
esac
"""
