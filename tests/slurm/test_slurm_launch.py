"""glm-launch on a real Slurm (3 simulated nodes, jobs of 2 nodes x 2 tasks): a tiny GLM at TP2 x PP2
is submitted, stopped by its time limit (USR1 before it: save, requeue itself), requeued from
outside (`scontrol requeue`: resume from the latest checkpoint), and finishes; a rank frozen with
SIGSTOP is found by the hang watchdog, its node excluded and the job finished on the other two;
prep runs as an array job plus a dependent merge."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from megatron_glm.metrics.schema import read_events, read_metrics
from megatron_glm.rundir import RunDir

pytestmark = pytest.mark.slurm

BIN = Path(sys.executable).parent
RUN = {"model": {"preset": "glm-tiny", "seq_length": 32},
       "parallel": {"tensor": 2, "pipeline": 2},
       "data": {"synthetic": True},
       # Long enough that the time-limit signal always comes first, however fast this machine is;
       # the test shortens the run once it has been requeued (see below).
       "train": {"steps": 100000, "global_batch_size": 4, "save_interval": 2, "eval_interval": 0,
                 "decay_samples": 4000, "peak_lr": 1e-3, "min_lr": 1e-4}}


@pytest.fixture(scope="module")
def on_demo_data(demo_data_section, demo_tokenizer):
    """run config dict -> the same on the real data stream (the bundled corpus through glm-prep,
    the blended [MASK]/[gMASK]/MIP samples), with the default dataset cache: the run directory,
    which every simulated node reaches (their TMPDIRs are node-local)."""

    def make(run: dict) -> dict:
        return {**run, "model": {**run["model"], "vocab_size": demo_tokenizer.vocab_size, "seq_length": 128},
                "data": demo_data_section("")}

    return make


def _wait(predicate, timeout, what, cluster, run_dir=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    outputs = "".join(p.read_text(errors="replace")[-3000:] for p in Path(run_dir).glob("slurm/*.out")) if run_dir else ""
    raise AssertionError(f"timed out ({timeout}s) waiting for {what}\n{outputs}\n{cluster.log_tail(1500)}")


def _job_state(cluster, job_id):
    out = subprocess.run(["scontrol", "show", "job", job_id, "-o"], capture_output=True, text=True, env=cluster.env,
                         timeout=30).stdout
    fields = dict(item.split("=", 1) for item in out.split() if "=" in item)
    return fields.get("JobState"), int(fields.get("Restarts", 0))


def _events(run_dir):
    return read_events(run_dir)[0] if (Path(run_dir) / "events.jsonl").exists() else []


def test_submit_time_limit_requeue_and_finish_on_two_nodes(local_slurm, tmp_path, on_demo_data):
    cluster = local_slurm
    run_dir = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(on_demo_data(RUN)))
    # --time 2 with USR1 100 s before: the signal is due 20 s in (Slurm checks every ~30 s).
    submitted = subprocess.run([str(BIN / "glm-launch"), "submit", str(config), "--cluster", "local-slurm",
                                "--run-dir", str(run_dir), "--time", "2", "--signal-seconds", "100"],
                               capture_output=True, text=True, env=cluster.env, timeout=120, cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert (run_dir / "slurm" / "job_ids").read_text().split() == [job_id]
    script = (run_dir / "slurm" / "job.sbatch").read_text()
    assert "#SBATCH --nodes=2" in script and "#SBATCH --ntasks-per-node=2" in script
    assert "#SBATCH --signal=B:USR1@100" in script

    # 1. The time limit: USR1 -> the ranks save and exit 75 -> the job requeues itself.
    def requeued_by_time_limit():
        return [e for e in _events(run_dir) if e.get("source") == "launcher" and e.get("reason") == "requeue"]
    _wait(requeued_by_time_limit, 150, "the time-limit requeue", cluster, run_dir)
    events = _events(run_dir)
    trainer_stop = [e for e in events if e["kind"] == "stop" and e.get("reason") == "signal"]
    assert trainer_stop and trainer_stop[0]["exit_code"] == 75 and trainer_stop[0]["step"] > 0
    first_stop = trainer_stop[0]["step"]
    # Shorten the run for the next allocations (an operator may edit the frozen config between
    # allocations) and give them a normal time limit.
    frozen = run_dir / "slurm" / "run.yaml"
    resolved = yaml.safe_load(frozen.read_text())
    resolved["train"]["steps"] = first_stop + 12
    frozen.write_text(yaml.safe_dump(resolved, sort_keys=False))
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "TimeLimit=10"], env=cluster.env, check=True,
                   capture_output=True, timeout=30)

    # 2. An outside requeue of the running job: it resumes from the latest checkpoint.
    def restarted_and_saved_again():
        events = _events(run_dir)
        restarts = [i for i, e in enumerate(events) if e["kind"] == "restart"]
        return restarts and any(e["kind"] == "checkpoint_saved" and e["step"] > first_stop
                                for e in events[restarts[0]:])
    _wait(restarted_and_saved_again, 120, "the restart and a new checkpoint", cluster, run_dir)
    subprocess.run(["scontrol", "requeue", job_id], env=cluster.env, check=True, capture_output=True, timeout=30)

    # 3. The last allocation finishes the run.
    _wait(lambda: _job_state(cluster, job_id)[0] == "COMPLETED", 150, "the job to complete", cluster, run_dir)
    assert (run_dir / "DONE").exists()
    assert (run_dir / "checkpoints" / "latest").is_file()

    events = _events(run_dir)
    restarts = [e for e in events if e["kind"] == "restart"]
    assert len(restarts) >= 2 and all(e["step"] > 0 for e in restarts)
    assert restarts[0]["step"] == first_stop  # resumed exactly where the time-limit save left off
    assert all(e["world_size"] == 4 and e["layout"]["tp"] == 2 and e["layout"]["pp"] == 2 for e in restarts)
    steps = [r["step"] for r in read_metrics(run_dir)[0]]
    assert steps == list(range(1, first_stop + 13))  # no step trained twice, none lost
    assert _job_state(cluster, job_id)[1] >= 2  # Slurm counted the requeues

    # Ranks 0-3 ran on two simulated nodes in every allocation, nodes 0 and 1 by SLURM_NODEID.
    allocations = sorted((run_dir / "slurm").glob(f"ranks.{job_id}.*"))
    assert len(allocations) >= 3
    for path in allocations:
        rows = [line.split() for line in path.read_text().splitlines()]
        assert sorted(int(r[0]) for r in rows) == [0, 1, 2, 3]
        assert {r[2] for r in rows} == {"0", "1"} and len({r[3] for r in rows}) == 2

    status = subprocess.run([str(BIN / "glm-launch"), "status", str(run_dir), "--json"], capture_output=True,
                            text=True, env=cluster.env, timeout=60)
    assert status.returncode == 0, status.stderr
    reported = json.loads(status.stdout)
    assert reported["job"]["state"] == "COMPLETED" and reported["done"]
    assert reported["last_step"] == first_stop + 12 and reported["last_checkpoint"] == first_stop + 12
    assert reported["restarts"] == len(restarts)


def test_every_simulated_node_has_its_own_tmpdir(local_slurm, tmp_path):
    """Batch script and srun tasks see their node's TMPDIR, as node-local /tmp on a real cluster."""
    cluster = local_slurm
    script = tmp_path / "tmpdir.sbatch"
    script.write_text(f"""#!/bin/bash
#SBATCH --nodes=3
#SBATCH --ntasks-per-node=1
#SBATCH --output={tmp_path}/tmpdir.out
echo "batch $SLURMD_NODENAME $TMPDIR"
srun bash -c 'echo "task $SLURMD_NODENAME $TMPDIR"'
""")
    job_id = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, env=cluster.env,
                            check=True, timeout=60).stdout.strip()
    _wait(lambda: _job_state(cluster, job_id)[0] == "COMPLETED", 120, "the TMPDIR job", cluster)
    rows = [line.split() for line in (tmp_path / "tmpdir.out").read_text().splitlines() if line[:5] in ("batch", "task ")]
    assert sorted(r[1] for r in rows if r[0] == "task") == ["node1", "node2", "node3"]
    assert [r[0] for r in rows].count("batch") == 1
    for _, node, tmpdir in rows:
        assert tmpdir == str(cluster.node_tmpdir(node))


