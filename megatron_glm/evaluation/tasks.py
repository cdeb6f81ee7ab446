"""Run one task's files through a model: mul (packed choices), gen (greedy / beam, LAMBADA), lm.

The model is any `logits_fn(tokens [b, s], position_ids [b, s], attention_mask [b, 1, s, s] bool,
True = masked) -> logits [b, s, V]`. Work is split over data-parallel ranks by example (lm: by
window) as GLM-130B's DistributedSampler(shuffle=False) splits it: rank r takes items r, r + W, ...;
`gather` brings every rank's {item: result} back and the results are used in file order.
"""

from __future__ import annotations

import string
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from megatron_glm.evaluation import metrics as M
from megatron_glm.evaluation.config import TaskConfig
from megatron_glm.evaluation.data import TaskFile
from megatron_glm.evaluation.decoding import (
    DecodeOptions,
    beam_search,
    beam_search_cached,
    greedy,
    greedy_cached,
)
from megatron_glm.evaluation.errors import EvalError
from megatron_glm.evaluation.samples import (
    build_generation_sample,
    build_lm_window,
    build_multiple_choice_sample,
    collate,
    lm_num_windows,
    truncate_gen_context,
    truncate_mul_context,
)
from megatron_glm.evaluation.vocab import Vocab

LogitsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Gather = Callable[[Dict[int, object]], Dict[int, object]]


def gather_over(group) -> Gather:
    """Each rank's {item: result} merged on every rank of `group` (objects are pickled: pass a gloo
    group, e.g. megatron-core's gloo copy of the data-parallel group, also in NCCL jobs)."""
    import torch.distributed as dist

    def gather(local: Dict[int, object]) -> Dict[int, object]:
        parts: List[Optional[Dict[int, object]]] = [None] * dist.get_world_size(group)
        dist.all_gather_object(parts, local, group=group)
        merged: Dict[int, object] = {}
        for part in parts:
            merged.update(part or {})
        return merged

    return gather

ICETK_LAMBADA_BANNED_IDS = [20068, 146010, 146337]
ICETK_LAMBADA_BANNED_PREFIXES = [[46010], [146337]]


class Context:
    """What a task run needs besides its config: the model, ids, DP split, progress."""

    def __init__(self, logits_fn: LogitsFn, vocab: Vocab, rank: int = 0, world: int = 1,
                 gather: Optional[Gather] = None, progress: Optional[Callable[[int], None]] = None,
                 model=None):
        self.logits_fn, self.vocab, self.rank, self.world = logits_fn, vocab, rank, world
        self.model = model
        """An InferenceModel: gen tasks decode through its KV cache (else full forwards of logits_fn)."""
        self.gather = gather or (lambda results: results)
        self.progress = progress or (lambda n: None)

    def run(self, items: Sequence, micro_batch_size: int, fn: Callable[[List], List]) -> List:
        """fn over this rank's share of items in micro-batches; every item's result, in order."""
        mine = list(range(self.rank, len(items), self.world))
        local: Dict[int, object] = {}
        for start in range(0, len(mine), micro_batch_size):
            indices = mine[start:start + micro_batch_size]
            for index, result in zip(indices, fn([items[i] for i in indices])):
                local[index] = result
            self.progress(len(indices))
        merged = self.gather(local)
        return [merged[i] for i in range(len(items))]


def work_items(cfg: TaskConfig, file: TaskFile) -> int:
    if cfg.type == "lm":
        return sum(lm_num_windows(len(e["tokens"]), cfg.max_seq_length, cfg.generation_length) for e in file.examples)
    return len(file.examples)


# ----------------------------------------------------------------------------------------- mul

