"""`glm-launch status RUN_DIR`: job state, last step and its time, last checkpoint, restarts, and
the nodes the job hooks excluded (with why).

Reads only the run directory and Slurm's live view (`squeue`, then `scontrol show job` for jobs
that just ended; sites without accounting have no `sacct`), so it works while the job runs and
after it is gone.
"""

from __future__ import annotations

import datetime
import os
import subprocess
from pathlib import Path
from typing import Any, Dict, Optional

from launch.job_hooks import read_excluded
from launch.submit import JOB_IDS
from megatron_glm.metrics.schema import read_events, read_metrics
from megatron_glm.rundir import RunDir


def slurm_state(job_id: str) -> Dict[str, Optional[str]]:
    """{"state", "reason", "nodes", "restarts"} from squeue / scontrol; state "UNKNOWN" when the job
    has left the controller's memory."""
    conf = os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")
    if not os.path.isfile(conf):  # every Slurm client blocks ~60 s without one
        return {"state": "UNKNOWN", "reason": f"no Slurm configuration ({conf})", "nodes": None, "restarts": None}
    try:
        out = subprocess.run(["scontrol", "show", "job", job_id, "-o"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        return {"state": f"UNKNOWN ({error})", "reason": None, "nodes": None, "restarts": None}
    if out.returncode != 0 or "JobState=" not in out.stdout:
        return {"state": "UNKNOWN", "reason": "no longer known to slurmctld", "nodes": None, "restarts": None}
    fields = dict(item.split("=", 1) for item in out.stdout.split() if "=" in item)
    return {"state": fields.get("JobState"), "reason": fields.get("Reason"), "nodes": fields.get("NodeList"),
            "restarts": fields.get("Restarts")}


def run_status(run_dir: Path) -> Dict[str, Any]:
    run = RunDir(run_dir)
    ids_file = run_dir / JOB_IDS
    job_ids = ids_file.read_text().split() if ids_file.is_file() else []
    status: Dict[str, Any] = {"run_dir": str(run_dir), "job_ids": job_ids, "done": run.is_done()}
    status["job"] = slurm_state(job_ids[-1]) if job_ids else None
    records, _ = read_metrics(run_dir) if run.metrics.exists() else ([], None)
    last = records[-1] if records else None
    status["last_step"] = last["step"] if last else None
    status["last_step_time"] = (datetime.datetime.fromtimestamp(last["time"], datetime.timezone.utc).isoformat(timespec="seconds")
                                if last and "time" in last else None)
    status["last_checkpoint"] = run.latest_step()
    try:
        status["excluded_nodes"], status["excluded_nodes_problem"] = read_excluded(run), None
    except ValueError as error:
        status["excluded_nodes"], status["excluded_nodes_problem"] = [], str(error)
    events, _ = read_events(run_dir) if run.events.exists() else ([], None)
    status["restarts"] = sum(1 for e in events if e["kind"] == "restart")
    launcher = [e for e in events if e.get("source") == "launcher"]
    status["last_launcher_event"] = launcher[-1]["message"] if launcher else None
    return status


def format_status(status: Dict[str, Any]) -> str:
    job = status["job"] or {}
    lines = [f"run:             {status['run_dir']}",
             f"job:             {status['job_ids'][-1] if status['job_ids'] else '-'} "
             f"{job.get('state') or ''}{' (' + job['reason'] + ')' if job.get('reason') not in (None, 'None') else ''}",
             f"last step:       {status['last_step'] if status['last_step'] is not None else '-'}"
             f"{' at ' + status['last_step_time'] if status['last_step_time'] else ''}",
             f"last checkpoint: {status['last_checkpoint'] if status['last_checkpoint'] is not None else '-'}",
             f"restarts:        {status['restarts']}",
             f"done:            {'yes' if status['done'] else 'no'}"]
    for i, entry in enumerate(status["excluded_nodes"]):
        where = f" (job {entry['job_id']}, restart {entry.get('restart')})" if entry.get("job_id") else ""
        lines.append(f"{'excluded nodes:' if i == 0 else '':<17}{entry['node']}: {entry.get('reason')}{where}")
    if status["excluded_nodes_problem"]:
        lines.append(f"excluded nodes:  {status['excluded_nodes_problem']}")
    if status["last_launcher_event"]:
        lines.append(f"launcher:        {status['last_launcher_event']}")
    return "\n".join(lines)