PYXIS_STAND_IN = """#!/bin/bash
# Written by tests/slurm/test_slurm_launch.py: srun as pyxis would take it, on a Slurm without pyxis.
# Logs the arguments (one line per srun, separated by \\x1f), fails like pyxis when a mount's
# source is missing, drops the --container-* options (the workdir becomes --chdir) and runs the
# real srun on the host.
printf '%s\\x1f' "$@" >> "{log}"; printf '\\n' >> "{log}"
args=()
for arg in "$@"; do
    case "$arg" in
        --container-workdir=*) args+=("--chdir=${{arg#*=}}") ;;
        --container-mounts=*) IFS=, read -ra mounts <<< "${{arg#*=}}"
            for mount in "${{mounts[@]}}"; do
                [ -e "${{mount%%:*}}" ] || {{ echo "pyxis stand-in: no mount source ${{mount%%:*}}" >&2; exit 1; }}
            done ;;
        --container-*) ;;
        *) args+=("$arg") ;;
    esac
done
exec {srun} "${{args[@]}}"
"""


def _pyxis_stand_in(tmp_path, env):
    """(env whose srun is the stand-in above and whose `python` is this environment's, log path)."""
    import shutil

    directory = tmp_path / "pyxis"
    directory.mkdir()
    log = directory / "srun.log"
    (directory / "srun").write_text(PYXIS_STAND_IN.format(log=log, srun=shutil.which("srun", path=env["PATH"])))
    (directory / "srun").chmod(0o755)
    return dict(env, PATH=f"{directory}:{BIN}:{env['PATH']}"), log


