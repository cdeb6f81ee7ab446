"""EleutherAI lm-evaluation-harness model type `megatron-glm` (pinned harness: lm-eval 0.4.13).

Runs the harness's tasks on any checkpoint `glm-ckpt` reads, through `load_inference_model`
(docs/lm_eval.md has the layouts, the options and how the numbers differ from `glm-eval`):

    python -m megatron_glm.integrations.lm_eval --model megatron-glm \\
        --model_args pretrained=runs/demo/run,tokenizer_model=tok.model --tasks TASK --include_path DIR

or from Python (importing this module registers the model type):

    import lm_eval, megatron_glm.integrations.lm_eval
    lm_eval.simple_evaluate(model="megatron-glm", model_args="pretrained=CKPT", tasks=[...])

Layouts (`mask=`):

- `gmask` (default), GLM-130B's generation layout (docs/generation.md): the context and [gMASK]
  are one bidirectional prefix, then <sop> and the continuation follow causally with the positions
  continuing (context 0..n-1, [gMASK] n, <sop> n+1, continuation token k at n+2+k). <sop>
  predicts the first continuation token. `unidirectional=true` gives GLM-130B's causal variant
  ([gMASK] <sop> context continuation, all causal, positions 0, 1, 2, ...).
- `none`: the harness's plain causal-LM convention on our model, no special tokens: context then
  continuation, causal, an empty context replaced by eos (the harness's prefix token).

Log-probabilities are a log-softmax over the model's full (padded) vocabulary, as glm-eval scores.
"""

from __future__ import annotations

import atexit
import logging
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

import lm_eval.models  # noqa: F401  (the harness's own model types stay registered next to ours)
from lm_eval.api.instance import Instance
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from megatron_glm.inference.generation import Context, blank_context
from megatron_glm.inference.model import InferenceError, InferenceModel, load_inference_model

log = logging.getLogger(__name__)

MODEL_NAME = "megatron-glm"
MASKS = ("gmask", "none")
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}
DEFAULT_MAX_GEN_TOKS = 256
"""The harness's default for generate_until requests that do not set max_gen_toks."""
DEFAULT_AUTO_BATCH = 8
"""batch_size=auto: no memory probing here; this many sequences per forward (or max_batch_size)."""


# -------------------------------------------------------------------------------------------------
# Layouts


@dataclass
class ScoringLayout:
    """One (context, continuation) sequence as the model sees it."""

    tokens: List[int]
    position_ids: List[int]
    prefix: int
    """The first `prefix` tokens attend to each other bidirectionally; every later row is causal."""
    rows: List[int]
    """Indices whose logits predict the continuation tokens, in order."""
    targets: List[int]

    def attention_mask(self) -> torch.Tensor:
        """bool [s, s], True = masked (GLM-130B's convention)."""
        s = len(self.tokens)
        visible = torch.ones(s, s, dtype=torch.bool).tril()
        visible[: self.prefix, : self.prefix] = True
        return ~visible


def scoring_layout(context: Sequence[int], continuation: Sequence[int], special: Dict[str, int], *,
                   mask: str = "gmask", unidirectional: bool = False,
                   prefix_token: Optional[int] = None) -> ScoringLayout:
    """The sequence that scores `continuation` after `context` (module docstring):

    gmask:                 context [gMASK] | <sop> cont[:-1]   prefix = n + 1, positions 0..
    gmask, unidirectional: [gMASK] <sop> context cont[:-1]     prefix = 0 (causal), positions 0..
    none:                  context cont[:-1]                   prefix = 0; an empty context is [prefix_token]
    """
    context, continuation = [int(t) for t in context], [int(t) for t in continuation]
    if not continuation:
        raise InferenceError("an empty continuation has no log-likelihood to score")
    if mask == "gmask":
        n = len(context)
        head = [special["gmask"], special["sop"]]
        tokens = head + context if unidirectional else context + head
        prefix = 0 if unidirectional else n + 1
        first_row = n + 1  # <sop> (bidirectional) or the last context token (unidirectional)
    elif mask == "none":
        if not context:
            if prefix_token is None:
                raise InferenceError("an empty context needs a prefix token (eos) in the causal layout")
            context = [prefix_token]
        tokens, prefix, first_row = list(context), 0, len(context) - 1
    else:
        raise InferenceError(f"mask must be one of {', '.join(MASKS)}, got {mask!r}")
    tokens += continuation[:-1]
    rows = list(range(first_row, first_row + len(continuation)))
    return ScoringLayout(tokens, list(range(len(tokens))), prefix, rows, continuation)


