"""glm-eval's task layer against GLM-130B's evaluation conventions (docs/evaluation.md): sequence
packing, scores through the float64 reference model (tests/reference_glm.py), LM windows, decoding,
aggregation, task-file and data errors. Everything runs on a 2-layer, 16-wide model in-process."""

from __future__ import annotations

import json
import math
import string
import threading

import numpy as np
import pytest
import torch

from megatron_glm.evaluation import metrics as M
from megatron_glm.evaluation.config import TaskConfig, load_task_file, parse_task
from megatron_glm.evaluation.data import TaskFile, load_examples
from megatron_glm.evaluation.decoding import DecodeOptions, beam_search, greedy
from megatron_glm.evaluation.errors import EvalError
from megatron_glm.evaluation.runner import evaluate
from megatron_glm.evaluation.samples import (
    build_generation_sample,
    build_lm_window,
    build_multiple_choice_sample,
    collate,
    lm_num_windows,
    truncate_mul_context,
)
from megatron_glm.evaluation.tasks import Context, lambada_choice, run_lm, run_mul
from megatron_glm.evaluation.vocab import Vocab
from reference_glm import reference_logits

V, HIDDEN, HEADS, LAYERS, FFN = 64, 16, 2, 2, 32
SPECIAL = {"pad": 0, "mask": 58, "gmask": 59, "smask": 60, "eod": 61, "sop": 62, "eop": 63, "eos": 57}
MASK, GMASK, SOP = SPECIAL["mask"], SPECIAL["gmask"], SPECIAL["sop"]


