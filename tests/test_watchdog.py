"""The hang watchdog: its timeout, who it blames, and what it leaves behind -- in this process and
with real processes that wait on each other, one of them frozen (SIGSTOP) or killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types

import pytest

from megatron_glm.metrics.schema import read_events
from megatron_glm.rundir import ExitCode
from megatron_glm.runtime.job import host_name, job_tag
from megatron_glm.training import watchdog as wd
from megatron_glm.training.watchdog import HangWatchdog, find_stuck, heartbeat_interval


class FakeClock(types.SimpleNamespace):
    """Stands in for the `time` module inside megatron_glm.training.watchdog."""

    def __init__(self):
        super().__init__(now=1000.0)

    def monotonic(self):
        return self.now

    def time(self):
        return self.now


def test_timeout_first_step_then_fixed_or_ten_median_steps(monkeypatch, tmp_path):
    clock = FakeClock()
    monkeypatch.setattr(wd, "time", clock)
    auto = HangWatchdog(tmp_path, 0, 1, "h", "t.0", first_step_timeout_s=1800, min_timeout_s=900)
    assert auto.timeout() == 1800  # nothing has happened yet: loading, warm-up
    auto.progress(10)
    assert auto.timeout() == 900  # no step timed yet
    for step, seconds in ((11, 100.0), (12, 120.0), (13, 5000.0), (15, 240.0)):  # 15: two steps in 240 s
        clock.now += seconds
        auto.progress(step)
    assert auto.timeout() == 10 * 120.0  # median of 100, 120, 5000, 120: one slow step does not count
    clock.now += 9999
    auto.progress(15)  # around a checkpoint save: resets the clock, is no step time
    assert auto.timeout() == 1200.0
    fixed = HangWatchdog(tmp_path, 0, 1, "h", "t.0", timeout_s=20, first_step_timeout_s=60)
    assert fixed.timeout() == 60
    fixed.progress(1)
    assert fixed.timeout() == 20


def test_heartbeat_interval_and_arguments(tmp_path):
    assert heartbeat_interval(0, 1800, 900) == 30  # auto: at most 30 s
    assert heartbeat_interval(20, 1800, 900) == 2
    assert heartbeat_interval(3, 1800, 900) == 1  # at least 1 s
    assert heartbeat_interval(600, 100, 900) == 10  # the first step's timeout is shorter
    with pytest.raises(ValueError, match="timeout_s=-1 must be >= 0"):
        HangWatchdog(tmp_path, 0, 1, "h", "t.0", timeout_s=-1)
    assert job_tag({"SLURM_JOB_ID": "77", "SLURM_RESTART_COUNT": "2"}) == "77.2"
    assert job_tag({"SLURM_JOB_ID": "77"}) == "77.0"
    assert job_tag({}) == "local.0"
    assert host_name({"SLURMD_NODENAME": "dgx017"}) == "dgx017"


def _beat(rank, age, step=5, state="running", job="7.0", host=None, interval=2.0, now=1000.0):
    return {"rank": rank, "host": host or f"node{rank}", "pid": 100 + rank, "job": job, "state": state,
            "step": step, "alive_time": now - age, "interval_s": interval}


def test_find_stuck_blames_stale_ranks_else_the_ones_behind():
    since, now = 900.0, 1000.0
    fresh = {r: _beat(r, 1) for r in range(4)}
    # Frozen or dead: alive time older than 3 intervals (6 s), whatever the steps say.
    assert find_stuck({**fresh, 2: _beat(2, 7)}, "7.0", since, now, 2.0) == ([2], "frozen or dead")
    assert find_stuck({**fresh, 2: _beat(2, 5)}, "7.0", since, now, 2.0) == ([0, 1, 2, 3], "behind")
    # No heartbeat of this run: missing, another allocation's, or older than this run's start.
    assert find_stuck({**fresh, 3: None}, "7.0", since, now, 2.0)[0] == [3]
    assert find_stuck({**fresh, 3: _beat(3, 1, job="6.0")}, "7.0", since, now, 2.0)[0] == [3]
    assert find_stuck({**fresh, 3: _beat(3, 200, state="stopped")}, "7.0", since, now, 2.0)[0] == [3]
    # Ranks that already timed out (or finished) in this run are not stuck, however old.
    assert find_stuck({**fresh, 0: _beat(0, 50, state="hang"), 1: _beat(1, 9)}, "7.0", since, now, 2.0)[0] == [1]
    # All alive: the lowest progress step (None: before the first step) is behind.
    assert find_stuck({**fresh, 1: _beat(1, 1, step=4)}, "7.0", since, now, 2.0) == ([1], "behind")
    assert find_stuck({**fresh, 3: _beat(3, 1, step=None)}, "7.0", since, now, 2.0) == ([3], "behind")


def test_hang_in_process_dumps_stacks_names_the_frozen_peer_and_exits_76(tmp_path):
    """Rank 0 of 2 in this process; rank 1 a heartbeat file written once, at the start."""
    run_dir = tmp_path
    exits = []
    dog = HangWatchdog(run_dir, 0, 2, "nodeA", "9.1", timeout_s=2, first_step_timeout_s=600)
    dog._terminate = exits.append  # instead of os._exit
    (run_dir / "heartbeats").mkdir()
    dog.start()
    (run_dir / "heartbeats" / "rank1.json").write_text(json.dumps(
        {**_beat(1, 0, step=3, job="9.1", host="nodeB", interval=0.2, now=time.time()), "pid": 4242}))
    dog.progress(3)
    deadline = time.monotonic() + 60
    while not exits and time.monotonic() < deadline:  # the "stuck" main thread of this rank
        time.sleep(0.05)
    assert exits == [int(ExitCode.HANG)]
    events, _ = read_events(run_dir, validate=True)
    assert len(events) == 1
    event = events[0]
    assert event["kind"] == "error" and event["reason"] == "hang" and event["step"] == 3
    assert event["stuck_ranks"] == [1] and event["hosts"] == ["nodeB"] and event["timeout_s"] == 2
    assert "rank 1 on nodeB (pid 4242, last heartbeat" in event["message"] and "frozen or dead" in event["message"]
    stacks = (run_dir / "hangs" / "9.1.rank0.txt").read_text()
    assert "no progress for" in stacks and "most recent call first" in stacks
    assert "test_hang_in_process_dumps_stacks" in stacks  # the main thread's frames are in it
    beat = json.loads((run_dir / "heartbeats" / "rank0.json").read_text())
    assert beat["state"] == "hang" and beat["step"] == 3 and beat["host"] == "nodeA" and beat["pid"] == os.getpid()


def test_one_event_however_many_ranks_time_out_and_a_rerun_reports_again(tmp_path):
    """Ranks 0 and 1 of 3 in this process, rank 2 never started: both time out, one event."""

    def hang():
        exits = []
        dogs = [HangWatchdog(tmp_path, rank, 3, f"node{rank}", "local.0", timeout_s=2, first_step_timeout_s=600)
                for rank in (0, 1)]
        for dog in dogs:
            dog._terminate = exits.append
            dog.start().progress(1)
        deadline = time.monotonic() + 60
        while len(exits) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert exits == [int(ExitCode.HANG)] * 2

    hang()
    events, _ = read_events(tmp_path, validate=True)
    assert len(events) == 1 and events[0]["stuck_ranks"] == [2] and events[0]["hosts"] == []
    assert "rank 2 (no heartbeat since this run started)" in events[0]["message"]
    hang()  # a later run with the same tag ("local.0"): its hang is reported too
    assert len(read_events(tmp_path)[0]) == 2


def test_progress_keeps_it_quiet_and_stop_ends_the_thread(tmp_path):
    exits = []
    dog = HangWatchdog(tmp_path, 0, 1, "nodeA", "local.0", timeout_s=4, first_step_timeout_s=4)
    dog._terminate = exits.append
    dog.start()
    for step in range(1, 60):
        dog.progress(step)
        time.sleep(0.1)
    dog.stop()
    assert exits == [] and not (tmp_path / "hangs").exists()
    assert not any(t.name == "glm-hang-watchdog" for t in threading.enumerate())
    beat = json.loads((tmp_path / "heartbeats" / "rank0.json").read_text())
    assert beat["state"] == "stopped" and beat["step"] == 59


# A rank of a toy job: each step waits until every rank has reached it (a collective), then
# reports progress. One frozen or dead rank blocks the others, as in a real job.
RANK_PROGRAM = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from megatron_glm.training.watchdog import HangWatchdog

    run_dir, rank, world = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    dog = HangWatchdog(run_dir, rank, world, f"host{rank}", "5.0", timeout_s=6, first_step_timeout_s=60).start()

    def wait_for_peers(step):
        (run_dir / f"step{rank}").write_text(str(step))
        while True:
            try:
                if all(int((run_dir / f"step{r}").read_text() or -1) >= step for r in range(world)):
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.02)

    step = 0
    while True:
        step += 1
        wait_for_peers(step)
        dog.progress(step)
        time.sleep(0.05)
""")


