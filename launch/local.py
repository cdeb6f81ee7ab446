"""`glm-launch run`: the trainer on this machine, N ranks, without Slurm or torchrun.

Why not torchrun: torchrun's elastic agent turns a rank's exit code into its own (1 for any
failure), so the trainer's "please requeue" (75) and "bad configuration" (2) would be lost, and it
answers SIGTERM by killing the ranks instead of letting them save. This launcher:

- validates the config for the requested world size before starting anything (exit 2, nothing
  created);
- gives every rank torchrun's variables (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE,
  MASTER_ADDR, MASTER_PORT on a free port) and OMP_NUM_THREADS = cores / ranks (at least 1) unless
  the caller set it;
- forwards SIGTERM and SIGUSR1 to every rank (the trainer saves and exits 75); Ctrl-C is forwarded
  as SIGTERM, a second Ctrl-C kills;
- kills all ranks when one fails (a crashed rank would leave the others blocked in a collective);
  ranks that stop on purpose (75, 2, 0) get a grace period to finish together;
- exits with the job's code: 0 done, 75 please requeue, 2 bad configuration, else the first
  failing rank's code (128 + signal number for a rank killed by a signal).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from megatron_glm.config.loader import ConfigError, load_run_config
from megatron_glm.config.validate import config_problems
from megatron_glm.rundir import ORDERLY_EXITS, ExitCode

log = logging.getLogger("glm-launch")


@dataclass
class LocalRunConfig:
    """What `glm-launch run` starts: N copies of `glm-train --config --run-dir [overrides]`."""

    config: str
    """Run preset name or run YAML."""
    run_dir: str
    nproc: int = 1
    overrides: List[str] = field(default_factory=list)
    master_addr: str = "127.0.0.1"
    master_port: Optional[int] = None
    """None: a free port chosen on this machine."""
    grace_s: float = 120.0
    """How long ranks may take to follow a rank that stopped on purpose (75/2/0) or a forwarded
    signal (a checkpoint save) before they are killed."""
    crash_grace_s: float = 5.0
    """How long ranks may take to follow a rank that crashed (they usually cannot: a collective
    with a dead peer blocks until its timeout)."""
    verbose: bool = False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def omp_threads(nproc: int, env: Optional[Dict[str, str]] = None) -> str:
    """The caller's OMP_NUM_THREADS if set, else this machine's cores shared out between the ranks."""
    env = os.environ if env is None else env
    if env.get("OMP_NUM_THREADS"):
        return env["OMP_NUM_THREADS"]
    return str(max(1, usable_cores() // max(1, nproc)))


def rank_environment(cfg: LocalRunConfig, rank: int, port: int, base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """torchrun-style variables for one rank on this single machine. Slurm's own SLURM_* rank
    variables are dropped so that a `glm-launch run` inside an allocation is not mistaken for srun."""
    base = dict(os.environ if base is None else base)
    for key in ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS"):
        base.pop(key, None)
    base.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(cfg.nproc),
                LOCAL_WORLD_SIZE=str(cfg.nproc), GROUP_RANK="0", MASTER_ADDR=cfg.master_addr,
                MASTER_PORT=str(port), OMP_NUM_THREADS=omp_threads(cfg.nproc, base))
    return base


def check_config(cfg: LocalRunConfig) -> List[str]:
    """The trainer's own validation for this world size, run once here before any rank starts."""
    if cfg.nproc < 1:
        return [f"--nproc {cfg.nproc}: need at least 1 process"]
    try:
        run = load_run_config(cfg.config, cfg.overrides)
    except ConfigError as error:
        return error.problems
    from megatron_glm.training.downstream import eval_task_file_problems

    return config_problems(run, world_size=cfg.nproc, training=True) + eval_task_file_problems(run)


