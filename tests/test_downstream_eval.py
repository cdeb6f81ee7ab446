"""train.eval_tasks: validation before anything starts, the metric keys, the run summary.
(The live evaluation itself, compared with glm-eval on the checkpoint: tests/multirank/test_training_loop.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_glm.config.loader import load_run_config
from megatron_glm.config.validate import config_problems
from megatron_glm.training.downstream import eval_task_file_problems, flatten_results

DEMO_TASKS = Path(__file__).resolve().parents[1] / "megatron_glm" / "evaluation" / "demo_tasks"
SYNTHETIC = ["data.synthetic=true", "model.seq_length=64"]


def _problems(*overrides):
    """What glm-train / glm-launch report: the config's validation, then the task files."""
    run = load_run_config("glm-tiny", [*SYNTHETIC, *overrides])
    return "\n".join(config_problems(run, world_size=1, training=True) + eval_task_file_problems(run))


def _task(tmp_path, text, data=None):
    (tmp_path / "data").mkdir(exist_ok=True)
    if data is not None:
        (tmp_path / "data" / "a.jsonl").write_text(data)
    path = tmp_path / "task.yaml"
    path.write_text(text)
    return path


def test_bad_eval_tasks_are_named_before_anything_starts(tmp_path):
    missing = tmp_path / "nowhere.yaml"
    assert f"train.eval_tasks: {missing}: no such task file or folder" in _problems(f"train.eval_tasks=[{missing}]")
    bad_type = _task(tmp_path, "name: t\ntype: choice\npath: data\n")
    assert f"{bad_type}:2: unknown task type 'choice' (expected one of mul, gen, lm)" in _problems(
        f"train.eval_tasks=[{bad_type}]")
    no_data = _task(tmp_path, "name: t\ntype: mul\npath: elsewhere\n")
    assert "the task's data folder" in _problems(f"train.eval_tasks=[{no_data}]")
    bad_line = _task(tmp_path, "name: t\ntype: mul\npath: data\n", '{"inputs": [1, 2], "choices": [[3]], "label": 4}\n')
    assert f"{tmp_path / 'data' / 'a.jsonl'}:1" in _problems(f"train.eval_tasks=[{bad_line}]")
    # text needs a tokenizer; synthetic data has none
    assert "no tokenizer is known" in _problems(f"train.eval_tasks=[{DEMO_TASKS / 'choice.yaml'}]")
    assert "needs a tokenizer (data.tokenizer_model)" in _problems(f"train.eval_tasks=[{DEMO_TASKS / 'lastword.yaml'}]")
    assert "downstream_eval_interval=-1 must be >= 0" in _problems("train.downstream_eval_interval=-1")


def test_an_interleaved_pipeline_is_refused_with_the_alternative(tmp_path):
    good = _task(tmp_path, "name: t\ntype: mul\npath: data\n", '{"inputs": [1, 2], "choices": [[3], [4]], "label": 1}\n')
    assert _problems(f"train.eval_tasks=[{good}]") == ""
    problems = _problems(f"train.eval_tasks=[{good}]", "parallel.pipeline=2", "parallel.virtual_pipeline=2")
    assert "train.eval_tasks with parallel.virtual_pipeline=2" in problems and "glm-eval" in problems


def test_glm_train_exits_2_naming_the_task_file(tmp_path):
    bad = _task(tmp_path, "name: t\ntype: mul\npath: data\nfile_patern: '*.jsonl'\n")
    result = subprocess.run([str(Path(sys.executable).with_name("glm-train")), "--config", "glm-tiny", "--run-dir",
                             str(tmp_path / "run"), *SYNTHETIC, f"train.eval_tasks=[{bad}]"],
                            capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"{bad}:4: unknown key 'file_patern'; did you mean 'file_pattern'?" in result.stderr
    assert not (tmp_path / "run").exists()


def test_metric_keys_per_task_group_and_domain():
    results = {"tasks": {
        "choice": {"files": [{"file": "en/a.jsonl", "group": "en", "size": 6, "metrics": {"Accuracy": 50.0}},
                             {"file": "zh/a.jsonl", "group": "zh", "size": 2, "metrics": {"Accuracy": 100.0}}],
                   "groups": {"en": {"Accuracy": {"average": 50.0, "median": 50.0, "max": 50.0}},
                              "zh": {"Accuracy": {"average": 100.0, "median": 100.0, "max": 100.0}}}},
        "lm": {"files": [{"file": "a.jsonl", "group": "all", "size": 2,
                          "metrics": {"PPL": 30.0, "BPB": {"Pile-CC": 1.5, "Github": 0.5}}}],
               "groups": {"all": {"PPL": {"average": 30.0, "median": 30.0, "max": 30.0},
                                  "BPB": {"Pile-CC": 1.5, "Github": 0.5}}}},
        "lm-zh": {"files": [{"file": "zh.jsonl", "group": "zh", "size": 1, "metrics": {"BPB": {"all": 2.25}}}],
                  "groups": {"zh": {"BPB": {"all": 2.25}}}},
    }}
    assert flatten_results(results) == {
        "eval/choice/en/Accuracy": 50.0, "eval/choice/zh/Accuracy": 100.0, "eval/choice/Accuracy": 62.5,
        "eval/lm/PPL": 30.0, "eval/lm/BPB/Pile-CC": 1.5, "eval/lm/BPB/Github": 0.5, "eval/lm-zh/BPB": 2.25}


def test_the_run_summary_has_the_last_downstream_scores(tmp_path):
    from megatron_glm.metrics.schema import MetricsWriter
    from megatron_glm.training.summary import summarize

    base = dict(consumed_samples=8, tokens=512, loss=2.0, grad_norm=1.0, param_norm=1.0, loss_scale=1.0, skipped=0,
                nan=0, lr=1e-3, batch_size=8, step_time_s=1.0, tokens_per_s=512.0, tflops_per_gpu=None, mfu=None,
                mem_gb=None)
    with MetricsWriter(tmp_path) as writer:
        writer.write({**base, "step": 1, "eval/demo-choice/Accuracy": 40.0})
        writer.write({**base, "step": 2, "eval/demo-choice/Accuracy": 60.0, "eval/demo-lm/PPL": 123.456789})
        writer.write({**base, "step": 3})
    assert summarize(str(tmp_path))["downstream_eval"] == {"step": 2, "demo-choice/Accuracy": 60.0,
                                                           "demo-lm/PPL": 123.4568}
    json.dumps(summarize(str(tmp_path)))
