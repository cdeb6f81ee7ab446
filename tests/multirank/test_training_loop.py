"""glm-train end to end on CPU: metrics/events, exact resume, resume at another layout, spike guard."""

import json
import math
import shutil

import pytest
import yaml

from megatron_glm.metrics.schema import read_events, read_metrics
from multirank.harness import run_ranks

pytestmark = pytest.mark.multirank

RUN = {"model": {"preset": "glm-tiny", "seq_length": 64}, "data": {"synthetic": True},
       "train": {"steps": 8, "global_batch_size": 8, "peak_lr": 1e-3, "min_lr": 1e-4, "decay_samples": 512,
                 "eval_interval": 0}}
TP2_PP2 = ["parallel.tensor=2", "parallel.pipeline=2"]


def _train(workdir, run_dir, ranks, *overrides):
    config = workdir / "run.yaml"
    config.write_text(yaml.safe_dump(RUN))
    run_ranks("train_cli", ranks, workdir, "--config", str(config), "--run-dir", str(run_dir), *overrides,
              timeout_s=400)
    return [int((workdir / f"exit.rank{r}").read_text()) for r in range(ranks)]


def _losses(run_dir):
    records, _ = read_metrics(run_dir)
    return {r["step"]: r["loss"] for r in records}


# Downstream tasks in GLM-130B's format with token ids (synthetic data has no tokenizer; its specials
# are mask 995, gmask 996, sop 997, eop 998 of glm-tiny's 1000 ids): multiple choice (two groups),
# greedy generation through the KV cache, LM windows.
EVAL_SPECIALS = "pad=0,mask=995,gmask=996,smask=994,eod=999,sop=997,eop=998"
EVAL_TASKS = {
    "choice.yaml": "name: ids-choice\ntype: mul\npath: data/choice\nfile-pattern: {a: 'a*.jsonl', b: 'b*.jsonl'}\n"
                   "max_seq_length: 64\nmicro_batch_size: 2\n",
    "gen.yaml": "name: ids-gen\ntype: gen\npath: data/gen\nuse_task_mask: true\nmax_seq_length: 64\nmax_gen_length: 4\n",
    "lm.yaml": "name: ids-lm\ntype: lm\npath: data/lm\nuse_task_mask: true\nmax_seq_length: 32\ngeneration_length: 8\n",
}


