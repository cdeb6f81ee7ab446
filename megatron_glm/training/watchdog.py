"""Hang watchdog: a rank that stops making progress ends itself, says which rank is to blame, and
leaves its Python stacks behind.

Why: at 768 ranks a single frozen process (a GPU that stopped answering, a node swapping to death,
a stuck file system call) leaves every other rank waiting in a collective forever; NCCL's own
timeout only aborts the waiters and names nobody. The watchdog turns "the job makes no progress"
into exit 76 (ExitCode.HANG) within a bounded time, and into a record the Slurm job hooks can act
on: the stuck ranks and their hosts, so that the next allocation leaves the bad node out.

How a stuck rank is told from a waiting one: every rank's watchdog thread writes
RUN_DIR/heartbeats/rank<R>.json every few seconds, whatever the main thread does. A rank waiting
in a collective keeps a fresh "alive" time; a frozen (SIGSTOP, D state) or dead process does not.
When the ranks that are still alive run out of patience they read everyone's heartbeat: ranks with
a stale alive time are the stuck ones; if none is stale (all alive, e.g. a software deadlock or a
hung GPU kernel), the ranks with the lowest progress step are reported. Every timed-out rank dumps
its stacks to RUN_DIR/hangs/<job_tag>.rank<R>.txt and exits 76; the first one to time out appends
the `error` event (reason "hang"), made exactly one by an exclusive-create claim file
(hangs/<job_tag>.reported). Under srun the timed-out ranks then kill the whole job step (scancel),
so the job ends in seconds instead of waiting srun's --wait and Slurm's KillWait for the frozen
rank. Not "the lowest live rank": the first rank to exit breaks its peers'
collectives (gloo at once, NCCL with async error handling soon after), so the others may end with
an error before their own watchdog fires.

Assumes clocks agree across nodes to well under the heartbeat interval (NTP) and a shared file
system on which a renamed file is visible to other nodes within that interval (Lustre, GPFS).
"""

from __future__ import annotations

import collections
import faulthandler
import json
import logging
import os
import statistics
import subprocess
import threading
import time
from typing import Dict, List, Mapping, Optional, Tuple

from megatron_glm.metrics.schema import EventsWriter
from megatron_glm.rundir import ExitCode, RunDir

log = logging.getLogger("glm-train")

STALE_BEATS = 3
"""A heartbeat older than this many intervals means the process is frozen or dead."""
STEP_TIME_WINDOW = 1000
"""The median step time is taken over this many recent steps (batch ramp-up changes it)."""


def heartbeat_interval(timeout_s: float, first_step_timeout_s: float, min_timeout_s: float) -> float:
    """Seconds between heartbeats (and timeout checks): a tenth of the shortest timeout that can
    apply, at most 30 s, at least 1 s."""
    shortest = min(timeout_s if timeout_s > 0 else min_timeout_s, first_step_timeout_s)
    return max(1.0, min(shortest / 10.0, 30.0))


def read_heartbeats(run_dir, world_size: int) -> Dict[int, Optional[dict]]:
    """rank -> its heartbeat record, None where the file is missing or unreadable."""
    run = RunDir(run_dir)
    beats: Dict[int, Optional[dict]] = {}
    for rank in range(world_size):
        try:
            beats[rank] = json.loads(run.heartbeat(rank).read_text())
        except (OSError, ValueError):
            beats[rank] = None
    return beats


def find_stuck(beats: Mapping[int, Optional[dict]], tag: str, since: float, now: float,
               default_interval: float) -> Tuple[List[int], str]:
    """(stuck ranks, why) from every rank's heartbeat at wall time `now`.

    A rank is stale when it has no heartbeat of this run (job `tag`, written after `since`, when
    the watchdog asking started) or its alive time is older than STALE_BEATS intervals; ranks
    that already ended ("hang": timed out as well, "stopped": finished) are not. Stale ranks are
    the stuck ones ("frozen or dead"); without any, the live ranks with the lowest progress step
    ("behind"; all of them when they are level)."""
    stale = [rank for rank, beat in sorted(beats.items()) if _is_stale(beat, tag, since, now, default_interval)]
    if stale:
        return stale, "frozen or dead"
    levels = {rank: -1 if beat.get("step") is None else beat["step"]  # -1: before the first step
              for rank, beat in beats.items() if beat.get("state") == "running"}
    lowest = min(levels.values(), default=None)
    return sorted(rank for rank, level in levels.items() if level == lowest), "behind"


