"""glm-eval end to end: the installed console script on a tiny GLM-130B-layout (SAT) checkpoint, its
numbers against the float64 reference (tests/reference_glm.py), and bad input -> one line, exit 2."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_glm.cli.evaluate import main
from megatron_glm.evaluation.config import load_task_file
from megatron_glm.evaluation.runner import evaluate
from test_evaluation import HEADS, HIDDEN, LAYERS, SPECIAL, V, WEIGHTS, reference, vocab

SPECIAL_ARG = ",".join(f"{k}={v}" for k, v in SPECIAL.items())
TASKS = {
    "choice.yaml": "name: choice\ntype: mul\npath: data/choice\nmicro-batch-size: 2\nmax_seq_length: 64\n",
    "blank.yaml": "name: blank\ntype: gen\npath: data/blank\nmax_gen_length: 3\nmax_seq_length: 64\n",
    "beam.yaml": ("name: beam\ntype: gen\npath: data/blank\nuse_task_mask: true\nsampling_strategy: BeamSearchStrategy\n"
                  "num_beams: 3\nmax_gen_length: 3\nmax_seq_length: 64\nbanned-ids: [5]\n"),
    "lm.yaml": "name: lm\ntype: lm\npath: data/lm\nuse_task_mask: true\nmax_seq_length: 24\ngeneration_length: 8\n",
}
DATA = {
    "data/choice/a.jsonl": [{"inputs": [5 + i, 6, 7, 8], "choices": [[20, 21], [22], [23, 24, 25]], "label": i % 3}
                            for i in range(5)],
    "data/blank/a.jsonl": [{"inputs": [9, 10, 11, 12], "targets": [[13, 14]]},
                           {"inputs": [9, SPECIAL["mask"], 30, 31], "targets": [[40]]}],
    "data/lm/a.jsonl": [{"text": [(7 * i) % 50 + 1 for i in range(40)], "text_pretokenized": " ".join("w" * 40)}],
}


def _sat_writer():
    spec = importlib.util.spec_from_file_location(
        "plain_sat_writer_eval", Path(__file__).parent / "checkpoints" / "plain_sat_writer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_sat


def write_checkpoint_and_tasks(root: Path) -> Path:
    """root/sat (the tiny weights in GLM-130B's release layout) and root/tasks (the four tasks)."""
    _sat_writer()(WEIGHTS, root / "sat", 1, iteration=3, num_layers=LAYERS, head_dim=HIDDEN // HEADS)
    for name, text in TASKS.items():
        (root / "tasks").mkdir(exist_ok=True)
        (root / "tasks" / name).write_text(text)
    for name, rows in DATA.items():
        path = root / "tasks" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def reference_run(root: Path):
    """(results, prediction lines) of the four tasks through the float64 reference model."""
    configs = [load_task_file(root / "tasks" / name) for name in sorted(TASKS)]
    results = evaluate(configs, reference, vocab(), vocab_size=V, progress=False,
                       predictions_path=str(root / "ref.jsonl"))
    return results, [json.loads(line) for line in (root / "ref.jsonl").read_text().splitlines()]


def assert_predictions_match(lines, ref_lines):
    assert [(l["task"], l["file"], l["index"]) for l in lines] == [(l["task"], l["file"], l["index"]) for l in ref_lines]
    for got, want in zip(lines, ref_lines):
        if got["task"] == "choice":
            assert got["scores"] == pytest.approx(want["scores"], rel=3e-5, abs=1e-4)  # fp32 vs float64
            assert got["prediction"] == want["prediction"] and got["label"] == want["label"]
        elif got["task"] == "lm":
            assert got["scores"]["loss"] == pytest.approx(want["scores"]["loss"], rel=1e-5)
            assert got["scores"]["tokens"] == want["scores"]["tokens"] == 40
        else:  # greedy ([MASK], blank filling) and beam search ([gMASK]) through the KV cache
            assert got["scores"]["ids"] == want["scores"]["ids"], got["task"]
            assert 5 not in got["scores"]["ids"] or got["task"] != "beam"


def eval_command(root: Path, out: Path, *extra: str):
    return [glm_eval_script(), "run", str(root / "sat"), "--tasks", str(root / "tasks"), "--num-attention-heads",
            str(HEADS), "--special-token-ids", SPECIAL_ARG, "--rope-precision", "fp32",  # as the reference
            "--output", str(out / "results.json"), "--predictions", str(out / "preds.jsonl"), *extra]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return write_checkpoint_and_tasks(tmp_path_factory.mktemp("glm_eval"))


def glm_eval_script() -> str:
    return shutil.which("glm-eval", path=str(Path(sys.executable).parent)) or "glm-eval"


def test_console_script_matches_the_float64_reference(setup):
    out = setup / "out"
    proc = subprocess.run(eval_command(setup, out), capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "choice" in proc.stdout and "Accuracy" in proc.stdout and "PPL" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["special_token_ids"]["mask"] == SPECIAL["mask"]
    assert results["settings"]["model"]["padded_vocab_size"] == V and results["settings"]["rope_precision"] == "fp32"
    lines = [json.loads(line) for line in (out / "preds.jsonl").read_text().splitlines()]
    expected, ref_lines = reference_run(setup)
    assert_predictions_match(lines, ref_lines)
    assert results["tasks"]["choice"]["groups"] == expected["tasks"]["choice"]["groups"]
    ppl = results["tasks"]["lm"]["groups"]["all"]["PPL"]["average"]
    assert ppl == pytest.approx(expected["tasks"]["lm"]["groups"]["all"]["PPL"]["average"], rel=1e-4) and ppl < 1e8


@pytest.mark.parametrize("case, message", [
    ("unknown_type", "unknown task type 'cls'"),
    ("bad_yaml", "malformed YAML"),
    ("bad_jsonl", "a.jsonl:2: malformed JSON"),
    ("long_choice", "a.jsonl:1: the choices take"),
    ("vocab", "outside the checkpoint's vocabulary"),
])
def test_bad_input_is_one_line_and_exit_2(setup, tmp_path, capsys, case, message):
    tasks = tmp_path / "tasks"
    (tasks / "data").mkdir(parents=True)
    task = "name: t\ntype: mul\npath: data\nmax_seq_length: 8\n"
    row = {"inputs": [1, 2], "choices": [[3], [4]], "label": 0}
    data = json.dumps(row) + "\n"
    special = SPECIAL_ARG
    if case == "unknown_type":
        task = task.replace("type: mul", "type: cls")
    elif case == "bad_yaml":
        task += "metrics: [Accuracy\n"
    elif case == "bad_jsonl":
        data += "{not json\n"
    elif case == "long_choice":
        data = json.dumps(dict(row, choices=[[3, 4, 5, 6], [7, 8, 9, 10]])) + "\n"
    elif case == "vocab":
        special = SPECIAL_ARG.replace("eos=57", "eos=70000")
    (tasks / "t.yaml").write_text(task)
    (tasks / "data" / "a.jsonl").write_text(data)
    capsys.readouterr()
    code = main(["run", str(setup / "sat"), "--tasks", str(tasks), "--num-attention-heads", str(HEADS),
                 "--special-token-ids", special, "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("glm-eval: error:") and message in err, err
    assert "Traceback" not in err


def test_tokenizer_that_does_not_match_the_checkpoint_is_exit_2(setup, demo_tokenizer, capsys):
    capsys.readouterr()
    code = main(["run", str(setup / "sat"), "--tasks", str(setup / "tasks" / "choice.yaml"), "--num-attention-heads",
                 str(HEADS), "--tokenizer-model", demo_tokenizer.model_file, "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "vocabulary" in err, err