def test_a_job_given_an_excluded_node_starts_again_without_it(local_slurm, tmp_path):
    """A job resubmitted by hand does not carry the run's exclusions: its before hook finds one of
    them in the allocation, requeues the job with ExcNodeList, and training happens elsewhere.

    Submitted with a container image: every Python step (job hooks, run-directory query, ranks) is
    an srun with the pyxis options, the hooks and the query as one-task steps beside the ranks
    (--overlap). The local Slurm has no pyxis, so no container runs: a stand-in srun on PATH checks
    the mounts' sources, drops the --container-* options (the workdir becomes --chdir) and runs the
    steps on the host; the test checks what every step asked pyxis for."""
    from launch.sbatch import REPO_ROOT

    cluster = local_slurm
    env, srun_log = _pyxis_stand_in(tmp_path, cluster.env)
    run_dir = tmp_path / "run"
    (run_dir / "slurm").mkdir(parents=True)
    (run_dir / "slurm" / "excluded_nodes.json").write_text(json.dumps(
        [{"node": "node2", "reason": "hang: rank 3 stuck", "job_id": "0", "restart": 0}]))
    # node3 busy: the 2-node job can only start on node1 + node2.
    blocker = subprocess.run(["sbatch", "--parsable", "--nodelist=node3", "--ntasks=4", f"--output={tmp_path}/blocker.out",
                              "--wrap", "sleep 600"], capture_output=True, text=True, env=cluster.env, check=True,
                             timeout=60).stdout.strip()
    try:
        _wait(lambda: _job_state(cluster, blocker)[0] == "RUNNING", 60, "the blocking job", cluster)
        config = tmp_path / "run.yaml"
        config.write_text(yaml.safe_dump({**RUN, "train": {**RUN["train"], "steps": 4}}))
        submitted = subprocess.run([str(BIN / "glm-launch"), "submit", str(config), "--cluster", "local-slurm",
                                    "--run-dir", str(run_dir), "--time", "10",
                                    "--set", "slurm.container_image=nvcr.io#nvidia/pytorch:24.05-py3"],
                                   capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
        assert submitted.returncode == 0, submitted.stderr
        job_id = submitted.stdout.strip()
        avoided = _wait(lambda: [e for e in _events(run_dir) if e.get("reason") == "excluded_nodes"], 120,
                        "the before hook to refuse node2", cluster, run_dir)
        assert "excluded node(s) node2" in avoided[0]["message"]
    finally:
        subprocess.run(["scancel", blocker], env=cluster.env, capture_output=True, timeout=30)
    _wait(lambda: _job_state(cluster, job_id)[0] == "COMPLETED", 300, "the job to complete", cluster, run_dir)
    assert (run_dir / "DONE").exists()
    assert _job_field(cluster, job_id, "ExcNodeList") == "node2" and _job_state(cluster, job_id)[1] == 1
    assert not (run_dir / "slurm" / f"ranks.{job_id}.0").exists()  # nothing ran on node1 + node2
    rows = [line.split() for line in (run_dir / "slurm" / f"ranks.{job_id}.1").read_text().splitlines()]
    assert {r[3] for r in rows} == {"node1", "node3"}

    # Allocation 1: the before hook (avoid); allocation 2: the before hook, the started-count
    # query, the ranks, the after hook. Every one asked for the image, the mounts and the workdir.
    calls = [line.split("\x1f")[:-1] for line in srun_log.read_text().splitlines()]
    modules = [args[args.index("-m") + 1] for args in calls]
    assert modules == ["launch.job_hooks", "launch.job_hooks", "megatron_glm.rundir", "launch.rank_entry",
                       "launch.job_hooks"], calls
    for args, module in zip(calls, modules):
        assert "--container-image=nvcr.io#nvidia/pytorch:24.05-py3" in args
        assert f"--container-workdir={REPO_ROOT}" in args and f"--container-name=glm-{job_id}" in args
        mounts = [a for a in args if a.startswith("--container-mounts=")][0].split("=", 1)[1].split(",")
        assert f"{REPO_ROOT}:{REPO_ROOT}" in mounts and f"{run_dir}:{run_dir}" in mounts
        assert ({"--overlap", "--nodes=1", "--ntasks=1"} <= set(args)) == (module != "launch.rank_entry")


HANG_RUN = {**RUN, "train": {**RUN["train"], "steps": 24, "save_interval": 4, "hang_timeout_s": 20}}
"""Long enough to freeze a rank after its first checkpoint and before the end, short enough to
finish on the other nodes; a 20 s hang timeout (interval 2 s: a frozen rank is stale after 6 s)."""


def _heartbeat(run_dir, rank):
    try:
        return json.loads((Path(run_dir) / "heartbeats" / f"rank{rank}.json").read_text())
    except (OSError, ValueError):
        return None


def _job_field(cluster, job_id, name):
    out = subprocess.run(["scontrol", "show", "job", job_id, "-o"], capture_output=True, text=True, env=cluster.env,
                         timeout=30).stdout
    return dict(item.split("=", 1) for item in out.split() if "=" in item).get(name)


def test_a_frozen_rank_is_found_its_node_excluded_and_the_run_finishes_on_the_others(local_slurm, tmp_path,
                                                                                    on_demo_data):
    cluster = local_slurm
    run_dir = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(on_demo_data(HANG_RUN)))
    submitted = subprocess.run([str(BIN / "glm-launch"), "submit", str(config), "--cluster", "local-slurm",
                                "--run-dir", str(run_dir), "--time", "10"],
                               capture_output=True, text=True, env=cluster.env, timeout=120, cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    frozen = None
    try:
        # 1. Freeze rank 3 once the run has a step past the last checkpoint: the steps since that
        #    checkpoint are lost with the hang and must be trained again. The step comes from
        #    metrics.jsonl (written every step, after a collective that rank 3 took part in), not
        #    from rank 3's heartbeat: a 2 s heartbeat and a 2 s step-and-save cycle can stay in
        #    phase and report only checkpoint steps for the whole run.
        def rank3_past_a_checkpoint():
            beat = _heartbeat(run_dir, 3)
            saved = [e["step"] for e in _events(run_dir) if e["kind"] == "checkpoint_saved"]
            trained = [r["step"] for r in read_metrics(run_dir)[0]]
            running = beat and beat["job"] == f"{job_id}.0" and beat["state"] == "running"
            return beat if running and saved and trained and trained[-1] > max(saved) else None
        beat = _wait(rank3_past_a_checkpoint, 240, "a step past a checkpoint in metrics.jsonl while rank 3's "
                     "heartbeat says running (heartbeats/rank3.json: the hang watchdog in the trainer)", cluster, run_dir)
        frozen, node = beat["pid"], beat["host"]
        os.kill(frozen, signal.SIGSTOP)

        # 2. The other ranks time out (exit 76), rank 3's node is excluded, the job requeues elsewhere.
        def hang_event():
            return [e for e in _events(run_dir) if e["kind"] == "error" and e.get("reason") == "hang"
                    and e.get("source") == "watchdog"]
        hang = _wait(hang_event, 90, "the watchdog's hang event", cluster, run_dir)
        assert len(hang) == 1 and hang[0]["stuck_ranks"] == [3] and hang[0]["hosts"] == [node]
        assert f"rank 3 on {node} (pid {frozen}" in hang[0]["message"] and hang[0]["timeout_s"] == 20
        _wait(lambda: _job_state(cluster, job_id)[0] == "COMPLETED", 400, "the job to complete", cluster, run_dir)
    finally:
        if frozen is not None:
            try:
                os.kill(frozen, signal.SIGKILL)  # srun has killed it already, unless the test failed early
            except ProcessLookupError:
                pass

    assert (run_dir / "DONE").exists()
    job_log = "".join(p.read_text(errors="replace") for p in (run_dir / "slurm").glob(f"{job_id}.out"))
    assert f"hang watchdog: killing job step {job_id}.0" in job_log
    assert "First task exited" not in job_log  # srun did not wait out --wait for the frozen rank  # not waiting srun's --wait for the frozen rank
    # Stacks of the ranks that timed out (a rank whose peer left first may end with a gloo error
    # instead), never of the frozen one.
    stacks = sorted((run_dir / "hangs").glob("*.txt"))
    assert stacks and {p.name for p in stacks} <= {f"{job_id}.0.rank{r}.txt" for r in (0, 1, 2)}
    assert all("most recent call first" in p.read_text() for p in stacks)
    events = _events(run_dir)
    launcher = [e for e in events if e.get("source") == "launcher" and e.get("reason") == "hang"]
    assert len(launcher) == 1 and launcher[0]["excluded_nodes"] == [node], launcher
    assert json.loads((run_dir / "slurm" / "excluded_nodes.json").read_text()) == [
        {"node": node, "reason": "hang: rank 3 stuck", "job_id": job_id, "restart": 0}]
    assert _job_field(cluster, job_id, "ExcNodeList") == node and _job_state(cluster, job_id)[1] == 1

    # The requeued allocation ran on the two other nodes and resumed from the last checkpoint
    # saved before the hang.
    rows = [line.split() for line in (run_dir / "slurm" / f"ranks.{job_id}.1").read_text().splitlines()]
    assert sorted(int(r[0]) for r in rows) == [0, 1, 2, 3]
    assert len({r[3] for r in rows}) == 2 and node not in {r[3] for r in rows}
    hang_index = events.index(hang[0])
    last_saved = [e["step"] for e in events[:hang_index] if e["kind"] == "checkpoint_saved"][-1]
    restarts = [e for e in events if e["kind"] == "restart"]
    assert len(restarts) == 1 and restarts[0]["step"] == last_saved and restarts[0]["world_size"] == 4

    # No step lost, none trained twice: the steps after the checkpoint the hang lost were trained
    # again from it (their first metrics lines belong to the discarded attempt), every other once.
    steps = [r["step"] for r in read_metrics(run_dir)[0]]
    back = [i for i in range(1, len(steps)) if steps[i] <= steps[i - 1]]
    assert len(back) <= 1, steps
    first, second = (steps[:back[0]], steps[back[0]:]) if back else (steps, [])
    assert first == list(range(1, len(first) + 1))
    if second:
        assert second == list(range(last_saved + 1, HANG_RUN["train"]["steps"] + 1)) and first[-1] >= last_saved
    else:
        assert first == list(range(1, HANG_RUN["train"]["steps"] + 1))

    status = subprocess.run([str(BIN / "glm-launch"), "status", str(run_dir), "--json"], capture_output=True,
                            text=True, env=cluster.env, timeout=60)
    assert status.returncode == 0, status.stderr
    reported = json.loads(status.stdout)
    assert reported["done"] and [e["node"] for e in reported["excluded_nodes"]] == [node]
    assert any((run_dir / "cache" / "datasets").rglob("*.npy"))  # the index every node read

    # 3. A corrupted file in the newest checkpoint: the next allocation (the run extended by 4
    #    steps, resubmitted by hand) resumes from the one before it, never from the damaged one.
    final = HANG_RUN["train"]["steps"]
    shard = sorted((run_dir / "checkpoints" / f"iter_{final:07d}").glob("*.distcp"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0xFF
    shard.write_bytes(bytes(data))
    frozen_config = run_dir / "slurm" / "run.yaml"
    extended = yaml.safe_load(frozen_config.read_text())
    extended["train"]["steps"] = final + 4
    frozen_config.write_text(yaml.safe_dump(extended, sort_keys=False))
    again = subprocess.run(["sbatch", "--parsable", str(run_dir / "slurm" / "job.sbatch")], capture_output=True,
                           text=True, env=cluster.env, timeout=60, check=True).stdout.strip()
    _wait(lambda: _job_state(cluster, again)[0] == "COMPLETED", 400, "the resubmitted job", cluster, run_dir)
    events = _events(run_dir)
    corrupt = [e for e in events if e["kind"] == "checkpoint_corrupt"]
    assert len(corrupt) == 1 and corrupt[0]["file"] == shard.name and corrupt[0]["path"].endswith(f"iter_{final:07d}")
    previous = final - HANG_RUN["train"]["save_interval"]
    assert [e for e in events if e["kind"] == "restart"][-1]["step"] == previous
    assert RunDir(run_dir).latest_step() == final + 4 and RunDir(run_dir).done_step() == final + 4


def test_prep_array_and_merge_equal_a_single_glm_prep_run(local_slurm, tmp_path):
    from data_prep.tokenizer_training import train_tokenizer

    cluster = local_slurm
    words = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
             "upsilon phi chi psi omega").split()
    inputs = []
    for part in range(3):
        path = tmp_path / f"part{part}.jsonl"
        path.write_text("".join(json.dumps({"text": " ".join(words[(part * 7 + i * j) % len(words)] for j in range(20 + i))})
                                + "\n" for i in range(40)))
        inputs.append(str(path))
    train_tokenizer(inputs, str(tmp_path / "tok"), vocab_size=400, sample_bytes=1 << 20, fmt="jsonl", threads=1)
    tokenizer = str(tmp_path / "tok.model")
    common = ["--tokenizer-model", tokenizer]
    single = subprocess.run([sys.executable, "-m", "data_prep.cli", "tokenize", "--quiet", "--input", *inputs,
                             "--output-prefix", str(tmp_path / "single"), *common, "--format", "jsonl", "--workers", "1"],
                            capture_output=True, text=True, timeout=120)
    assert single.returncode == 0, single.stderr
    submitted = subprocess.run([str(BIN / "glm-launch"), "prep", "--cluster", "local-slurm", "--input", *inputs,
                                "--output-prefix", str(tmp_path / "merged"), *common, "--time", "5",
                                "--", "--format", "jsonl", "--workers", "1"],
                               capture_output=True, text=True, env=cluster.env, timeout=120)
    assert submitted.returncode == 0, submitted.stderr
    array_id, merge_id = submitted.stdout.split()
    _wait(lambda: _job_state(cluster, merge_id)[0] in ("COMPLETED", "FAILED", "CANCELLED"), 120, "the merge job",
          cluster)
    assert _job_state(cluster, merge_id)[0] == "COMPLETED", (tmp_path / "merged.slurm").glob("*.out")
    shards = sorted(p.name for p in tmp_path.glob("merged.shard-*.idx"))
    assert shards == [f"merged.shard-{i:05d}-of-00003.idx" for i in range(3)]  # three array tasks
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"merged{ext}").read_bytes() == (tmp_path / f"single{ext}").read_bytes()
