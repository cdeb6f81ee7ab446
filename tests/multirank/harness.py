"""Launch N gloo ranks of a scenario script as separate processes, with a hard timeout.

Each rank gets torchrun-style variables (RANK, WORLD_SIZE, MASTER_ADDR/PORT on a free port) and one
OpenMP thread. Processes run in their own session so that a timeout or a failing rank takes the
whole group down; nothing outlives the test.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Tuple

SCENARIOS = Path(__file__).with_name("scenarios.py")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _kill(procs: List[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for proc in procs:
        proc.wait()


def spawn_ranks(scenario: str, nproc: int, workdir: Path, *args: str,
                script: Path = SCENARIOS) -> Tuple[List[subprocess.Popen], list]:
    """Start `script scenario workdir args...` (default: scenarios.py) on nproc ranks (each in its
    own session, log in workdir/<scenario>.rank<r>.log). The caller must `kill_ranks` them in a
    finally."""
    port = free_port()
    procs, logs = [], []
    for rank in range(nproc):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                   PYTHONWARNINGS="ignore")
        log = open(workdir / f"{scenario}.rank{rank}.log", "w")
        logs.append(log)
        procs.append(subprocess.Popen([sys.executable, str(script), scenario, str(workdir), *args],
                                      env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    return procs, logs


def kill_ranks(procs: List[subprocess.Popen], logs: list) -> None:
    """SIGKILL every rank still alive (kill -9), reap them, close their logs."""
    _kill(procs)
    for log in logs:
        log.close()


def run_ranks(scenario: str, nproc: int, workdir: Path, *args: str, timeout_s: float = 300.0,
              script: Path = SCENARIOS) -> None:
    """Run `script scenario workdir args...` on nproc ranks; raise with the logs on failure."""
    procs, logs = spawn_ranks(scenario, nproc, workdir, *args, script=script)
    deadline = time.monotonic() + timeout_s
    failed = None
    try:
        while any(p.poll() is None for p in procs):
            if time.monotonic() > deadline:
                failed = f"timed out after {timeout_s:.0f}s"
                break
            if any(p.poll() not in (None, 0) for p in procs):
                failed = "a rank failed"
                break
            time.sleep(0.2)
    finally:
        kill_ranks(procs, logs)
    codes = [p.returncode for p in procs]
    if failed or any(codes):
        tails = []
        for rank in range(nproc):
            text = (workdir / f"{scenario}.rank{rank}.log").read_text(errors="replace")
            tails.append(f"--- rank {rank} (exit {codes[rank]}) ---\n{text[-3000:]}")
        raise AssertionError(f"scenario {scenario} on {nproc} ranks: {failed or 'non-zero exit'}\n" + "\n".join(tails))
