"""glm-launch on a real Slurm (2 simulated nodes x 2 tasks): a tiny GLM at TP2 x PP2 is submitted,
stopped by its time limit (USR1 before it: save, requeue itself), requeued from outside
(`scontrol requeue`: resume from the latest checkpoint), and finishes; prep runs as an array job
plus a dependent merge."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from megatron_glm.monitor.schema import read_events, read_metrics

pytestmark = pytest.mark.slurm

BIN = Path(sys.executable).parent
RUN = {"model": {"preset": "glm-tiny", "seq_length": 32},
       "parallel": {"tensor": 2, "pipeline": 2},
       # Long enough that the time-limit signal always comes first, however fast this machine is;
       # the test shortens the run once it has been requeued (see below).
       "train": {"steps": 100000, "global_batch_size": 4, "save_interval": 2, "eval_interval": 0,
                 "decay_samples": 4000, "peak_lr": 1e-3, "min_lr": 1e-4}}


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


def test_submit_time_limit_requeue_and_finish_on_two_nodes(local_slurm, tmp_path):
    cluster = local_slurm
    run_dir = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(RUN))
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

    # Ranks 0-3 ran on both simulated nodes in every allocation, nodes 0 and 1 by SLURM_NODEID.
    allocations = sorted((run_dir / "slurm").glob(f"ranks.{job_id}.*"))
    assert len(allocations) >= 3
    for path in allocations:
        rows = [line.split() for line in path.read_text().splitlines()]
        assert sorted(int(r[0]) for r in rows) == [0, 1, 2, 3]
        assert {r[2] for r in rows} == {"0", "1"} and {r[3] for r in rows} == {"node1", "node2"}

    status = subprocess.run([str(BIN / "glm-launch"), "status", str(run_dir), "--json"], capture_output=True,
                            text=True, env=cluster.env, timeout=60)
    assert status.returncode == 0, status.stderr
    reported = json.loads(status.stdout)
    assert reported["job"]["state"] == "COMPLETED" and reported["done"]
    assert reported["last_step"] == first_stop + 12 and reported["last_checkpoint"] == first_stop + 12
    assert reported["restarts"] == len(restarts)


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
