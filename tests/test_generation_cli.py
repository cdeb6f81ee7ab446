"""glm-generate: the real console script on tiny checkpoints, text prompts with the demo tokenizer,
JSONL batches, and one-line errors (exit 2) for bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from generation_fixtures import SPECIAL, SPECIAL_ARG, reference_generate, tiny_shape, tiny_weights, write_safetensors
from megatron_glm.cli.generate import encode_prompt, main

SCRIPT = Path(sys.executable).with_name("glm-generate")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """(checkpoint, weights): vocab 128, no tokenizer."""
    glm = tiny_shape(128)
    weights = tiny_weights(glm, seed=1)
    return write_safetensors(tmp_path_factory.mktemp("cli") / "small", glm, weights), weights


@pytest.fixture(scope="module")
def textual(tmp_path_factory):
    """A checkpoint whose vocabulary (2048) fits the demo tokenizer (2000 pieces)."""
    glm = tiny_shape(2048)
    return write_safetensors(tmp_path_factory.mktemp("cli") / "text", glm, tiny_weights(glm, seed=2))


def _cli(capsys, *args):
    capsys.readouterr()
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_console_script_json_equals_the_float64_reference(small):
    checkpoint, weights = small
    assert SCRIPT.exists(), "pip install -e . --no-deps creates the glm-generate script"
    prompt = [21, 22, 23, SPECIAL["mask"], 24, 25, SPECIAL["mask"], 26]
    proc = subprocess.run([str(SCRIPT), str(checkpoint), "--input-ids", " ".join(map(str, prompt)),
                           "--special-token-ids", SPECIAL_ARG, "--max-new-tokens", "3", "--json"],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record == reference_generate(weights, prompt, 3)


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--max-new-tokens" in text and "(default: 128)" in text and "(default: greedy)" in text


def test_text_prompt_and_jsonl_batch(capsys, tmp_path, textual, demo_tokenizer):
    model_file = demo_tokenizer.model_file
    code, out, err = _cli(capsys, textual, "--prompt", "The city of [MASK] is large", "--tokenizer-model", model_file,
                          "--max-new-tokens", "4", "--json")
    assert code == 0, err
    record = json.loads(out)
    special = demo_tokenizer.special.as_dict()
    expected_input = encode_prompt("The city of [MASK] is large", demo_tokenizer, special)
    assert record["input_ids"][:len(expected_input)] == expected_input
    assert record["input_ids"][len(expected_input):] == [demo_tokenizer.sp.eos_id(), special["sop"]]
    assert isinstance(record["text"], str) and len(record["blanks"]) == 1

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "The history of"}, {"input_ids": [300, 301, special["mask"], 302]}, {"prompt": "[sMASK] and [sMASK]"},
    ]) + "\n")
    code, out, err = _cli(capsys, textual, "--input-file", prompts, "--tokenizer-model", model_file,
                          "--max-new-tokens", "3", "--json", "--batch-size", "3")
    assert code == 0, err
    batched = [json.loads(line) for line in out.splitlines()]
    assert [len(r["blanks"]) for r in batched] == [1, 1, 2]
    code, out, _ = _cli(capsys, textual, "--input-ids", "300 301 3 302", "--tokenizer-model", model_file,
                        "--max-new-tokens", "3", "--json")
    assert json.loads(out)["blanks"] == batched[1]["blanks"]


def test_bad_input_exits_2_with_one_line(capsys, tmp_path, small, demo_tokenizer):
    checkpoint, _ = small
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input_ids": [1, 2]}\n\n{"input_ids": [1, 2\n')
    cases = [
        ([tmp_path / "nothing", "--input-ids", "1 2"], "does not exist"),
        ([checkpoint, "--input-ids", "1 2", "--tokenizer-model", demo_tokenizer.model_file], "not this model's tokenizer"),
        ([checkpoint, "--input-ids", " ".join(["9"] * 40), "--special-token-ids", SPECIAL_ARG,
          "--max-sequence-length", "40"], "no room to generate"),
        ([checkpoint, "--input-file", bad, "--special-token-ids", SPECIAL_ARG], f"{bad}:3: not JSON"),
        ([checkpoint, "--prompt", "hello", "--special-token-ids", SPECIAL_ARG], "need a tokenizer"),
        ([checkpoint, "--input-ids", "1 2 500", "--special-token-ids", SPECIAL_ARG], "outside the model's vocabulary"),
        ([checkpoint, "--input-ids", "1 two"], "expected token ids"),
        ([checkpoint, "--input-ids", "1 2", "--special-token-ids", "bos=1"], "bad special-token id"),
        ([checkpoint, "--input-ids", "1 2", "--tp", "2"], "needs 2 ranks"),
        ([checkpoint, "--input-ids", "1 2", "--banned-token-ids", "a"], "--banned-token-ids: expected token ids"),
    ]
    for args, message in cases:
        code, out, err = _cli(capsys, *args)
        assert code == 2, (args, err)
        assert message in err and err.strip().count("\n") == 0 and err.startswith("glm-generate: error:"), err
        assert "Traceback" not in err
    shutil.rmtree(tmp_path / "nothing", ignore_errors=True)


def test_run_directory_gives_tokenizer_specials_and_length(capsys, tmp_path, textual, demo_tokenizer):
    """A run directory (config.yaml + checkpoints/, as glm-train writes them): the tokenizer, its
    special ids (eos = </s>) and the sequence length come from the run config."""
    import yaml

    from checkpoints.convert import convert
    from checkpoints.formats.base import WriteOptions
    from megatron_glm.inference import load_inference_model

    run = tmp_path / "run"
    convert(str(textual), str(run / "checkpoints"), "dist", WriteOptions(), progress=False)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"seq_length": 48},
                                                     "data": {"tokenizer_model": demo_tokenizer.model_file}}))
    model = load_inference_model(str(run))
    try:
        assert model.max_sequence_length == 48 and model.tokenizer is not None
        assert model.special == {**demo_tokenizer.special.as_dict(), "eos": demo_tokenizer.sp.eos_id()}
    finally:
        model.close()
    code, out, err = _cli(capsys, run, "--prompt", "The history of", "--max-new-tokens", "3", "--json")
    assert code == 0, err
    assert json.loads(out)["text"].startswith("The history of")