@pytest.mark.parametrize("how", [signal.SIGSTOP, signal.SIGKILL], ids=["frozen", "killed"])
def test_three_processes_one_frozen_or_killed_the_others_exit_76_and_name_it(tmp_path, how):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    procs = []
    try:
        for rank in range(3):
            log = open(tmp_path / f"rank{rank}.log", "w")
            procs.append(subprocess.Popen([sys.executable, "-c", RANK_PROGRAM, str(run_dir), str(rank), "3"],
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
            log.close()
        beat1 = run_dir / "heartbeats" / "rank1.json"

        def progressed(rank, step):
            try:
                return (json.loads((run_dir / "heartbeats" / f"rank{rank}.json").read_text())["step"] or 0) >= step
            except (OSError, ValueError):
                return False

        deadline = time.monotonic() + 60
        while not all(progressed(r, 5) for r in range(3)):  # heartbeats are 1 s apart
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), _logs(tmp_path)
            time.sleep(0.1)
        assert json.loads(beat1.read_text())["pid"] == procs[1].pid
        os.kill(procs[1].pid, how)
        codes = [_wait(procs[r], 90) for r in (0, 2)]
        assert codes == [int(ExitCode.HANG)] * 2, _logs(tmp_path)
        if how == signal.SIGSTOP:
            assert procs[1].poll() is None  # frozen, not ended: that is for the job's launcher
        events, _ = read_events(run_dir, validate=True)
        assert len(events) == 1, events  # one rank reports
        event = events[0]
        assert event["reason"] == "hang" and event["stuck_ranks"] == [1] and event["hosts"] == ["host1"]
        assert f"rank 1 on host1 (pid {procs[1].pid}" in event["message"]
        assert event["step"] >= 5 and event["timeout_s"] == 6
        for rank in (0, 2):
            stacks = (run_dir / "hangs" / f"5.0.rank{rank}.txt").read_text()
            assert f"rank {rank} of 3 on host{rank}" in stacks and "wait_for_peers" in stacks
            assert json.loads((run_dir / "heartbeats" / f"rank{rank}.json").read_text())["state"] == "hang"
        assert not (run_dir / "hangs" / "5.0.rank1.txt").exists()
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait(proc, timeout):
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def _logs(tmp_path):
    return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(tmp_path.glob("rank*.log")))