def _is_stale(beat: Optional[dict], tag: str, since: float, now: float, default_interval: float) -> bool:
    """See find_stuck."""
    if not beat or beat.get("job") != tag or beat.get("alive_time", 0.0) < since:
        return True
    if beat.get("state") in ("hang", "stopped"):
        return False
    interval = beat.get("interval_s") or default_interval
    return now - beat.get("alive_time", 0.0) > STALE_BEATS * interval


class HangWatchdog:
    """One per rank: start() after the process groups exist, progress(step) after every optimizer
    step and before/after each checkpoint save and validation, stop() when training ends.

    Timeout: `timeout_s` if > 0, else max(10 x median step time so far, `min_timeout_s`); until the
    first progress() of this process, `first_step_timeout_s` (checkpoint loading, warm-up)."""

    def __init__(self, run_dir, rank: int, world_size: int, host: str, job_tag: str, timeout_s: float = 0.0,
                 first_step_timeout_s: float = 1800.0, min_timeout_s: float = 900.0):
        if timeout_s < 0 or first_step_timeout_s <= 0 or min_timeout_s <= 0:
            raise ValueError(f"hang watchdog: timeout_s={timeout_s} must be >= 0 (0 = auto), first_step_timeout_s="
                             f"{first_step_timeout_s} and min_timeout_s={min_timeout_s} must be > 0")
        self.run = RunDir(run_dir)
        self.rank, self.world_size, self.host, self.job_tag = rank, world_size, host, job_tag
        self.timeout_s, self.first_step_timeout_s, self.min_timeout_s = timeout_s, first_step_timeout_s, min_timeout_s
        self.interval_s = heartbeat_interval(timeout_s, first_step_timeout_s, min_timeout_s)
        self.heartbeat_path = self.run.heartbeat(rank)
        self.stack_path = self.run.hang_stacks(job_tag, rank)
        self.claim_path = self.run.hangs / f"{job_tag}.reported"
        self._step_times: collections.deque = collections.deque(maxlen=STEP_TIME_WINDOW)
        # (step or None, monotonic time, wall time) of the last progress (or of start()): replaced
        # as a whole, so the thread never sees a half-updated state.
        self._progress: Tuple[Optional[int], float, float] = (None, time.monotonic(), time.time())
        self._started = 0.0
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # --- called by the training loop --------------------------------------------------------
    def start(self) -> "HangWatchdog":
        self.run.heartbeats.mkdir(parents=True, exist_ok=True)
        self._started = time.time()
        self._progress = (None, time.monotonic(), self._started)
        self._beat("running")
        try:  # a claim left by an earlier run with the same tag (local runs are all "local.0")
            if self.claim_path.stat().st_mtime < self._started:
                self.claim_path.unlink()
        except FileNotFoundError:
            pass
        self._thread = threading.Thread(target=self._watch, name="glm-hang-watchdog", daemon=True)
        self._thread.start()
        return self

    def progress(self, step: int) -> None:
        """The job moved: after an optimizer step (a new step number also times it), or before and
        after a checkpoint save or validation (same step: only resets the clock)."""
        last_step, last_time, _ = self._progress
        now = time.monotonic()
        if last_step is not None and step > last_step:
            self._step_times.append((now - last_time) / (step - last_step))
        self._progress = (step, now, time.time())

    def stop(self) -> None:
        """Stop watching (training finished or is leaving by its own exit code)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, 2 * self.interval_s))
            self._thread = None
        self._beat("stopped")

    # --- the thread -------------------------------------------------------------------------
    def timeout(self) -> float:
        """Seconds without progress after which this rank is declared hung."""
        if self._progress[0] is None:
            return self.first_step_timeout_s
        if self.timeout_s > 0:
            return self.timeout_s
        median = statistics.median(self._step_times) if self._step_times else 0.0
        return max(10.0 * median, self.min_timeout_s)

    def _watch(self) -> None:
        while not self._stopping.wait(self.interval_s):
            self._beat("running")
            idle = time.monotonic() - self._progress[1]
            if idle > self.timeout():
                self._hang(idle)
                return

    def _record(self, state: str) -> dict:
        step, _, progress_time = self._progress
        return {"rank": self.rank, "host": self.host, "pid": os.getpid(), "job": self.job_tag, "state": state,
                "step": step, "progress_time": progress_time, "alive_time": time.time(), "interval_s": self.interval_s}

    def _beat(self, state: str) -> None:
        tmp = self.heartbeat_path.with_name(f".{self.heartbeat_path.name}.tmp")
        try:  # no fsync: readers are other live processes, not a post-crash recovery
            tmp.write_text(json.dumps(self._record(state)))
            os.replace(tmp, self.heartbeat_path)
        except OSError as error:  # a full or failing file system must not stop the timeout check
            log.warning("hang watchdog: cannot write %s: %s", self.heartbeat_path, error)

    def _hang(self, idle: float) -> None:
        step, timeout = self._progress[0], self.timeout()
        self._dump_stacks(idle, timeout)
        beats = read_heartbeats(self.run.path, self.world_size)
        beats[self.rank] = self._record("running")  # this rank is alive, whatever its file says
        now = time.time()
        stuck, why = find_stuck(beats, self.job_tag, self._started, now, self.interval_s)
        message = self._message(step, idle, timeout, stuck, why, beats, now)
        log.error("%s", message)
        if self._claim():
            hosts = sorted({beats[rank]["host"] for rank in stuck if self._of_this_run(beats[rank])})
            try:
                with EventsWriter(self.run.path) as events:
                    events.write({"step": step if step is not None else 0, "kind": "error", "message": message,
                                  "reason": "hang", "stuck_ranks": stuck, "hosts": hosts, "timeout_s": timeout,
                                  "job_tag": self.job_tag, "source": "watchdog"})
            except (OSError, ValueError) as error:
                log.error("hang watchdog: could not write the hang event: %s", error)
        self._beat("hang")
        self._end_job_step()
        self._terminate(int(ExitCode.HANG))

    def _end_job_step(self) -> None:
        """Under srun: kill every task of this job step (the frozen rank too). Otherwise srun would
        wait `--wait` seconds (up to 10 min at scale) for the frozen rank, plus Slurm's KillWait,
        before the job hooks can requeue without its node. Every timed-out rank does it, after one
        heartbeat interval in which its peers dump their stacks; none exits before (an exit would
        break the others' collectives and end them before their own scancel), the first scancel
        ends them all."""
        job, step = os.environ.get("SLURM_JOB_ID", ""), os.environ.get("SLURM_STEP_ID", "")
        if not (job.isdigit() and step.isdigit()):
            return
        time.sleep(self.interval_s)
        log.error("hang watchdog: killing job step %s.%s (scancel --signal=KILL)", job, step)
        try:
            subprocess.run(["scancel", "--signal=KILL", f"{job}.{step}"], capture_output=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as error:
            log.error("hang watchdog: scancel failed (%s); srun ends the step after its --wait", error)

    def _claim(self) -> bool:
        """True for the first rank of this run to create the claim file: it writes the event."""
        try:
            os.close(os.open(self.claim_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return True
        except FileExistsError:
            return False
        except OSError as error:
            log.error("hang watchdog: cannot create %s (%s): writing the event anyway", self.claim_path, error)
            return True

    def _dump_stacks(self, idle: float, timeout: float) -> None:
        try:
            self.run.hangs.mkdir(parents=True, exist_ok=True)
            with open(self.stack_path, "w") as out:
                out.write(f"rank {self.rank} of {self.world_size} on {self.host}, pid {os.getpid()}, job {self.job_tag}: "
                          f"no progress for {idle:.0f} s (timeout {timeout:.0f} s) after step {self._progress[0]}\n\n")
                out.flush()
                faulthandler.dump_traceback(file=out, all_threads=True)
        except OSError as error:
            log.error("hang watchdog: could not write %s: %s", self.stack_path, error)

    def _of_this_run(self, beat: Optional[dict]) -> bool:
        return bool(beat) and beat.get("job") == self.job_tag and beat.get("alive_time", 0.0) >= self._started

    def _message(self, step, idle, timeout, stuck, why, beats, now) -> str:
        named = []
        for rank in stuck:
            beat = beats[rank]
            if not self._of_this_run(beat):
                named.append(f"rank {rank} (no heartbeat since this run started)")
            elif why == "frozen or dead":
                named.append(f"rank {rank} on {beat.get('host')} (pid {beat.get('pid')}, last heartbeat "
                             f"{now - beat.get('alive_time', now):.0f} s ago)")
            else:
                named.append(f"rank {rank} on {beat.get('host')} (step {beat.get('step')})")
        return (f"hang: no progress for {idle:.0f} s after step {step} (timeout {timeout:.0f} s); stuck ({why}): "
                f"{', '.join(named) or 'none found'}; stacks in {self.run.hangs}/{self.job_tag}.rank*.txt")

    def _terminate(self, code: int) -> None:
        """Leave now: the main thread is blocked and cannot be unwound (os._exit, no cleanup)."""
        os._exit(code)
