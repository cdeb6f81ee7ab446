"""The lm-evaluation-harness model type `megatron-glm` (megatron_glm/integrations/lm_eval.py) on a tiny
checkpoint: loglikelihood equals the log-softmax of InferenceModel.logits on the layout built by hand
(GLM-130B's [gMASK] generation layout, its unidirectional variant, the plain causal one), is-greedy,
rolling log-likelihood = the sum over the harness's windows, generate_until = the inference module's
greedy `fill` cut at the stop string, and one `simple_evaluate` on tasks defined in a temporary
folder (local JSONL, nothing downloaded)."""

from __future__ import annotations

import inspect
import json
import shlex
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("lm_eval", reason="the lm-eval extra is not installed (pip install -e .[lm-eval])")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window  # noqa: E402

from generation_fixtures import SPECIAL, tiny_shape, tiny_weights, write_safetensors  # noqa: E402
from megatron_glm.inference import GenerationConfig, fill  # noqa: E402
from megatron_glm.inference.generation import blank_context  # noqa: E402
from megatron_glm.integrations.lm_eval import (MODEL_NAME, MegatronGLM, generation_context,  # noqa: E402
                                               greedy_until)

G, SOP, EOS = SPECIAL["gmask"], SPECIAL["sop"], SPECIAL["eos"]
MAX_LENGTH = 64
SPECIAL_ARG = ";".join(f"{k}={v}" for k, v in SPECIAL.items())  # model_args are split on commas
CORPUS = Path(__file__).resolve().parents[1] / "data_prep" / "demo_corpus" / "pile-demo.jsonl.zst"
TEXT = ("The history of the city begins with a small market on the river, where traders from the north "
        "met farmers from the valley. Over three hundred years the market grew into a town, the town into "
        "a city, and the city into the capital of the region, with a university, a cathedral and a port.")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(adapter loaded through model_args-style options, checkpoint path, tokenizer path)."""
    from data_prep.tokenizer_training import train_tokenizer
    from megatron_glm.data.tokenizer import GLMTokenizer

    root = tmp_path_factory.mktemp("lm_eval")
    train_tokenizer([str(CORPUS)], str(root / "tok"), vocab_size=400, sample_bytes=200_000, threads=1)
    vocab = GLMTokenizer(str(root / "tok.model")).vocab_size
    glm = tiny_shape(vocab)
    checkpoint = write_safetensors(root / "ckpt", glm, tiny_weights(glm))
    lm = MegatronGLM(pretrained=str(checkpoint), tokenizer_model=str(root / "tok.model"),
                     special_token_ids=SPECIAL_ARG, max_length=MAX_LENGTH, batch_size=1)
    yield lm, checkpoint, root / "tok.model"
    lm.close()


def _adapter(lm, **options):
    """Another adapter on the same loaded model."""
    return MegatronGLM(pretrained=lm.model, max_length=MAX_LENGTH, **options)


def _hand_logprobs(model, tokens, prefix, rows, targets):
    """InferenceModel.logits on one sequence, positions 0..s-1, the first `prefix` tokens
    bidirectional, the rest causal -> (per-target log-probs, per-row argmax)."""
    s = len(tokens)
    visible = torch.ones(s, s, dtype=torch.bool).tril()
    visible[:prefix, :prefix] = True
    logits = model.logits(torch.tensor([tokens]), torch.arange(s)[None], ~visible[None, None])[0]
    logprobs = F.log_softmax(logits[rows].double(), dim=-1)
    return logprobs[torch.arange(len(targets)), torch.tensor(targets)], logits[rows].argmax(-1).tolist()


def _hand(model, context, continuation, mask="gmask", unidirectional=False):
    n = len(context)
    if mask == "gmask" and not unidirectional:  # context [gMASK] bidirectional, then <sop> cont causally
        tokens, prefix, first = context + [G, SOP] + continuation[:-1], n + 1, n + 1
    elif mask == "gmask":
        tokens, prefix, first = [G, SOP] + context + continuation[:-1], 0, n + 1
    else:
        context = context or [EOS]
        tokens, prefix, first = context + continuation[:-1], 0, len(context) - 1
    rows = list(range(first, first + len(continuation)))
    return _hand_logprobs(model, tokens, prefix, rows, continuation)


def _requests(kind, args):
    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


PAIRS = [("The history of the city", " begins with a market"), ("", "Hello world"),
         ("Over three hundred years the market grew ", "into a town"), ("A", " b")]


@pytest.mark.parametrize("options", [{}, {"mask": None}, {"unidirectional": "true"}],
                         ids=["gmask", "none", "unidirectional"])
def test_loglikelihood_equals_the_hand_built_layout(setup, options):
    lm = _adapter(setup[0], batch_size=3, **options)  # batched: padding must not change a number
    mask = "none" if "mask" in options else "gmask"
    got = lm.loglikelihood(_requests("loglikelihood", PAIRS))
    for (context, continuation), (logprob, greedy) in zip(PAIRS, got):
        if context:
            ctx_ids, cont_ids = lm._encode_pair(context, continuation)
        else:
            ctx_ids, cont_ids = [], lm.tok_encode(continuation)
        if mask == "none" and not context and cont_ids[0] != EOS:
            ctx_ids = []  # the harness's prefix token (eos), which the hand layout adds
        expected, argmax = _hand(lm.model, ctx_ids, cont_ids, mask, options.get("unidirectional") == "true")
        assert logprob == pytest.approx(float(expected.sum()), abs=2e-4)
        assert greedy == (argmax == cont_ids)


def test_the_gmask_layout_is_glm_130b_generation_layout(setup):
    """Scoring context + continuation reads the same prefix as glm-generate's [gMASK] blank:
    context and [gMASK] bidirectional, <sop> at n+1 seeing everything, positions continuing."""
    from megatron_glm.integrations.lm_eval import scoring_layout

    context, continuation = [11, 12, 13, 14], [21, 22, 23]
    layout = scoring_layout(context, continuation, SPECIAL)
    blank = blank_context(context + [G], len(context), True, SOP, 8)
    cl = len(blank.tokens)
    assert layout.tokens[:cl] == blank.tokens and layout.position_ids[:cl] == blank.position_ids
    assert torch.equal(layout.attention_mask()[:cl, :cl], blank.attention_mask)
    assert layout.position_ids[cl:] == blank.generation_position_ids[:len(continuation) - 1]
    assert layout.rows == [cl - 1, cl, cl + 1] and layout.targets == continuation


def test_is_greedy_on_the_greedy_continuation(setup):
    lm = setup[0]
    context = lm.tok_encode("The history of the city")
    greedy = []
    for _ in range(4):  # the greedy continuation, one token at a time in the hand layout
        _, argmax = _hand(lm.model, context, greedy + [0])
        greedy.append(argmax[-1])
    (logprob, is_greedy), (_, changed) = lm._loglikelihood_tokens(
        [(None, context, greedy), (None, context, greedy[:-1] + [(greedy[-1] + 1) % 300 + 10])])
    assert is_greedy and not changed
    assert logprob == pytest.approx(float(_hand(lm.model, context, greedy)[0].sum()), abs=2e-4)


@pytest.mark.parametrize("mask", ["gmask", None])
def test_rolling_loglikelihood_is_the_sum_over_the_harness_windows(setup, mask):
    lm = _adapter(setup[0], mask=mask, batch_size=2)
    tokens = lm.tok_encode(TEXT)
    span = MAX_LENGTH - (2 if mask == "gmask" else 0)
    windows = [make_disjoint_window(w) for w in get_rolling_token_windows(tokens, -1, span, 1)]
    assert len(windows) >= 2 and [t for _, p in windows for t in p] == tokens  # every token scored once
    expected = 0.0
    for context, prediction in windows:
        context = [t for t in context if t != -1]
        layout_length = len(context) + len(prediction) + (1 if mask == "gmask" else -1 + (not context))
        assert layout_length <= MAX_LENGTH
        expected += float(_hand(lm.model, context, prediction, "gmask" if mask else "none")[0].sum())
    (got,) = lm.loglikelihood_rolling(_requests("loglikelihood_rolling", [(TEXT,)]))
    assert got == pytest.approx(expected, abs=1e-3)


def test_greedy_loop_equals_the_inference_module_fill(setup):
    lm = setup[0]
    contexts = [generation_context(lm.tok_encode(text), lm.model.special, 12)
                for text in ("The history of the city", "Over three hundred years")]
    ours = greedy_until(lm.model, contexts, 12)
    theirs = [c[0].tokens for c in fill(lm.model, contexts, GenerationConfig(strategy="greedy", max_new_tokens=12))]
    assert ours == theirs and min(len(out) for out in ours) >= 3
    for options in ({"unidirectional": True}, {"mask": "none"}):
        causal = [generation_context(lm.tok_encode("The history"), lm.model.special, 6, **options)]
        expected = fill(lm.model, causal, GenerationConfig(max_new_tokens=6))[0][0].tokens
        assert greedy_until(lm.model, causal, 6) == [expected]


def test_generate_until_stops_at_a_stop_string(setup):
    lm = setup[0]
    prompt = "The history of the city"
    (full,) = lm.generate_until(_requests("generate_until", [(prompt, {"until": [], "max_gen_toks": 16})]))
    ids = lm.tok_encode(prompt)
    expected = greedy_until(lm.model, [generation_context(ids, lm.model.special, 16)], 16)[0]
    assert full == lm.tok_decode(expected) and len(full) >= 4
    stop = full[len(full) // 2:len(full) // 2 + 2]
    steps = []
    (cut,) = lm.generate_until(_requests("generate_until", [(prompt, {"until": ["@@", stop], "max_gen_toks": 16})]))
    assert cut == full[:full.index(stop)]
    # the loop ends at the stop string instead of running to max_gen_toks
    greedy_until(lm.model, [generation_context(ids, lm.model.special, 16)], 16,
                 stop=lambda b, out: steps.append(len(out)) or stop in lm.tok_decode(out))
    assert max(steps) < len(expected)


def test_options(setup):
    lm, checkpoint, tokenizer = setup
    from megatron_glm.inference import InferenceError

    with pytest.raises(InferenceError, match="mask must be"):
        _adapter(lm, mask="smask")
    with pytest.raises(InferenceError, match="needs mask=gmask"):
        _adapter(lm, mask=None, unidirectional=True)
    with pytest.raises(InferenceError, match="greedily"):
        lm.generate_until(_requests("generate_until", [("x", {"do_sample": True, "temperature": 0.7})]))
    with pytest.raises(InferenceError, match="tokenizer is needed"):
        MegatronGLM(pretrained=str(checkpoint), special_token_ids=SPECIAL_ARG, max_length=MAX_LENGTH)
    assert _adapter(lm, batch_size="auto").batch_size == 8
    # a context longer than max_length is cut from the left; the continuation always stays whole
    long_context = lm.tok_encode(TEXT)
    (logprob, _), = lm._loglikelihood_tokens([(None, long_context, [11, 12])])
    kept = long_context[-(MAX_LENGTH - 2 - 1):]
    assert logprob == pytest.approx(float(_hand(lm.model, kept, [11, 12])[0].sum()), abs=2e-4)


TASKS = {
    "glm_local_choice": """