def exit_code_of(returncode: int) -> int:
    """subprocess's -N for "killed by signal N" as a shell would report it (128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


def job_exit_code(first_failure: Optional[int], codes: Sequence[Optional[int]]) -> int:
    """One code for the job. A crash (the first non-orderly exit seen, else any rank's) wins; then
    2, then 75; 0 only if every rank finished with 0. (Ranks may all end between two polls, so
    first_failure can be None while a rank failed.)"""
    if first_failure is not None and first_failure not in ORDERLY_EXITS:
        return exit_code_of(first_failure)
    finished = [c for c in codes if c is not None]
    crashes = [c for c in finished if c not in ORDERLY_EXITS]
    if first_failure is None and crashes:  # (a straggler killed after an orderly stop is no crash)
        return exit_code_of(crashes[0])
    for code in (ExitCode.BAD_INPUT, ExitCode.REQUEUE):
        if code in finished:
            return code
    if len(finished) == len(codes) and all(c == 0 for c in finished):
        return ExitCode.DONE
    return exit_code_of(first_failure) if first_failure is not None else 1


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the launcher dies, even by SIGKILL (Linux prctl)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class RankGroup:
    """The rank processes, each in its own session so a kill reaches its children too."""

    def __init__(self, cfg: LocalRunConfig, command: List[str], port: int):
        self.cfg = cfg
        self.procs: List[subprocess.Popen] = []
        for rank in range(cfg.nproc):
            self.procs.append(subprocess.Popen(command, env=rank_environment(cfg, rank, port),
                                               start_new_session=True, preexec_fn=_die_with_parent))

    def codes(self) -> List[Optional[int]]:
        return [p.poll() for p in self.procs]

    def send(self, number: int) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, number)
                except ProcessLookupError:
                    pass

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for proc in self.procs:
            proc.wait()


def trainer_command(cfg: LocalRunConfig) -> List[str]:
    command = [sys.executable, "-m", "megatron_glm.cli.train", "--config", cfg.config, "--run-dir", cfg.run_dir]
    if cfg.verbose:
        command.append("--verbose")
    return command + list(cfg.overrides)


def run_local(cfg: LocalRunConfig) -> int:
    """Start the ranks, forward signals, supervise; returns the job's exit code."""
    problems = check_config(cfg)
    if problems:
        print("glm-launch run: invalid configuration:\n" + "\n".join(f"- {p}" for p in problems), file=sys.stderr)
        return ExitCode.BAD_INPUT
    port = cfg.master_port or free_port(cfg.master_addr)
    log.info("%d rank(s) on %s:%d, OMP_NUM_THREADS=%s, run dir %s", cfg.nproc, cfg.master_addr, port,
             omp_threads(cfg.nproc), cfg.run_dir)
    state = {"deadline": None, "interrupts": 0}
    group: Optional[RankGroup] = None

    def forward(number, frame):
        if number == signal.SIGINT:
            state["interrupts"] += 1
            if state["interrupts"] > 1 and group is not None:
                group.kill()
                return
            number = signal.SIGTERM
        log.info("forwarding %s to the ranks", signal.Signals(number).name)
        if group is not None:
            group.send(number)
        if state["deadline"] is None:
            state["deadline"] = time.monotonic() + cfg.grace_s

    previous = {n: signal.signal(n, forward) for n in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    first_failure: Optional[int] = None
    try:
        group = RankGroup(cfg, trainer_command(cfg), port)
        while True:
            codes = group.codes()
            if all(c is not None for c in codes):
                break
            for code in codes:
                if code not in (None, 0) and first_failure is None:
                    first_failure = code
                    grace = cfg.grace_s if code in ORDERLY_EXITS else cfg.crash_grace_s
                    deadline = time.monotonic() + grace
                    state["deadline"] = min(state["deadline"] or deadline, deadline)
                    if code not in ORDERLY_EXITS:
                        log.error("a rank failed with exit code %d; stopping the others", exit_code_of(code))
            if state["deadline"] is not None and time.monotonic() > state["deadline"]:
                log.error("ranks still running after the grace period; killing them")
                group.kill()
                break
            time.sleep(0.1)
        return job_exit_code(first_failure, group.codes())
    finally:
        if group is not None:
            group.kill()
        for number, handler in previous.items():
            signal.signal(number, handler)