def layout_overhead(mask: str) -> int:
    """Tokens a layout adds to context + continuation - 1: [gMASK] and <sop>, or none."""
    return 2 if mask == "gmask" else 0


def generation_context(context: Sequence[int], special: Dict[str, int], max_new_tokens: int, *,
                       mask: str = "gmask", unidirectional: bool = False,
                       prefix_token: Optional[int] = None) -> Context:
    """The prefill of generate_until: gmask is GLM-130B's [gMASK] generation layout
    (megatron_glm.inference.generation.blank_context: context [gMASK] <sop>, generated tokens at
    n+2, n+3, ...); unidirectional is [gMASK] <sop> context, causal, generated tokens at n+2, ...;
    none is the context alone, causal, generated tokens at n, n+1, ..."""
    context = [int(t) for t in context]
    if mask == "gmask" and not unidirectional:
        return blank_context(context + [special["gmask"]], len(context), True, special["sop"], max_new_tokens)
    if mask == "gmask":
        tokens = [special["gmask"], special["sop"]] + context
    elif mask == "none":
        tokens = context or [prefix_token]
    else:
        raise InferenceError(f"mask must be one of {', '.join(MASKS)}, got {mask!r}")
    cl = len(tokens)
    causal = ~torch.ones(cl, cl, dtype=torch.bool).tril()
    return Context(tokens, list(range(cl)), causal, list(range(cl, cl + max_new_tokens)))


def _batch(layouts: Sequence[Tuple[List[int], List[int], torch.Tensor]], pad: int):
    """Right-padded tokens, positions [b, s] and mask [b, 1, s, s]; padding rows see themselves
    only, padding columns are masked for every real row."""
    lengths = [len(tokens) for tokens, _, _ in layouts]
    padded = max(lengths)
    batch = len(layouts)
    tokens = torch.full((batch, padded), pad, dtype=torch.long)
    positions = torch.zeros(batch, padded, dtype=torch.long)
    mask = torch.ones(batch, 1, padded, padded, dtype=torch.bool)
    for b, (seq, pos, seq_mask) in enumerate(layouts):
        s = lengths[b]
        tokens[b, :s] = torch.as_tensor(seq)
        positions[b, :s] = torch.as_tensor(pos)
        mask[b, 0, :s, :s] = seq_mask
        for row in range(s, padded):
            mask[b, 0, row, row] = False
    return tokens, positions, mask, lengths


# -------------------------------------------------------------------------------------------------
# The model type


def _parse_special(value) -> Optional[Union[str, Dict[str, int]]]:
    """special_token_ids in --model_args: the harness splits model_args on commas, so the ids are
    separated by ';', ':' or spaces there ("mask=3;gmask=4;...;eos=2"); a dict from Python."""
    if value is None or isinstance(value, dict):
        return value
    text = str(value)
    for separator in (";", ":", " "):
        text = text.replace(separator, ",")
    return text