task: glm_local_choice
dataset_path: json
dataset_kwargs:
  data_files: {{test: "{data}/choice.jsonl"}}
  cache_dir: "{cache}"
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
""",
    "glm_local_ppl": """
task: glm_local_ppl
dataset_path: json
dataset_kwargs:
  data_files: {{test: "{data}/text.jsonl"}}
  cache_dir: "{cache}"
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
""",
    "glm_local_gen": """
task: glm_local_gen
dataset_path: json
dataset_kwargs:
  data_files: {{test: "{data}/gen.jsonl"}}
  cache_dir: "{cache}"
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["."]
  max_gen_toks: 6
metric_list:
  - metric: exact_match
""",
}

CHOICE_DOCS = [{"question": "The history of the city begins with", "choices": [" a small market", " the moon"],
                "label": 0},
               {"question": "Traders from the north met", "choices": [" farmers", " a cathedral", " the port"],
                "label": 2}]


def test_simple_evaluate_on_locally_defined_tasks(setup, tmp_path, monkeypatch):
    """The harness finds the model type by name, builds it from a model_args string, and runs tasks
    from YAML files in a temporary folder on local JSONL (offline: nothing may be downloaded)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    _, checkpoint, tokenizer = setup
    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    data, tasks = tmp_path / "data", tmp_path / "tasks"
    data.mkdir()
    tasks.mkdir()
    (data / "choice.jsonl").write_text("".join(json.dumps(d) + "\n" for d in CHOICE_DOCS))
    (data / "text.jsonl").write_text(json.dumps({"text": TEXT}) + "\n")
    (data / "gen.jsonl").write_text(json.dumps({"prompt": "The history of the city", "answer": "x"}) + "\n")
    for name, text in TASKS.items():
        (tasks / f"{name}.yaml").write_text(text.format(data=data, cache=tmp_path / "cache"))
    model_args = (f"pretrained={checkpoint},tokenizer_model={tokenizer},special_token_ids={SPECIAL_ARG},"
                  f"max_length={MAX_LENGTH},dtype=float32,mask=gmask")
    results = lm_eval.simple_evaluate(
        model=MODEL_NAME, model_args=model_args, tasks=list(TASKS), batch_size=2,
        task_manager=TaskManager(include_path=str(tasks), include_defaults=False), log_samples=True,
        bootstrap_iters=0, random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
    lm = setup[0]
    scores = lm.loglikelihood(_requests("loglikelihood", [(d["question"], c) for d in CHOICE_DOCS
                                                           for c in d["choices"]]))
    predicted = [max(range(2), key=lambda i: scores[i][0]), max(range(3), key=lambda i: scores[2 + i][0])]
    accuracy = sum(p == d["label"] for p, d in zip(predicted, CHOICE_DOCS)) / 2
    assert results["results"]["glm_local_choice"]["acc,none"] == pytest.approx(accuracy)
    (rolling,) = lm.loglikelihood_rolling(_requests("loglikelihood_rolling", [(TEXT,)]))
    words = len(TEXT.split())  # the harness's word count: whitespace-separated words
    assert results["results"]["glm_local_ppl"]["word_perplexity,none"] == pytest.approx(
        2.718281828459045 ** (-rolling / words), rel=1e-4)
    (sample,) = results["samples"]["glm_local_gen"]
    (expected,) = lm.generate_until(_requests("generate_until", [("The history of the city",
                                                                  {"until": ["."], "max_gen_toks": 6})]))
    assert sample["resps"] == [[expected]]


def test_readme_command_parses_with_the_harness_cli():
    """README's lm-evaluation-harness command (tests/test_readme.py defers to this test): the
    module runs the harness's own parser, so its options must be the harness's, and the
    model_args must be options of the adapter."""
    from lm_eval._cli import HarnessCLI

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    prefix = "python -m megatron_glm.integrations.lm_eval"
    lines = [line for line in readme.replace("\\\n", " ").splitlines() if line.strip().startswith(prefix)]
    assert lines, "README shows no lm-evaluation-harness command"
    for line in lines:
        argv = shlex.split(line, comments=True)[3:]
        args = HarnessCLI()._parser.parse_args(["run", *argv] if argv[0] != "run" else argv)
        options = inspect.signature(MegatronGLM.__init__).parameters
        assert args.model == MODEL_NAME and "pretrained" in args.model_args
        assert set(args.model_args) <= set(options), f"model_args the adapter does not take: {line}"


def test_the_module_command_line_runs_a_local_task(setup, tmp_path, monkeypatch):
    """`python -m megatron_glm.integrations.lm_eval ...` (README) is the harness's CLI with the model
    type registered: run in-process on one local task, results written where the harness writes them."""
    import sys

    from megatron_glm.integrations.lm_eval import main

    _, checkpoint, tokenizer = setup
    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(name, "1")
    (tmp_path / "choice.jsonl").write_text(json.dumps(CHOICE_DOCS[0]) + "\n")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "glm_local_choice.yaml").write_text(
        TASKS["glm_local_choice"].format(data=tmp_path, cache=tmp_path / "cache"))
    monkeypatch.setattr(sys, "argv", ["lm_eval"])
    main(["--model", MODEL_NAME, "--model_args", f"pretrained={checkpoint},tokenizer_model={tokenizer},"
          f"special_token_ids={SPECIAL_ARG},max_length={MAX_LENGTH}", "--tasks", "glm_local_choice",
          "--include_path", str(tmp_path / "tasks"), "--output_path", str(tmp_path / "out"), "--device", "cpu"])
    (written,) = (tmp_path / "out").rglob("results_*.json")
    result = json.loads(written.read_text())["results"]["glm_local_choice"]
    scores = setup[0].loglikelihood(_requests("loglikelihood", [(CHOICE_DOCS[0]["question"], c)
                                                                for c in CHOICE_DOCS[0]["choices"]]))
    assert result["acc,none"] == float(scores[0][0] > scores[1][0])