def _eval_overrides(workdir):
    import random

    tasks = workdir / "eval_tasks"
    rng = random.Random(0)
    ids = lambda n: [rng.randrange(1, 990) for _ in range(n)]  # noqa: E731
    lines = {
        "choice/a.jsonl": [{"inputs": ids(rng.randrange(5, 20)), "choices": [ids(rng.randrange(1, 4)) for _ in range(3)],
                            "label": rng.randrange(3)} for _ in range(5)],
        "choice/b.jsonl": [{"inputs": ids(12), "choices": [ids(2), ids(1)], "label": rng.randrange(2)} for _ in range(3)],
        "gen/a.jsonl": [{"inputs": ids(10), "targets": [ids(2)]} for _ in range(3)],
        "lm/a.jsonl": [{"text": ids(50)} for _ in range(2)],
    }
    for name, records in lines.items():
        (tasks / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        (tasks / "data" / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    for name, text in EVAL_TASKS.items():
        (tasks / name).write_text(text)
    return [f"train.eval_tasks=[{tasks}]", "train.downstream_eval_interval=4"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("loop")
    results = {}
    evals = _eval_overrides(workdir)  # the straight and resumed runs evaluate at steps 4 and 8; async does not
    results["straight"] = _train(workdir, workdir / "straight", 4, *TP2_PP2, *evals)
    results["first_half"] = _train(workdir, workdir / "resumed", 4, *TP2_PP2, "train.steps=4", *evals)
    shutil.copytree(workdir / "resumed", workdir / "other")  # one first half, resumed at two layouts
    results["second_half"] = _train(workdir, workdir / "resumed", 4, *TP2_PP2, *evals)
    results["second_half_other"] = _train(workdir, workdir / "other", 2, *evals)  # TP1 x PP1 x DP2
    results["first_half_async"] = _train(workdir, workdir / "async", 4, *TP2_PP2, "train.steps=4",
                                         "train.save_interval=2", "train.async_save=true")
    results["second_half_async"] = _train(workdir, workdir / "async", 4, *TP2_PP2, "train.save_interval=2",
                                          "train.async_save=true")
    return workdir, results


def test_runs_finish_with_done_and_exit_zero(runs):
    workdir, codes = runs
    assert all(code == 0 for ranks in codes.values() for code in ranks)
    for name in ("straight", "resumed", "other"):
        assert (workdir / name / "DONE").exists()
        assert (workdir / name / "config.yaml").exists()


def test_metrics_and_events_follow_the_schema(runs):
    workdir, _ = runs
    records, _ = read_metrics(workdir / "straight", validate=True)
    assert [r["step"] for r in records] == list(range(1, 9))
    assert "val_loss" in records[-1] and math.isfinite(records[-1]["val_loss"])
    events, _ = read_events(workdir / "straight", validate=True)
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "stop" and "checkpoint_saved" in kinds
    resumed_events, _ = read_events(workdir / "resumed")
    assert [e["kind"] for e in resumed_events].count("checkpoint_loaded") == 1


def test_resume_is_bitwise_exact(runs):
    workdir, _ = runs
    straight, resumed = _losses(workdir / "straight"), _losses(workdir / "resumed")
    assert sorted(resumed) == list(range(1, 9))
    for step in range(1, 9):
        assert resumed[step] == straight[step], step


def _eval_lines(run_dir):
    return {r["step"]: {k: v for k, v in r.items() if k.startswith("eval/")}
            for r in read_metrics(run_dir, validate=True)[0] if any(k.startswith("eval/") for k in r)}


def test_downstream_eval_on_the_live_model_equals_glm_eval_on_the_checkpoint(runs):
    """train.eval_tasks at TP2 x PP2: the numbers logged at step 8 are glm-eval's on the step-8
    checkpoint (read at TP1); every evaluation also has its event; the run that stopped at step 4
    and resumed logged the same numbers as the straight one, the one resumed at TP1 x DP2 numbers
    within the layouts' rounding (and, in test_async_..., the straight run's losses equal those of a
    run without evaluations: evaluating changed nothing in training)."""
    import subprocess
    import sys
    from pathlib import Path

    from megatron_glm.training.downstream import flatten_results

    workdir, _ = runs
    live = _eval_lines(workdir / "straight")
    assert sorted(live) == [4, 8]
    assert set(live[8]) == {"eval/ids-choice/Accuracy", "eval/ids-choice/a/Accuracy", "eval/ids-choice/b/Accuracy",
                            "eval/ids-gen/EM", "eval/ids-gen/F1", "eval/ids-lm/PPL"}
    events = [e for e in read_events(workdir / "straight", validate=True)[0] if e["kind"] == "downstream_eval"]
    assert [(e["step"], e["metrics"]) for e in events] == [(4, live[4]), (8, live[8])]
    assert _eval_lines(workdir / "resumed") == live
    out = workdir / "offline.json"
    subprocess.run([str(Path(sys.executable).with_name("glm-eval")), "run", str(workdir / "straight"), "--tasks",
                    str(workdir / "eval_tasks"), "--special-token-ids", EVAL_SPECIALS, "--output", str(out),
                    "--quiet"], check=True, timeout=300, stdout=subprocess.DEVNULL)
    offline = flatten_results(json.loads(out.read_text()))
    assert set(offline) == set(live[8])
    for key, value in offline.items():
        assert live[8][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert live[8]["eval/ids-lm/PPL"] != live[4]["eval/ids-lm/PPL"]  # the model trained in between
    # TP1 x DP2 (the examples split over two data-parallel ranks) after a resume at another layout
    other = _eval_lines(workdir / "other")
    assert sorted(other) == [4, 8] and other[4] == live[4] and set(other[8]) == set(live[8])
    for key, value in live[8].items():
        assert other[8][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_async_checkpoints_publish_and_resume_exactly(runs):
    """Background (megatron-core async) saves: every checkpoint is published under its own step,
    `latest` moves forward, and resuming from one reproduces the uninterrupted run bitwise."""
    workdir, _ = runs
    events, _ = read_events(workdir / "async", validate=True)
    saved = [(e["step"], e["path"].rsplit("/", 1)[-1]) for e in events if e["kind"] == "checkpoint_saved"]
    assert saved == [(2, "iter_0000002"), (4, "iter_0000004"), (6, "iter_0000006"), (8, "iter_0000008")]
    checkpoints = workdir / "async" / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == "iter_0000008" and not list(checkpoints.glob("*.tmp"))
    straight, resumed = _losses(workdir / "straight"), _losses(workdir / "async")
    assert all(resumed[step] == straight[step] for step in range(1, 9))


def test_a_new_run_starts_from_converted_weights(runs):
    """train.init_from: the weights of the finished TP2xPP2 run start a new TP1 run (fresh optimizer,
    step 0), read directly or after `glm-ckpt convert --to dist --model-only` (no optimizer, no loop
    state, no head count given: the trainer records the model's shape) -- the same first loss."""
    import subprocess
    import sys
    from pathlib import Path

    workdir, _ = runs
    glm_ckpt = Path(sys.executable).with_name("glm-ckpt")
    converted = workdir / "model_only"
    subprocess.run([str(glm_ckpt), "convert", str(workdir / "straight" / "checkpoints"), str(converted),
                    "--to", "dist", "--tp", "1", "--pp", "1", "--model-only", "--quiet"], check=True, timeout=300)
    first = {}
    for name, source in (("direct", workdir / "straight" / "checkpoints"), ("converted", converted)):
        assert _train(workdir, workdir / f"init_{name}", 1, "train.steps=1", f"train.init_from={source}") == [0]
        first[name] = _losses(workdir / f"init_{name}")[1]
        loaded = [e for e in read_events(workdir / f"init_{name}")[0] if e["kind"] == "checkpoint_loaded"]
        assert len(loaded) == 1 and loaded[0]["weights_only"] and loaded[0]["step"] == 0
    assert first["direct"] == first["converted"]
    assert first["direct"] < _losses(workdir / "straight")[1] - 0.01  # trained weights, not a fresh init


def test_resume_at_another_layout_stays_within_1e5(runs):
    workdir, _ = runs
    straight, other = _losses(workdir / "straight"), _losses(workdir / "other")
    for step in range(5, 9):
        assert abs(other[step] - straight[step]) / straight[step] < 1e-5, step
    # the parameter norm counts every parameter once at any layout (the tied embedding too)
    norms = {name: {r["step"]: r["param_norm"] for r in read_metrics(workdir / name)[0]} for name in ("straight", "other")}
    for step in range(5, 9):
        assert norms["other"][step] == pytest.approx(norms["straight"][step], rel=1e-5), step


@pytest.mark.parametrize("kind, policy", [("spike", "skip"), ("nan", "skip"), ("spike", "rollback")])
def test_spike_guard_acts_and_records(tmp_path, kind, policy):
    run_dir = tmp_path / "run"
    codes = _train(tmp_path, run_dir, 1, "train.steps=30", "train.save_interval=10",
                   f"train.fault_injection.step=25", f"train.fault_injection.kind={kind}",
                   f"train.spike_policy={policy}", "train.rollback_skip_samples=16")
    assert codes == [0]
    events, _ = read_events(run_dir, validate=True)
    spikes = [e for e in events if e["kind"] == "spike"]
    assert spikes and spikes[0]["step"] == 25 and spikes[0]["action"] == policy
    records, _ = read_metrics(run_dir, validate=True)
    if policy == "skip":
        assert records[-1]["skipped"] >= 1
    assert all(math.isfinite(r["param_norm"]) for r in records)  # NaN never reached the weights
    if kind == "nan":
        assert records[-1]["nan"] >= 1
    if policy == "rollback":
        kinds = [e["kind"] for e in events]
        assert "rollback" in kinds and "skip" in kinds
        rollback = next(e for e in events if e["kind"] == "rollback")
        assert rollback["to_step"] == 20


def test_skip_step_ranges_jump_over_that_data(tmp_path):
    """GLM-130B-style "skip the data of iterations a-b": step 2's samples 8-15 are never trained on."""
    run_dir = tmp_path / "run"
    assert _train(tmp_path, run_dir, 1, "train.steps=4", "train.skip_step_ranges=[[2,2]]") == [0]
    records, _ = read_metrics(run_dir, validate=True)
    assert [r["consumed_samples"] for r in records] == [8, 24, 32, 40]
    skips = [e for e in read_events(run_dir)[0] if e["kind"] == "skip"]
    assert [(e["step"], e["first_sample"], e["last_sample"]) for e in skips] == [(1, 8, 15)]


def test_fp16_overflow_skips_and_the_loss_scale_recovers(tmp_path):
    """Two overflowing steps (hysteresis 2) halve the scale; after `loss_scale_window` good steps
    it doubles back. The overflowing updates are skipped and counted."""
    run_dir = tmp_path / "run"
    codes = _train(tmp_path, run_dir, 1, "precision=fp16", "train.steps=12", "train.loss_scale_window=3",
                   "train.fault_injection.step=4", "train.fault_injection.count=2",
                   "train.fault_injection.kind=nan")
    assert codes == [0]
    records, _ = read_metrics(run_dir, validate=True)
    scales = [r["loss_scale"] for r in records]  # the scale after each step
    assert scales[0] == 2.0**16
    assert [r["grad_norm"] is None for r in records][4:6] == [True, True]  # steps 5 and 6 overflow
    assert scales[4] == scales[3]  # first overflow: hysteresis, no change
    assert scales[5] == scales[4] / 2  # second overflow: halved
    assert scales[8] == scales[5] * 2  # three good steps (window 3): doubled again
    assert records[-1]["skipped"] == 2


def test_kill_9_during_save_keeps_the_previous_checkpoint(tmp_path):
    """Both ranks of a TP2 job are SIGKILLed from outside while the step-4 checkpoint's files are
    written but not yet published: `latest` still names step 2, and the next run resumes there."""
    import time

    from multirank.harness import kill_ranks, spawn_ranks

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(RUN))
    run_dir = tmp_path / "run"
    checkpoints = run_dir / "checkpoints"
    procs, logs = spawn_ranks("train_cli", 2, tmp_path, "--config", str(config), "--run-dir", str(run_dir),
                              "parallel.tensor=2", "train.save_interval=2", "train.fault_injection.step=4",
                              "train.fault_injection.kind=stall_during_save")
    try:
        deadline = time.monotonic() + 240
        while not all("stalling before publishing" in (tmp_path / f"train_cli.rank{r}.log").read_text()
                      for r in range(2)):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
                (tmp_path / "train_cli.rank0.log").read_text()[-3000:]
            time.sleep(0.2)
        assert (checkpoints / "iter_0000004.tmp").is_dir()  # written, not published
    finally:
        kill_ranks(procs, logs)
    assert [p.returncode for p in procs] == [-9, -9]
    assert (checkpoints / "latest").read_text().strip() == "iter_0000002"
    assert not (checkpoints / "iter_0000004").exists()
    codes = _train(tmp_path, run_dir, 2, "parallel.tensor=2", "train.save_interval=2")
    assert codes == [0, 0] and (run_dir / "DONE").exists()
    events, _ = read_events(run_dir)
    loaded = [e for e in events if e["kind"] == "checkpoint_loaded"]
    assert loaded and loaded[0]["path"].endswith("iter_0000002")
    assert not list(checkpoints.glob("*.tmp"))
    # steps 3-4 ran before the kill and again after the resume from step 2
    assert [r["step"] for r in read_metrics(run_dir)[0]] == [1, 2, 3, 4, 3, 4, 5, 6, 7, 8]


def test_stop_signal_saves_and_asks_for_requeue(tmp_path):
    """SIGUSR1 (Slurm's pre-timeout signal) -> checkpoint at the next step boundary, exit 75."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from multirank.harness import SCENARIOS, free_port

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(RUN))
    run_dir = tmp_path / "run"
    env = dict(os.environ, RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    with open(tmp_path / "rank0.log", "w") as log:
        proc = subprocess.Popen([sys.executable, str(SCENARIOS), "train_cli", str(tmp_path), "--config", str(config),
                                 "--run-dir", str(run_dir), "train.steps=100000"], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                metrics = run_dir / "metrics.jsonl"
                if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
                    break
                assert proc.poll() is None, (tmp_path / "rank0.log").read_text()[-2000:]
                time.sleep(0.2)
            proc.send_signal(signal.SIGUSR1)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert (tmp_path / "exit.rank0").read_text() == "75"
    assert not (run_dir / "DONE").exists()
    events, _ = read_events(run_dir, validate=True)
    assert events[-1]["kind"] == "stop" and events[-1]["exit_code"] == 75
    assert (run_dir / "checkpoints" / "latest").exists()