def run_mul(cfg: TaskConfig, file: TaskFile, ctx: Context) -> Tuple[Dict, List[Dict]]:
    vocab = ctx.vocab
    mask_id = vocab.gmask if cfg.use_task_mask else vocab.mask
    single = all(len(c) == 1 for e in file.examples for c in e["choices"])

    def batch(examples):
        samples = [build_multiple_choice_sample(
            truncate_mul_context(e["inputs"], e["choices"], cfg.max_seq_length), e["choices"], mask_id=mask_id,
            sop_id=vocab.sop, use_task_mask=cfg.use_task_mask, single_token=single,
            multitask_encoding=cfg.use_multitask_encoding) for e in examples]
        inputs = collate(samples)
        with torch.no_grad():
            logits = ctx.logits_fn(inputs["tokens"], inputs["position_ids"], inputs["attention_mask"])
        out = []
        for row, sample in zip(logits, samples):
            # log-softmax over the full (padded) vocabulary, only at the rows that score a choice
            if single:
                position = int(sample.choice_target_ids[0][0])
                logprobs = torch.log_softmax(row[position].float(), dim=-1).cpu()
                out.append([float(logprobs[c[0]]) for c in sample.choices])
                continue
            scores = []
            for choice, targets in zip(sample.choices, sample.choice_target_ids):
                logprobs = torch.log_softmax(row[torch.from_numpy(targets).to(row.device)].float(), dim=-1).cpu()
                values = logprobs[torch.arange(len(choice)), torch.tensor(choice)].double()
                scores.append(float(values.mean() if cfg.score == "mean" else values.sum()))
            out.append(scores)
        return out

    scores = ctx.run(file.examples, cfg.micro_batch_size, batch)
    predictions = [int(np.argmax(s)) for s in scores]
    labels = [e["label"] for e in file.examples]
    result = {"Accuracy": M.accuracy(predictions, labels)}
    records = [{"label": l, "prediction": p, "scores": s} for l, p, s in zip(labels, predictions, scores)]
    return {k: v for k, v in result.items() if k in cfg.metrics}, records


# ----------------------------------------------------------------------------------------- gen

def lambada_bans(cfg: TaskConfig, vocab: Vocab) -> Tuple[List[int], List[List[int]]]:
    """Banned ids / prefixes: the task's own lists, else GLM-130B LAMBADA's rule on this tokenizer
    (every punctuation mark banned as a first token, single-token ones at every step; icetk's
    three quote ids too when the vocabulary is GLM-130B's)."""
    if cfg.banned_ids is not None or cfg.banned_prefixes is not None:
        return list(cfg.banned_ids or []), [list(p) for p in cfg.banned_prefixes or []]
    if cfg.kind != "lambada":
        return [], []
    icetk = vocab.mask == 150000
    ids = list(ICETK_LAMBADA_BANNED_IDS) if icetk else []
    prefixes = [list(p) for p in ICETK_LAMBADA_BANNED_PREFIXES] if icetk else []
    if vocab.has_tokenizer:
        for mark in string.punctuation:
            pieces = vocab.encode(mark)
            if len(pieces) == 1:
                ids.append(pieces[0])
            if pieces:
                prefixes.append(pieces)
    return ids, prefixes


def _text(vocab: Vocab, ids: Sequence[int]) -> str:
    """Decoded text, or the ids joined by spaces when no tokenizer is known (EM/F1 on ids)."""
    text = vocab.decode(ids)
    return text if text is not None else " ".join(str(int(i)) for i in ids)


def _first_word(vocab: Vocab, ids: Sequence[int]) -> List[int]:
    return vocab.encode(_text(vocab, ids).strip().split(" ")[0])


def lambada_choice(vocab: Vocab, beams: Sequence[Sequence[int]]) -> List[int]:
    """The first beam whose second word is punctuation (a Python substring test, as the original),
    else the best beam; its first word, tokenized."""
    for beam in beams:
        words = _text(vocab, beam).strip().split(" ")
        if len(words) >= 2 and words[1] in string.punctuation:
            return _first_word(vocab, beam)
    return _first_word(vocab, beams[0]) if beams else []