def tiny_weights(seed: int = 0):
    """Random glm weights under megatron's names (the reference model's and glm-ckpt's canonical keys)."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape, std=0.3: torch.randn(*shape, generator=g) * std  # noqa: E731
    w = {"embedding.word_embeddings.weight": rnd(V, HIDDEN, std=1.0),
         "decoder.final_layernorm.weight": 1 + rnd(HIDDEN, std=0.1), "decoder.final_layernorm.bias": rnd(HIDDEN, std=0.1)}
    for i in range(LAYERS):
        p = f"decoder.layers.{i}."
        w.update({p + "input_layernorm.weight": 1 + rnd(HIDDEN, std=0.1), p + "input_layernorm.bias": rnd(HIDDEN, std=0.1),
                  p + "self_attention.linear_qkv.weight": rnd(3 * HIDDEN, HIDDEN),
                  p + "self_attention.linear_qkv.bias": rnd(3 * HIDDEN, std=0.1),
                  p + "self_attention.linear_proj.weight": rnd(HIDDEN, HIDDEN),
                  p + "self_attention.linear_proj.bias": rnd(HIDDEN, std=0.1),
                  p + "pre_mlp_layernorm.weight": 1 + rnd(HIDDEN, std=0.1), p + "pre_mlp_layernorm.bias": rnd(HIDDEN, std=0.1),
                  p + "mlp.linear_fc1.weight": rnd(2 * FFN, HIDDEN), p + "mlp.linear_fc1.bias": rnd(2 * FFN, std=0.1),
                  p + "mlp.linear_fc2.weight": rnd(HIDDEN, FFN), p + "mlp.linear_fc2.bias": rnd(HIDDEN, std=0.1)})
    return w


WEIGHTS = tiny_weights()


def reference(tokens, position_ids, attention_mask):
    return reference_logits(WEIGHTS, tokens, position_ids, attention_mask, num_layers=LAYERS, num_heads=HEADS)


def ref_logprobs(tokens, positions, visible):
    """float64 log-probs [s, V] of one unpadded sequence with an explicit visibility matrix."""
    out = reference(torch.tensor([tokens]), torch.tensor([positions]), ~torch.as_tensor(visible)[None, None])
    return torch.log_softmax(out[0], -1)


def vocab():
    return Vocab(dict(SPECIAL))


def mul_task(**overrides) -> TaskConfig:
    return parse_task({"name": "t", "type": "mul", "path": ".", **overrides}, "t.yaml")


# ------------------------------------------------------------------------------------------- packing

def test_mul_packing_mask_appended():
    s = build_multiple_choice_sample([10, 11, 12], [[20, 21], [22]], mask_id=MASK, sop_id=SOP,
                                     use_task_mask=False, single_token=False)
    assert s.tokens.tolist() == [10, 11, 12, MASK, SOP, 20, SOP]
    assert s.position_ids.tolist() == [0, 1, 2, 3, 3, 3, 3]  # every choice token at the mask's position
    assert [t.tolist() for t in s.choice_target_ids] == [[4, 5], [6]]
    visible = ~s.attention_mask
    assert visible[:4, :4].all() and not visible[:4, 4:].any()  # context bidirectional, sees no choice
    assert visible[4:, :4].all()  # every choice sees the whole context
    assert visible[4:6, 4:6].tolist() == [[True, False], [True, True]]  # causal inside a choice
    assert not visible[6, 4:6].any() and not visible[4:6, 6].any()  # choices never see each other


def test_mul_packing_gmask_continues_positions():
    s = build_multiple_choice_sample([10, 11, 12], [[20, 21], [22]], mask_id=GMASK, sop_id=SOP,
                                     use_task_mask=True, single_token=False)
    assert s.tokens.tolist() == [10, 11, 12, GMASK, SOP, 20, SOP]
    assert s.position_ids.tolist() == [0, 1, 2, 3, 4, 5, 4]  # each block restarts after the context


def test_mul_packing_blank_filling_and_multitask_encoding():
    s = build_multiple_choice_sample([10, MASK, 11], [[20, 21], [22]], mask_id=MASK, sop_id=SOP,
                                     use_task_mask=False, single_token=False)
    assert s.tokens.tolist() == [10, MASK, 11, SOP, 20, SOP]  # no second mask appended
    assert s.position_ids.tolist() == [0, 1, 2, 1, 1, 1]  # blocks at the blank's position
    assert (~s.attention_mask)[:3, :3].all() and not (~s.attention_mask)[:3, 3:].any()
    s = build_multiple_choice_sample([10, 11], [[20, 21]], mask_id=MASK, sop_id=SOP, use_task_mask=False,
                                     single_token=False, multitask_encoding=True)
    assert s.position_ids.tolist() == [0, 1, 2, 2, 3]


def test_mul_single_token_mode_and_truncation():
    s = build_multiple_choice_sample([10, 11], [[20], [21], [22]], mask_id=MASK, sop_id=SOP,
                                     use_task_mask=False, single_token=True)
    assert s.tokens.tolist() == [10, 11, MASK, SOP]  # one [sop] scores every one-token choice
    assert s.choice_target_ids[0].tolist() == [3]
    # left truncation: context + mask + sop + choices fit max_seq_length
    assert truncate_mul_context(list(range(1, 11)), [[20, 21], [22, 23]], 10) == [7, 8, 9, 10]
    assert truncate_mul_context(list(range(1, 11)), [[20], [21]], 6) == [8, 9, 10]  # T = 1 in single-token mode


def test_collate_pads_to_32_with_masked_rows():
    s = build_multiple_choice_sample([10, 11, 12], [[20, 21], [22]], mask_id=MASK, sop_id=SOP,
                                     use_task_mask=False, single_token=False)
    batch = collate([s])
    assert batch["tokens"].shape == (1, 32) and batch["attention_mask"].shape == (1, 1, 32, 32)
    assert batch["tokens"][0, 7:].eq(0).all() and batch["position_ids"][0, 7:].eq(0).all()
    assert batch["attention_mask"][0, 0, 7:].all() and batch["attention_mask"][0, 0, :, 7:].all()


# ------------------------------------------------------------------------------- mul scores (float64)

def _mul_file(examples):
    return TaskFile("all", None, "f.jsonl", [dict(e, line=i + 1) for i, e in enumerate(examples)])


@pytest.mark.parametrize("task_mask", [False, True])
def test_mul_scores_are_sums_of_separately_computed_choice_logprobs(task_mask):
    examples = [{"inputs": [5, 6, 7, 8], "choices": [[20, 21, 22], [23], [24, 25]], "label": 2},
                {"inputs": [9, 10], "choices": [[30, 31], [32, 33, 34]], "label": 0}]
    metrics, records = run_mul(mul_task(use_task_mask=task_mask, micro_batch_size=2), _mul_file(examples),
                               Context(reference, vocab()))
    mask = GMASK if task_mask else MASK
    for example, record in zip(examples, records):
        n = len(example["inputs"]) + 1
        for choice, score in zip(example["choices"], record["scores"]):
            # one sequence per choice: context + mask (bidirectional), [sop] + choice[:-1] (causal)
            tokens = example["inputs"] + [mask, SOP] + choice[:-1]
            block = list(range(n, n + len(choice))) if task_mask else [n - 1] * len(choice)
            visible = np.tril(np.ones((len(tokens), len(tokens)), dtype=bool))
            visible[:, :n] = True
            visible[:n, n:] = False
            lp = ref_logprobs(tokens, list(range(n)) + block, visible)
            expected = sum(float(lp[n + j, c]) for j, c in enumerate(choice))
            assert score == pytest.approx(expected, abs=1e-4)
        assert record["prediction"] == int(np.argmax(record["scores"]))
    assert metrics["Accuracy"] == pytest.approx(100.0 * sum(r["prediction"] == r["label"] for r in records) / 2)

    mean_metrics, mean_records = run_mul(mul_task(use_task_mask=task_mask, score="mean"), _mul_file(examples),
                                         Context(reference, vocab()))
    for example, record, mean_record in zip(examples, records, mean_records):
        assert mean_record["scores"] == pytest.approx([s / len(c) for s, c in zip(record["scores"], example["choices"])])


def test_mul_ignores_unidirectional_as_the_release_does():
    examples = [{"inputs": [5, 6, 7, 8], "choices": [[20, 21], [23]], "label": 0}]
    _, bidirectional = run_mul(mul_task(use_task_mask=True), _mul_file(examples), Context(reference, vocab()))
    _, unidirectional = run_mul(mul_task(use_task_mask=True, unidirectional=True), _mul_file(examples),
                                Context(reference, vocab()))
    assert unidirectional[0]["scores"] == bidirectional[0]["scores"]


def test_mul_single_token_scores_read_at_sop():
    examples = [{"inputs": [5, 6, 7], "choices": [[20], [21], [22], [23]], "label": 1}]
    _, records = run_mul(mul_task(), _mul_file(examples), Context(reference, vocab()))
    visible = np.ones((5, 5), dtype=bool)
    visible[:4, 4] = False  # the context does not see [sop]
    lp = ref_logprobs([5, 6, 7, MASK, SOP], [0, 1, 2, 3, 3], visible)
    assert records[0]["scores"] == pytest.approx([float(lp[4, c]) for c in (20, 21, 22, 23)], abs=1e-5)
    # one multi-token choice anywhere in the file switches the whole file to one block per choice,
    # where a one-token choice's block is a lone [sop] at the same position: the same numbers
    examples.append({"inputs": [5], "choices": [[20, 21], [22]], "label": 0})
    _, records = run_mul(mul_task(), _mul_file(examples), Context(reference, vocab()))
    assert records[0]["scores"] == pytest.approx([float(lp[4, c]) for c in (20, 21, 22, 23)], abs=1e-5)


def test_data_parallel_split_gives_the_single_rank_results():
    """Two ranks (threads) split the examples r, r+2, ... and gather back in file order."""
    examples = [{"inputs": [5 + i, 6, 7], "choices": [[20, 21], [22 + i]], "label": i % 2} for i in range(5)]
    cfg = mul_task(micro_batch_size=2)
    _, single = run_mul(cfg, _mul_file(examples), Context(reference, vocab()))
    barrier, shared, out, seen = threading.Barrier(2), {}, {}, {0: [], 1: []}

    def gather(rank):
        def fn(local):
            seen[rank].extend(sorted(local))
            shared.update(local)
            barrier.wait()
            return dict(shared)
        return fn

    def worker(rank):
        out[rank] = run_mul(cfg, _mul_file(examples), Context(reference, vocab(), rank, 2, gather(rank)))

    threads = [threading.Thread(target=worker, args=(r,)) for r in (0, 1)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert seen == {0: [0, 2, 4], 1: [1, 3]}
    for rank in (0, 1):
        assert np.allclose([r["scores"] for r in out[rank][1]], [r["scores"] for r in single])


# ------------------------------------------------------------------------------------------------ lm

def test_lm_windows_cover_every_token_once():
    doc = list(range(1, 51))
    n = lm_num_windows(len(doc), 16, 4)
    assert n == math.ceil((50 - 15) / 4) + 1 == 10
    scored = []
    for i in range(n):
        w = build_lm_window(doc, i, mask_id=GMASK, sop_id=SOP, max_seq_length=16, generation_length=4,
                            unidirectional=False)
        prompt = 0 if i == 0 else 16 - 1 - 4
        assert w.tokens[prompt] == GMASK and w.tokens[prompt + 1] == SOP
        assert w.position_ids.tolist() == list(range(len(w.tokens)))
        visible = ~w.attention_mask
        assert visible[: prompt + 1, : prompt + 1].all() and not visible[prompt, prompt + 1:].any()
        assert (visible[prompt + 1:, prompt + 1:] == np.tril(np.ones_like(visible[prompt + 1:, prompt + 1:]))).all()
        scored.extend(w.targets[w.loss_mask == 1].tolist())
        assert len(w.tokens) <= 16
    assert scored == doc
    uni = build_lm_window(doc, 3, mask_id=GMASK, sop_id=SOP, max_seq_length=16, generation_length=4,
                          unidirectional=True)
    assert uni.tokens[0] == GMASK and uni.loss_mask.sum() == 15  # every window scores its whole text


def test_lm_loss_and_perplexity_against_the_reference():
    doc = [int(t) for t in np.random.default_rng(0).integers(1, 50, size=30)]
    cfg = parse_task({"name": "lm", "type": "lm", "path": ".", "use_task_mask": True, "max_seq_length": 16,
                      "generation_length": 4, "metrics": ["PPL", "BPB"]}, "lm.yaml")
    file = TaskFile("all", None, "f.jsonl", [{"line": 1, "tokens": doc, "words": 7, "bytes": 40, "domain": "d"}])
    metrics, records = run_lm(cfg, file, Context(reference, vocab()))
    expected = 0.0
    for i in range(lm_num_windows(30, 16, 4)):  # independent: CE of each scored token from the reference
        start = i * 4
        window = doc[start:start + 15]
        prompt = [] if i == 0 else window[:11]
        text = window[len(prompt):]
        tokens = prompt + [GMASK, SOP] + text[:-1]
        visible = np.tril(np.ones((len(tokens), len(tokens)), dtype=bool))
        visible[: len(prompt) + 1, : len(prompt) + 1] = True
        lp = ref_logprobs(tokens, list(range(len(tokens))), visible)
        expected -= sum(float(lp[len(prompt) + 1 + j, t]) for j, t in enumerate(text))
    assert records[0]["scores"]["loss"] == pytest.approx(expected, rel=1e-5)
    assert records[0]["scores"]["tokens"] == 30
    assert metrics["PPL"] == pytest.approx(math.exp(min(20, expected / 7)), rel=1e-5)
    assert metrics["BPB"] == {"d": pytest.approx(expected / 40 / math.log(2), rel=1e-5)}


# ----------------------------------------------------------------------------------------------- gen

def test_generation_layouts():
    g = build_generation_sample([10, 11, 12], mask_id=GMASK, sop_id=SOP, max_gen_length=3, use_task_mask=True,
                                unidirectional=False)
    assert g.tokens.tolist() == [10, 11, 12, GMASK, SOP] and g.target_position_ids.tolist() == [5, 6, 7]
    visible = ~g.attention_mask
    assert visible[:4, :4].all() and not visible[:4, 4].any() and visible[4].all()
    u = build_generation_sample([10, 11, 12], mask_id=GMASK, sop_id=SOP, max_gen_length=3, use_task_mask=True,
                                unidirectional=True)
    assert u.tokens.tolist() == [GMASK, SOP, 10, 11, 12] and u.position_ids.tolist() == [0, 1, 2, 3, 4]
    assert (~u.attention_mask == np.tril(np.ones((5, 5), dtype=bool))).all()
    b = build_generation_sample([10, MASK, 12], mask_id=MASK, sop_id=SOP, max_gen_length=3, use_task_mask=False,
                                unidirectional=False)
    assert b.tokens.tolist() == [10, MASK, 12, SOP] and b.position_ids.tolist() == [0, 1, 2, 1]
    assert b.target_position_ids.tolist() == [1, 1, 1]


def _bigram(table):
    """logits_fn whose next-token logits depend only on the last real token (log of the table)."""
    def fn(tokens, positions, mask):
        out = torch.full((*tokens.shape, 8), -30.0)
        for b in range(tokens.shape[0]):
            for s in range(tokens.shape[1]):
                out[b, s] = torch.log(torch.tensor(table.get(int(tokens[b, s]), [1 / 8] * 8)))
        return out
    return fn


def test_greedy_and_beam_search_hand_checked():
    end = 7
    # after [sop] (62 -> row): 1 is likeliest (0.5), 2 next (0.4); after 1 everything is flat; after 2 the
    # end token has 0.9. Greedy takes 1 then a flat step; beam search keeps 2 and ends: [2].
    table = {SOP: [0.02, 0.5, 0.4, 0.02, 0.02, 0.02, 0.01, 0.01], 1: [0.125] * 8,
             2: [0.01, 0.02, 0.02, 0.02, 0.01, 0.01, 0.01, 0.9]}
    sample = build_generation_sample([3, 4], mask_id=GMASK, sop_id=SOP, max_gen_length=3, use_task_mask=True,
                                     unidirectional=False)
    fn = _bigram(table)
    assert greedy(fn, sample, DecodeOptions(max_gen_length=2, end_tokens=[end]))[0] == 1
    beams = beam_search(fn, sample, DecodeOptions(strategy="beam", max_gen_length=3, end_tokens=[end], num_beams=2,
                                                  no_repeat_ngram_size=0))
    assert beams[0] == [2]
    # a banned id is never produced; a banned first-token prefix only at the first step
    beams = beam_search(fn, sample, DecodeOptions(strategy="beam", max_gen_length=3, end_tokens=[end], num_beams=2,
                                                  no_repeat_ngram_size=0, banned_prefixes=[[2]]))
    assert all(b[0] != 2 for b in beams)


def test_lambada_answer_extraction_and_metrics():
    v = Vocab(dict(SPECIAL), WordTokenizer())
    # the first beam whose second word is punctuation wins; else beam 0; first word only
    assert lambada_choice(v, [[2, 3], [5, 4], [3]]) == [5]
    assert lambada_choice(v, [[2, 3], [3, 5]]) == [2]
    assert M.strict_match(" Cat", "cat") == 0.0 and M.strict_match(" cat ", "cat") == 1.0
    assert M.exact_match("The Cat!", "cat") == 1.0
    assert M.f1_score("a big cat", "the cat") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert M.qa_score(M.exact_match, ["cat", "dog"], [["cat", "x"], ["cow"]]) == 50.0


# --------------------------------------------------------------------------------------- aggregation

def test_group_aggregation_max_median_size_weighted_average_and_overall():
    files = [{"group": "stem", "size": 1, "metrics": {"Accuracy": 50.0}},
             {"group": "stem", "size": 3, "metrics": {"Accuracy": 100.0}},
             {"group": "other", "size": 4, "metrics": {"Accuracy": 25.0}}]
    groups = M.aggregate(files, overall=True)
    assert groups["stem"]["Accuracy"] == {"max": 100.0, "median": 75.0, "average": 87.5}
    assert groups["Overall"]["Accuracy"]["average"] == pytest.approx((50 + 300 + 100) / 8)  # per example
    assert "Overall" not in M.aggregate(files)


# ------------------------------------------------------------------------------------ files and errors

def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_task_file_schema_kebab_and_snake(tmp_path):
    cfg = load_task_file(_write(tmp_path / "t.yaml", "name: MMLU\ntype: mul\nmodule: tasks.mmlu.task.MMLU\n"
                                "path: MMLU\nfile-pattern:\n  stem: 'stem/*.json'\nmicro-batch-size: 1\n"
                                "use_task_mask: false\n"))
    assert cfg.kind == "mmlu" and cfg.groups() == {"stem": "stem/*.json"} and cfg.metrics == ["Accuracy"]
    lambada = load_task_file(_write(tmp_path / "l.yaml", "name: L\ntype: gen\nmodule: tasks.lambada.task.LAMBADA\n"
                                    "path: x\nsampling_strategy: BeamSearchStrategy\nnum_beams: 16\n"
                                    "max_gen_length: 5\nuse_task_mask: true\nbanned-ids: [1, 2]\n"))
    assert lambada.num_beams == 16 and lambada.metrics == ["Accuracy"] and lambada.banned_ids == [1, 2]


@pytest.mark.parametrize("text, message", [
    ("name: a\ntype: mul\npath: x\nfile-patern: '*'\n", "t.yaml:4: unknown key 'file-patern'; did you mean 'file_pattern'?"),
    ("name: a\ntype: cls\npath: x\n", "t.yaml:2: unknown task type 'cls'"),
    ("name: a\ntype: mul\npath: [x\n", "t.yaml:4: malformed YAML"),
    ("name: a\ntype: mul\npath: x\nmax-seq-length: 8\nmax_seq_length: 9\n", "given twice"),
    ("name: a\ntype: gen\npath: x\nunidirectional: true\n", "needs 'use_task_mask: true'"),
    ("name: a\ntype: mul\npath: x\nnum_beams: 4\n", "'num_beams' is a gen-task key"),
    ("name: a\ntype: mul\npath: x\nmodule: tasks.foo.Bar\n", "module 'tasks.foo.Bar' is not supported"),
    ("type: mul\npath: x\n", "missing required key 'name'"),
])
def test_task_file_errors_name_file_and_line(tmp_path, text, message):
    with pytest.raises(EvalError) as error:
        load_task_file(_write(tmp_path / "t.yaml", text))
    assert message in str(error.value).replace(str(tmp_path) + "/", "")


def test_two_tasks_of_one_name_are_refused(tmp_path):
    from megatron_glm.evaluation.runner import load_tasks

    _write(tmp_path / "a.yaml", "name: t\ntype: mul\npath: x\n")
    _write(tmp_path / "b" / "c.yaml", "name: t\ntype: lm\npath: y\n")
    with pytest.raises(EvalError, match="task name 't' is also the name of"):
        load_tasks([str(tmp_path)])


def test_data_errors_name_file_and_line(tmp_path):
    cfg = mul_task(max_seq_length=8)
    cases = [('{"inputs": [1], "choices": [[2]], "label": 0}\n{"inputs": [1], "choices": [[2]], "label": 0\n',
              "f.jsonl:2: malformed JSON"),
             ('{"inputs": [1], "choices": [[2], [3]], "label": 2}\n', "f.jsonl:1: 'label' must be an integer in [0, 2)"),
             ('{"inputs": [1], "choices": [[2, 3, 4, 5], [5, 6, 7, 8]], "label": 0}\n', "f.jsonl:1: the choices take 8 tokens"),
             ('{"inputs": [1, 99], "choices": [[2]], "label": 0}\n', "f.jsonl:1: 'inputs' holds token id 99 outside"),
             ('{"inputs_pretokenized": "a b", "choices": [[2]], "label": 0}\n', "no tokenizer is known")]
    for text, message in cases:
        path = _write(tmp_path / "f.jsonl", text)
        with pytest.raises(EvalError) as error:
            load_examples(cfg, TaskFile("all", path, "f.jsonl"), vocab(), V)
        assert message in str(error.value), str(error.value)


class WordTokenizer:
    """A toy tokenizer: one id per space-separated word of a fixed list."""

    words = ["<pad>", "the", "cat", "sat", ".", "dog", ","]

    def encode(self, text):
        return [self.words.index(w) for w in text.split()]

    def decode(self, ids):
        return " ".join(self.words[i] for i in ids)


def test_text_fields_ids_first_unless_prefer_text_and_raw_lm_files(tmp_path):
    row = {"inputs": [9, 9], "inputs_pretokenized": "the cat", "choices_pretokenized": ["sat", "dog ,"], "label": 1}
    path = _write(tmp_path / "f.jsonl", json.dumps(row) + "\n")
    v = Vocab(dict(SPECIAL), WordTokenizer())
    file = TaskFile("all", path, "f.jsonl")
    load_examples(mul_task(), file, v, V)
    assert file.examples[0]["inputs"] == [9, 9] and file.examples[0]["choices"] == [[3], [5, 6]]
    v.prefer_text, file = True, TaskFile("all", path, "f.jsonl")
    load_examples(mul_task(), file, v, V)
    assert file.examples[0]["inputs"] == [1, 2]
    raw = _write(tmp_path / "wiki.test.tokens", " the cat sat . \n")
    lm = TaskFile("all", raw, "wiki.test.tokens")
    load_examples(parse_task({"name": "w", "type": "lm", "path": "."}, "w.yaml"), lm, v, V)
    assert lm.examples[0]["tokens"] == [1, 2, 3, 4] and lm.examples[0]["words"] == 4  # "the cat sat ."


def test_evaluate_writes_predictions_in_file_order(tmp_path):
    rows = [{"inputs": [5, i], "choices": [[20, 21], [22]], "label": i % 2} for i in range(3)]
    _write(tmp_path / "data" / "b.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    _write(tmp_path / "data" / "a.jsonl", json.dumps(rows[0]) + "\n")
    _write(tmp_path / "t.yaml", "name: t\ntype: mul\npath: data\nfile-pattern: '*.jsonl'\n")
    cfg = load_task_file(tmp_path / "t.yaml")
    results = evaluate([cfg], reference, vocab(), vocab_size=V, predictions_path=str(tmp_path / "p.jsonl"),
                       progress=False)
    lines = [json.loads(l) for l in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [(l["file"], l["index"]) for l in lines] == [("a.jsonl", 0), ("b.jsonl", 0), ("b.jsonl", 1), ("b.jsonl", 2)]
    assert all(len(l["scores"]) == 2 and l["label"] in (0, 1) for l in lines)
    entry = results["tasks"]["t"]
    assert [f["size"] for f in entry["files"]] == [1, 3] and set(entry["groups"]["all"]["Accuracy"]) == {
        "max", "median", "average"}


def test_shipped_demo_tasks_parse_and_tokenize(demo_tokenizer):
    """The demo tasks (English and Chinese mul, LAMBADA-style gen, lm) load with the demo tokenizer."""
    from pathlib import Path

    from megatron_glm.evaluation.data import task_files
    from megatron_glm.evaluation.runner import load_tasks
    from megatron_glm.evaluation.vocab import make_vocab

    folder = Path(__file__).resolve().parent.parent / "megatron_glm" / "evaluation" / "demo_tasks"
    configs = {c.name: c for c in load_tasks([str(folder)])}
    assert {c.type for c in configs.values()} == {"mul", "gen", "lm"}
    assert configs["demo-lastword"].kind == "lambada"
    v = make_vocab(demo_tokenizer.model_file, {})
    for cfg in configs.values():
        files = task_files(cfg, None)
        assert {f.group for f in files} <= {"en", "zh"}
        for file in files:
            load_examples(cfg, file, v, demo_tokenizer.vocab_size)
            assert file.examples
