"""Which allocation and which node this process runs in, as the run directory's files name them
(heartbeats, stack dumps, pre-flight results; the Slurm job hooks read them back by these names)."""

from __future__ import annotations

import os
import socket
from typing import Mapping, Optional


def job_tag(env: Optional[Mapping[str, str]] = None) -> str:
    """"<SLURM_JOB_ID>.<SLURM_RESTART_COUNT>" under Slurm (one tag per allocation: a requeued job
    keeps its id), else "local.0"."""
    env = os.environ if env is None else env
    if env.get("SLURM_JOB_ID"):
        return f"{env['SLURM_JOB_ID']}.{env.get('SLURM_RESTART_COUNT') or 0}"
    return "local.0"


def host_name(env: Optional[Mapping[str, str]] = None) -> str:
    """The node's name as Slurm knows it (what --exclude takes), else the host name."""
    env = os.environ if env is None else env
    return env.get("SLURMD_NODENAME") or socket.gethostname()