def _parse_bool(value, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes"):
        return True
    if str(value).lower() in ("false", "0", "no", "none"):
        return False
    raise InferenceError(f"{name} must be true or false, got {value!r}")


class MegatronGLM(TemplateLM):
    """lm-evaluation-harness model on a GLM checkpoint (docs/lm_eval.md).

    Options (`--model_args key=value,...`): `pretrained` (a checkpoint path as glm-ckpt reads it, or
    an InferenceModel from Python), `tokenizer_model` (default: the one the run config records),
    `special_token_ids` ("mask=3;gmask=4;...;eos=2"), `dtype` (float32 | bfloat16 | float16),
    `max_length` (default: the model's sequence length), `batch_size`, `mask` (gmask | none),
    `unidirectional` (gmask only), `max_gen_toks` (default 256), `num_attention_heads` and
    `rope_precision` (as load_inference_model), `device` (cpu; cuda[:N] moves the model there; the
    harness's CLI asks for cuda:0 by default, so without CUDA it stays on the CPU with a warning).
    """

    backend = "causal"

    def __init__(self, pretrained: Union[str, InferenceModel], tokenizer_model: Optional[str] = None,
                 special_token_ids=None, dtype: str = "float32", max_length: Optional[int] = None,
                 batch_size: Union[int, str, None] = 1, max_batch_size: Optional[int] = None,
                 mask: Optional[str] = "gmask", unidirectional=False, max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
                 num_attention_heads: Optional[int] = None, rope_precision: Optional[str] = None,
                 device: Optional[str] = None):
        super().__init__()
        self.mask = "none" if mask is None else str(mask).lower()  # the harness parses "none" as None
        if self.mask not in MASKS:
            raise InferenceError(f"mask must be one of {', '.join(MASKS)}, got {mask!r}")
        self.unidirectional = _parse_bool(unidirectional, "unidirectional")
        if self.unidirectional and self.mask != "gmask":
            raise InferenceError("unidirectional is GLM-130B's causal [gMASK] layout: it needs mask=gmask")
        self.batch_size = self._batch_size(batch_size, max_batch_size)
        self.max_gen_toks = int(max_gen_toks)
        if isinstance(pretrained, InferenceModel):
            self.model, self._owns_model = pretrained, False
            if tokenizer_model is not None or special_token_ids is not None:
                raise InferenceError("tokenizer_model and special_token_ids are read at load time: pass them "
                                     "to load_inference_model, not with an already loaded model")
        else:
            torch_dtype = DTYPES.get(str(dtype).lower()) if dtype != "auto" else torch.float32
            if torch_dtype is None:
                raise InferenceError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
            self.model = load_inference_model(
                str(pretrained), dtype=torch_dtype, special_token_ids=_parse_special(special_token_ids),
                tokenizer_model=tokenizer_model, max_sequence_length=int(max_length) if max_length else None,
                num_attention_heads=int(num_attention_heads) if num_attention_heads else None,
                rope_precision=rope_precision)
            self._owns_model = True
            atexit.register(self.close)  # the harness never closes its model: release the group at exit
        self._move(device)
        self._max_length = min(int(max_length), self.model.max_sequence_length) if max_length \
            else self.model.max_sequence_length
        if self.model.tokenizer is None:
            raise InferenceError(f"{self.model.source}: the harness's tasks are text, so a tokenizer is needed: pass "
                                 f"tokenizer_model=... (no tokenizer is recorded with this checkpoint)")
        self.glm_tokenizer = self.model.tokenizer
        needed = ("gmask", "sop") if self.mask == "gmask" else ("eos",)
        missing = [name for name in needed if name not in self.model.special]
        if missing:
            raise InferenceError(f"special-token ids {missing} are unknown; pass special_token_ids="
                                 f"{';'.join(f'{name}=ID' for name in missing)}")
        if self._max_length < layout_overhead(self.mask) + 1:
            raise InferenceError(f"max_length {self._max_length} leaves no room to score a token")

    @staticmethod
    def _batch_size(batch_size, max_batch_size) -> int:
        if batch_size is None:
            return 1
        if str(batch_size).startswith("auto"):
            size = int(max_batch_size) if max_batch_size else DEFAULT_AUTO_BATCH
            log.info("megatron-glm: batch_size=auto uses %d sequences per forward (no memory probing)", size)
            return size
        if int(batch_size) < 1:
            raise InferenceError(f"batch_size must be at least 1, got {batch_size}")
        return int(batch_size)

    def _move(self, device: Optional[str]) -> None:
        if device is None or str(device) == "cpu":
            return
        if str(device).startswith("cuda"):
            if not torch.cuda.is_available():
                log.warning("megatron-glm: device %s requested but CUDA is not available; running on the CPU",
                            device)
                return
            self._device = torch.device(device)
            if self._device.index is not None:
                torch.cuda.set_device(self._device)  # megatron-core allocates the KV cache on the current device
            self.model.model.to(self._device)  # InferenceModel moves each input to its parameters' device
            return
        raise InferenceError(f"device must be cpu or cuda[:N], got {device!r}")

    def close(self) -> None:
        """Release the model's one-process group (only for a model this adapter loaded)."""
        if self._owns_model:
            self.model.close()  # idempotent

    # ---------------------------------------------------------------------------------------------
    # Harness plumbing

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def eot_token_id(self) -> int:
        """eos (the causal layout's prefix for an empty context), else eop."""
        special = self.model.special
        return special["eos"] if "eos" in special else special["eop"]

    @property
    def prefix_token_id(self) -> int:
        return self.eot_token_id

    @property
    def tokenizer_name(self) -> str:
        return self.glm_tokenizer.model_file

    def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> List[int]:
        return list(self.glm_tokenizer.encode(string))

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return self.glm_tokenizer.decode(tokens)

    def _layout(self, context: Sequence[int], continuation: Sequence[int]) -> ScoringLayout:
        """The scoring layout, the context cut from the left to fit max_length."""
        room = self.max_length - layout_overhead(self.mask) - (len(continuation) - 1)
        if room < (1 if self.mask == "none" else 0):
            raise InferenceError(f"a continuation of {len(continuation)} tokens does not fit in max_length "
                                 f"{self.max_length} ({self.mask} layout)")
        context = list(context)[len(context) - room:] if len(context) > room else list(context)
        return scoring_layout(context, continuation, self.model.special, mask=self.mask,
                              unidirectional=self.unidirectional, prefix_token=self.prefix_token_id)

    def _score(self, layouts: Sequence[ScoringLayout]) -> List[Tuple[float, bool]]:
        """(summed log-prob of the targets, every target is the argmax) per layout, in batches of
        batch_size sorted longest first (results in input order)."""
        order = sorted(range(len(layouts)), key=lambda i: -len(layouts[i].tokens))
        out: List[Optional[Tuple[float, bool]]] = [None] * len(layouts)
        pad = self.model.special.get("pad", 0)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            tokens, positions, mask, _ = _batch(
                [(layouts[i].tokens, layouts[i].position_ids, layouts[i].attention_mask()) for i in chunk], pad)
            logits = self.model.logits(tokens, positions, mask)
            for b, i in enumerate(chunk):
                layout = layouts[i]
                rows = logits[b, layout.rows].float()
                logprobs = F.log_softmax(rows, dim=-1)
                targets = torch.as_tensor(layout.targets, device=rows.device)
                total = float(logprobs.gather(-1, targets[:, None]).sum())
                greedy = bool((rows.argmax(dim=-1) == targets).all())
                out[i] = (total, greedy)
        return out  # type: ignore[return-value]

    # ---------------------------------------------------------------------------------------------
    # The three request types

    def loglikelihood(self, requests: List[Instance], disable_tqdm: bool = False) -> List[Tuple[float, bool]]:
        """(log p(continuation | context), is greedy) per request. Tokenization follows the harness
        (trailing spaces of the context move to the continuation; the continuation's tokens are
        those of context + continuation after the context's); an empty context is empty here in
        the gmask layout ([gMASK] <sop> continuation) and eos in the causal one."""
        if self.mask == "gmask":
            pairs = []
            for context, continuation in (req.args for req in requests):
                if context == "":
                    pairs.append(((context, continuation), [], self.tok_encode(continuation)))
                else:
                    pairs.append(((context, continuation), *self._encode_pair(context, continuation)))
            return self._loglikelihood_tokens(pairs, disable_tqdm=disable_tqdm)
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> List[Tuple[float, bool]]:
        layouts = []
        for _, context_enc, continuation_enc in requests:
            layouts.append(self._layout(context_enc, continuation_enc))
        results = self._score(layouts)
        for (pair, _, _), result in zip(requests, results):
            if pair is not None:
                self.cache_hook.add_partial("loglikelihood", pair, result)
        return results

    def rolling_windows(self, tokens: Sequence[int]) -> List[Tuple[List[int], List[int]]]:
        """The harness's disjoint rolling windows (get_rolling_token_windows with context_len 1, then
        make_disjoint_window) sized so each window's layout fits max_length; the first window has
        an empty context (gmask) or eos (none)."""
        sentinel = -1
        span = self.max_length - layout_overhead(self.mask)
        windows = []
        for context, prediction in map(make_disjoint_window, get_rolling_token_windows(
                token_list=list(tokens), prefix_token=sentinel, max_seq_len=span, context_len=1)):
            context = [t for t in context if t != sentinel]
            windows.append((context, prediction))
        return windows

    def loglikelihood_rolling(self, requests: List[Instance], disable_tqdm: bool = False) -> List[float]:
        """Log-likelihood of whole documents: the sum over the harness's rolling windows, each scored
        as loglikelihood(window context, window tokens) in the chosen layout."""
        layouts, owners = [], []
        for index, (string,) in enumerate(req.args for req in requests):
            for context, prediction in self.rolling_windows(self.tok_encode(string)):
                layouts.append(self._layout(context, prediction))
                owners.append(index)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, self._score(layouts)):
            totals[owner] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests: List[Instance], disable_tqdm: bool = False) -> List[str]:
        """Greedy generation in the chosen layout, stopping at an end token (eop, eos), at any of the
        request's `until` strings (the text is cut before it) or after `max_gen_toks` tokens."""
        results: List[Optional[str]] = [None] * len(requests)
        groups: Dict[Tuple, List[int]] = {}
        parsed = []
        for index, req in enumerate(requests):
            context, kwargs = req.args
            kwargs = dict(kwargs or {})
            until = kwargs.pop("until", None)
            until = [until] if isinstance(until, str) else list(until or [])
            max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
            if kwargs.pop("do_sample", False) and float(kwargs.get("temperature", 1.0) or 0.0) > 0:
                raise InferenceError("megatron-glm generates greedily only: do_sample=True is not supported")
            parsed.append((context, until, max_new))
            groups.setdefault((max_new,), []).append(index)
        for (max_new,), indices in groups.items():
            indices = sorted(indices, key=lambda i: -len(parsed[i][0]))
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start:start + self.batch_size]
                texts = self._generate([parsed[i][0] for i in chunk], [parsed[i][1] for i in chunk], max_new)
                for i, text in zip(chunk, texts):
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return results  # type: ignore[return-value]

    def _generation_contexts(self, contexts: Sequence[str], max_new: int) -> Tuple[List[Context], int]:
        overhead = layout_overhead(self.mask)
        max_new = min(max_new, self.max_length - overhead - 1)
        if max_new < 1:
            raise InferenceError(f"max_length {self.max_length} leaves no room to generate")
        room = self.max_length - overhead - max_new
        prepared = []
        for text in contexts:
            ids = self.tok_encode(text) if text else []
            ids = ids[len(ids) - room:] if len(ids) > room else ids
            prepared.append(generation_context(ids, self.model.special, max_new, mask=self.mask,
                                               unidirectional=self.unidirectional,
                                               prefix_token=self.prefix_token_id))
        return prepared, max_new

    def _generate(self, contexts: Sequence[str], until: Sequence[Sequence[str]], max_new: int) -> List[str]:
        prepared, max_new = self._generation_contexts(contexts, max_new)
        outputs = greedy_until(self.model, prepared, max_new, stop=lambda b, ids: _cut(self.tok_decode(ids),
                                                                                       until[b]) is not None)
        texts = []
        for b, ids in enumerate(outputs):
            text = self.tok_decode(ids)
            cut = _cut(text, until[b])
            texts.append(text if cut is None else cut)
        return texts