def run_gen(cfg: TaskConfig, file: TaskFile, ctx: Context) -> Tuple[Dict, List[Dict]]:
    vocab = ctx.vocab
    lambada = cfg.kind == "lambada"
    if lambada and not vocab.has_tokenizer:
        raise EvalError(f"{cfg.source}: the LAMBADA task compares decoded words and needs --tokenizer-model")
    mask_id = vocab.gmask if cfg.use_task_mask else vocab.mask
    beam = cfg.sampling_strategy != "BaseStrategy"
    # GLM-130B's LAMBADA bans punctuation in its beam search only; explicit task lists always apply
    banned_ids, banned_prefixes = lambada_bans(cfg, vocab) if beam or cfg.banned_ids is not None \
        or cfg.banned_prefixes is not None else ([], [])
    options = DecodeOptions(
        strategy="beam" if beam else "greedy", max_gen_length=cfg.max_gen_length, end_tokens=vocab.end_tokens,
        num_beams=cfg.num_beams, length_penalty=cfg.length_penalty, no_repeat_ngram_size=cfg.no_repeat_ngram_size,
        min_gen_length=cfg.min_gen_length, banned_ids=banned_ids, banned_prefixes=banned_prefixes)
    for example in file.examples:
        if mask_id in example["inputs"] and (cfg.use_task_mask or cfg.unidirectional):
            raise EvalError(f"{file.path}:{example['line']}: blank filling (a mask in the input) needs "
                            f"use_task_mask: false and unidirectional: false")

    def batch(examples):
        samples = [build_generation_sample(
            truncate_gen_context(e["inputs"], cfg.max_seq_length, cfg.max_gen_length), mask_id=mask_id,
            sop_id=vocab.sop, max_gen_length=cfg.max_gen_length, use_task_mask=cfg.use_task_mask,
            unidirectional=cfg.unidirectional) for e in examples]
        with torch.no_grad():
            if not beam:
                raws = greedy_cached(ctx.model, samples, options) if ctx.model is not None \
                    else [greedy(ctx.logits_fn, s, options) for s in samples]
                return [(raw, _first_word(vocab, raw) if lambada else raw) for raw in raws]
            out = []
            for sample in samples:
                beams = beam_search_cached(ctx.model, sample, options) if ctx.model is not None \
                    else beam_search(ctx.logits_fn, sample, options)
                raw = beams[0] if beams else []
                out.append((raw, lambada_choice(vocab, beams) if lambada else raw))
            return out

    outputs = ctx.run(file.examples, cfg.micro_batch_size, batch)
    predictions = [_text(vocab, chosen) for _, chosen in outputs]
    truths = [[_text(vocab, t) for t in e["targets"]] for e in file.examples]
    result = {}
    for name in cfg.metrics:
        metric = {"EM": M.exact_match, "F1": M.f1_score, "Accuracy": M.strict_match if lambada else M.exact_match}[name]
        result[name] = M.qa_score(metric, predictions, truths)
    records = []
    for e, (raw, chosen), text, truth in zip(file.examples, outputs, predictions, truths):
        record = {"targets": e["targets"], "prediction": text if vocab.has_tokenizer else list(chosen),
                  "scores": {"ids": list(raw)}}
        if vocab.has_tokenizer:
            record["scores"]["text"] = _text(vocab, raw)
            record["targets_text"] = truth
        records.append(record)
    return result, records


# ----------------------------------------------------------------------------------------- lm

def run_lm(cfg: TaskConfig, file: TaskFile, ctx: Context) -> Tuple[Dict, List[Dict]]:
    vocab = ctx.vocab
    mask_id = vocab.gmask if cfg.use_task_mask else vocab.mask
    windows = [(d, w) for d, e in enumerate(file.examples)
               for w in range(lm_num_windows(len(e["tokens"]), cfg.max_seq_length, cfg.generation_length))]

    def batch(items):
        samples = [build_lm_window(file.examples[d]["tokens"], w, mask_id=mask_id, sop_id=vocab.sop,
                                   max_seq_length=cfg.max_seq_length, generation_length=cfg.generation_length,
                                   unidirectional=cfg.unidirectional) for d, w in items]
        inputs = collate(samples, extra=("targets", "loss_mask"))
        with torch.no_grad():
            logits = ctx.logits_fn(inputs["tokens"], inputs["position_ids"], inputs["attention_mask"]).float()
            losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), inputs["targets"].to(logits.device),
                                                       reduction="none").cpu()
        losses = (losses.double() * inputs["loss_mask"]).sum(-1)
        return [(float(loss), int(sample.loss_mask.sum())) for loss, sample in zip(losses, samples)]

    results = ctx.run(windows, cfg.micro_batch_size, batch)
    loss = [0.0] * len(file.examples)
    count = [0] * len(file.examples)
    for (d, _), (value, n) in zip(windows, results):
        loss[d] += value
        count[d] += n
    total_words = sum(e["words"] for e in file.examples)
    result: Dict[str, object] = {}
    if "PPL" in cfg.metrics:
        result["PPL"] = M.perplexity(sum(loss), total_words)
    if "BPB" in cfg.metrics:
        bpb = M.bits_per_byte(loss, [e["bytes"] for e in file.examples], [e["domain"] for e in file.examples])
        if not bpb:
            raise EvalError(f"{file.path}: BPB needs the documents' text (text_pretokenized) or a tokenizer")
        result["BPB"] = bpb
    records = [{"targets": None, "prediction": None,
                "scores": {"loss": l, "tokens": n, "words": e["words"], "domain": e["domain"]}}
               for l, n, e in zip(loss, count, file.examples)]
    return result, records


RUNNERS = {"mul": run_mul, "gen": run_gen, "lm": run_lm}