def _cut(text: str, until: Sequence[str]) -> Optional[str]:
    """The text before the earliest stop string, None when none occurs."""
    hits = [text.index(stop) for stop in until if stop and stop in text]
    return text[:min(hits)] if hits else None


def greedy_until(model: InferenceModel, contexts: Sequence[Context], max_new_tokens: int, stop=None,
                 end_tokens: Optional[Sequence[int]] = None) -> List[List[int]]:
    """Greedy decoding of a right-padded batch through the KV cache, as
    megatron_glm.inference.generation.fill does it (its prefill layout, generated rows seeing what
    the last context row sees, done rows fed pad), plus `stop(b, generated_ids) -> bool` checked
    after every token so a batch ends once every sequence hit a stop string. (fill has no stopping
    hook; tests/test_lm_eval_adapter.py checks this loop gives fill's tokens.) Generated ids
    exclude the end token."""
    end_tokens = list(end_tokens) if end_tokens is not None else \
        [model.special[name] for name in ("eop", "eos") if name in model.special]
    batch = len(contexts)
    pad = model.special.get("pad", 0)
    tokens, positions, mask, lengths = _batch([(c.tokens, c.position_ids, c.attention_mask) for c in contexts],
                                              pad)
    cache = model.new_cache(batch, tokens.shape[1] + max_new_tokens)
    device = next(model.model.parameters()).device
    logits = model.extend(cache, tokens, positions, mask, logits_at=torch.tensor(lengths, device=device) - 1)
    row_mask = torch.stack([mask[b, 0, lengths[b] - 1] for b in range(batch)])
    outputs: List[List[int]] = [[] for _ in range(batch)]
    done = [False] * batch
    for step in range(max_new_tokens):
        chosen = logits.argmax(dim=-1).tolist()
        for b in range(batch):
            if done[b]:
                continue
            if chosen[b] in end_tokens:
                done[b] = True
                continue
            outputs[b].append(chosen[b])
            if stop is not None and stop(b, outputs[b]):
                done[b] = True
        if all(done) or step == max_new_tokens - 1:
            break
        feed = torch.tensor([[pad if done[b] else chosen[b]] for b in range(batch)])
        step_positions = torch.tensor([[c.generation_position_ids[step]] for c in contexts])
        step_mask = torch.cat([row_mask, torch.zeros(batch, step + 1, dtype=torch.bool)], dim=1)[:, None, None, :]
        logits = model.extend(cache, feed, step_positions, step_mask)[:, -1]
    return outputs


if __name__ != "__main__":  # under `python -m`, the copy imported below registers
    register_model(MODEL_NAME)(MegatronGLM)


def main(argv: Optional[List[str]] = None) -> None:
    """The harness's command line (`lm_eval ...`) with the megatron-glm model type registered
    (the harness's own `lm_eval` script cannot see model types of other packages)."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0]] + list(argv)
    cli_evaluate()


if __name__ == "__main__":  # run the registered copy of this module, not a second class
    from megatron_glm.integrations.lm_eval import main as _main

    _main()
