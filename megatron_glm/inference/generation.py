"""GLM-130B's generation: blank infilling and continuation with a KV cache (docs/generation.md).

Two levels:

- `generate(model, input_ids, config) -> GenerationResult` (and `generate_batch`) follow GLM-130B's
  `generate.py`: the mask is [MASK] if present, else [sMASK], else [gMASK] (appended when the
  input holds no mask); `eos` is appended when the input does not end with a mask; blanks of the
  chosen kind are filled left to right, each with its own prefill of `sequence + [<sop>]`; the
  generated tokens of a [MASK]/[sMASK] blank all take the mask's position id, those of a [gMASK]
  blank continue the positions (0..n-1, <sop> at n, then n+1, ...); the context is bidirectional,
  <sop> and the generated tokens causal; each blank's tokens replace its mask.
- `fill(model, contexts, config)` is GLM-130B's `batch_filling_sequence` on prepared contexts
  (tokens ending in <sop>, position ids, a [cl, cl] mask and the generated tokens' position ids),
  right-padded into one batch; glm-eval builds its `gen` samples and calls it.

Strategies (GLM-130B `generation/strategies.py`): greedy; sampling (temperature, banned ids set to
-65504, top-k, top-p, multinomial with a seeded generator); beam search (BeamSearchStrategy:
length penalty ((5 + len) / 6) ** lp on the full sequence length, n-gram bans from generated
tokens, min_gen_length counted in generated tokens, candidates 3 x num_beams by top-k when
`deterministic` (GLM-130B's evaluation) or multinomial (its generate.py), end beams kept sorted,
live beams added at the end with consider_end). Generation stops on an end token (eop, eos).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from megatron_glm.inference.model import InferenceError, InferenceModel

FILTER_VALUE = -65504.0
"""What GLM-130B writes into banned logits (fp16's lowest finite value)."""

STRATEGIES = ("greedy", "sample", "beam")


@dataclass
class GenerationConfig:
    strategy: str = "greedy"
    """greedy | sample | beam."""
    max_new_tokens: int = 128
    """Per blank, end token included; also bounded by the model's sequence length."""
    min_new_tokens: int = 0
    """End tokens are banned until this many tokens were generated (beam: GLM's min_gen_length)."""
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.0
    seed: int = 1234
    num_beams: int = 4
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    """Beam search only (GLM-130B's BeamSearchStrategy)."""
    deterministic: bool = True
    """Beam search: candidates by top-k (GLM-130B's evaluation) or sampled (its generate.py)."""
    banned_token_ids: Sequence[int] = ()
    """Logits set to -65504 at every step (GLM's invalid_slices)."""
    banned_prefixes: Sequence[Sequence[int]] = ()
    """Beam search: a prefix of m tokens cannot start the generation (LAMBADA's banned_prefix)."""
    end_tokens: Optional[Sequence[int]] = None
    """Default: the model's eop and eos."""

    def check(self) -> None:
        if self.strategy not in STRATEGIES:
            raise InferenceError(f"unknown strategy {self.strategy!r}; choose from {', '.join(STRATEGIES)}")
        if self.max_new_tokens < 1:
            raise InferenceError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.strategy == "sample" and self.temperature <= 0:
            raise InferenceError(f"temperature must be positive, got {self.temperature}")
        if self.strategy == "beam" and self.num_beams < 1:
            raise InferenceError(f"num_beams must be at least 1, got {self.num_beams}")
        if not 0.0 <= self.top_p <= 1.0 or self.top_k < 0:
            raise InferenceError(f"top_p must be in [0, 1] and top_k >= 0, got {self.top_p}, {self.top_k}")


@dataclass
class Context:
    """One prepared generation input (GLM-130B's layout, docs/generation.md)."""

    tokens: List[int]
    """The context, ending with <sop>."""
    position_ids: List[int]
    attention_mask: torch.Tensor
    """bool [cl, cl], True = masked; the generated tokens see what the last (<sop>) row sees."""
    generation_position_ids: List[int]
    """Position id of generated token k, for k < max_new_tokens."""


@dataclass
class Candidate:
    tokens: List[int]
    """Generated ids, the end token excluded."""
    score: Optional[float] = None
    """Beam search: the length-penalised log-probability."""
    ended: bool = False
    """Whether an end token closed it."""


@dataclass
class GenerationResult:
    input_ids: List[int]
    """What the model was fed for the first blank: the prepared sequence plus <sop>."""
    blanks: List[List[int]]
    """Each blank's generated ids, left to right, end token excluded."""
    output_ids: List[int]
    """The sequence with every blank filled (a trailing eos removed, as GLM-130B prints it)."""
    mask: str = "gmask"
    """Which mask was filled: mask | smask | gmask."""
    beams: List[Candidate] = field(default_factory=list)
    """Beam search: every final beam of the last blank, best first."""


# -------------------------------------------------------------------------------------------------
# Layout (GLM-130B generate.py)


def prepare_input(input_ids: Sequence[int], special: Dict[str, int]) -> Tuple[List[int], str]:
    """(sequence, mask kind): [gMASK] appended if no mask, eos appended unless it ends with a mask."""
    for name in ("mask", "smask", "gmask", "sop"):
        if name not in special:
            raise InferenceError(f"the special token {name!r} has no id; pass --special-token-ids {name}=ID")
    masks = {special["mask"]: "mask", special["smask"]: "smask", special["gmask"]: "gmask"}
    seq = [int(t) for t in input_ids]
    kind = "mask" if special["mask"] in seq else "smask" if special["smask"] in seq else "gmask"
    if not any(t in masks for t in seq):
        seq.append(special["gmask"])
    if seq[-1] not in masks:
        if "eos" not in special:
            raise InferenceError("the input does not end with a mask, so GLM appends eos, which has no id; "
                                 "pass --special-token-ids eos=ID")
        seq.append(special["eos"])
    return seq, kind


def blank_context(seq: Sequence[int], mask_position: int, gmask: bool, sop: int, max_new_tokens: int) -> Context:
    """GLM-130B's get_masks_and_position_ids for `seq + [sop]` with the blank at mask_position."""
    tokens = list(seq) + [sop]
    cl = len(tokens)
    positions = list(range(cl))
    if gmask:
        generated = list(range(cl, cl + max_new_tokens))
    else:
        positions[cl - 1] = mask_position
        generated = [mask_position] * max_new_tokens
    visible = torch.ones(cl, cl, dtype=torch.bool).tril()
    visible[:, : cl - 1] = True
    return Context(tokens, positions, ~visible, generated)


# -------------------------------------------------------------------------------------------------
# Strategies


def _process_logits(logits: torch.Tensor, config: GenerationConfig, generated: int, end_tokens) -> torch.Tensor:
    logits = logits.float().clone()
    for token in config.banned_token_ids:
        logits[..., token] = FILTER_VALUE
    if config.min_new_tokens > generated:
        for token in end_tokens:
            logits[..., token] = FILTER_VALUE
    return logits


def _top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """SAT's top_k_logits, row by row (GLM-130B's top-p path works at batch 1 only)."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1)))[0][..., -1, None]
        logits = logits.masked_fill(logits < kth, FILTER_VALUE)
    if top_p > 0.0:
        sorted_logits, sorted_indices = torch.sort(logits, descending=True, dim=-1)
        cumulative = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
        remove = cumulative > top_p
        remove[..., 1:] = remove[..., :-1].clone()
        remove[..., 0] = False
        logits = logits.masked_fill(remove.scatter(-1, sorted_indices, remove), FILTER_VALUE)
    return logits


class BeamSearch:
    """GLM-130B's BeamSearchStrategy for one sequence; forward returns the parent beam of each kept
    beam so the caller can reorder its KV cache."""

    def __init__(self, config: GenerationConfig, end_tokens: Sequence[int], generator: torch.Generator):
        self.num_beams = config.num_beams
        self.length_penalty = config.length_penalty
        self.end_tokens = list(end_tokens)
        self.ngram = config.no_repeat_ngram_size
        self.min_gen_length = config.min_new_tokens
        self.invalid = list(config.banned_token_ids)
        self.banned_prefixes = [list(p) for p in config.banned_prefixes if len(p)]
        self.deterministic = config.deterministic
        self.generator = generator
        self.end_beams: List[List[int]] = []
        self.end_scores: List[float] = []
        self.scores: Optional[torch.Tensor] = None
        self.bans: List[Dict[tuple, tuple]] = [{}]
        self.length_generated = 0
        self.is_done = False

    def _penalty(self, length: int) -> float:
        return ((5.0 + length) / 6) ** self.length_penalty

    def _add_end_beam(self, score: float, beam: List[int]) -> None:
        score = score / self._penalty(len(beam))
        i = len(self.end_beams)
        while i > 0 and not score < self.end_scores[i - 1]:
            i -= 1
        self.end_beams.insert(i, beam)
        self.end_scores.insert(i, score)
        del self.end_beams[self.num_beams:], self.end_scores[self.num_beams:]

    def forward(self, logits: torch.Tensor, beams: List[List[int]]) -> Tuple[List[List[int]], List[int]]:
        """logits [beams, V] for the current beams (full token lists) -> (new beams, parents)."""
        num_beams, vocab = logits.shape
        seq_len = len(beams[0])
        logits = logits.float().clone()
        for prefix in self.banned_prefixes:
            if self.length_generated == len(prefix) - 1:
                for j, beam in enumerate(beams):
                    if len(prefix) == 1 or beam[-(len(prefix) - 1):] == prefix[:-1]:
                        logits[j, prefix[-1]] = FILTER_VALUE
        for token in self.invalid:
            logits[..., token] = FILTER_VALUE
        if self.min_gen_length > self.length_generated:
            for token in self.end_tokens:
                logits[..., token] = FILTER_VALUE
        if self.ngram > 0 and seq_len > self.ngram:
            for j, beam in enumerate(beams):
                for banned in self.bans[j].get(_ngram_prefix(beam, self.ngram), ()):
                    logits[j, banned] = FILTER_VALUE
        scores = F.log_softmax(logits, dim=-1)
        if self.scores is not None:
            scores = scores + self.scores[:, None]
        scores = scores.reshape(num_beams * vocab)
        probs = F.softmax(scores, dim=-1)
        if num_beams < self.num_beams:  # the first step: one beam (GLM-130B's test)
            probs = probs[:vocab]
        k = min((max(1, len(self.end_tokens)) + 1) * self.num_beams, probs.numel())
        if self.deterministic:
            candidates = torch.topk(probs, k).indices
        else:
            candidates = torch.multinomial(probs, k, generator=self.generator)
        candidate_scores = scores[candidates]
        candidate_scores, order = torch.sort(candidate_scores, descending=True)
        candidates = candidates[order]
        parents = torch.div(candidates, vocab, rounding_mode="trunc").tolist()
        tokens = (candidates % vocab).tolist()
        kept, kept_parents, kept_scores, kept_bans = [], [], [], []
        for parent, token, score in zip(parents, tokens, candidate_scores.tolist()):
            beam = beams[parent] + [token]
            if not self.is_done and token in self.end_tokens:
                self._add_end_beam(score, beam)
            elif len(kept) < self.num_beams:
                kept.append(beam)
                kept_parents.append(parent)
                kept_scores.append(score)
                if self.ngram > 0:
                    bans = dict(self.bans[parent])
                    prefix = _ngram_prefix(beams[parent], self.ngram)
                    bans[prefix] = bans.get(prefix, ()) + (token,)
                    kept_bans.append(bans)
            else:
                break
        self.scores = torch.tensor(kept_scores, dtype=torch.float32)
        self.bans = kept_bans if self.ngram > 0 else [{} for _ in kept]
        self.length_generated += 1
        if len(self.end_beams) == self.num_beams and \
                self.end_scores[-1] >= float(self.scores.max()) / self._penalty(seq_len + 1):
            self.is_done = True
        return kept, kept_parents

    def finalize(self, beams: List[List[int]]) -> List[Tuple[List[int], float]]:
        """consider_end: live beams join the end beams with their (penalised) scores."""
        if not self.is_done:
            for beam, score in zip(beams, self.scores.tolist()):
                self._add_end_beam(score, beam)
        return list(zip(self.end_beams, self.end_scores))


def _ngram_prefix(beam: List[int], n: int) -> tuple:
    # GLM-130B takes tokens[-(n - 1):], which for n = 1 is the whole sequence (never repeats).
    return tuple(beam[-(n - 1):])


# -------------------------------------------------------------------------------------------------
# The decode loop (GLM-130B batch_filling_sequence)


def _end_tokens(model: InferenceModel, config: GenerationConfig) -> List[int]:
    if config.end_tokens is not None:
        return [int(t) for t in config.end_tokens]
    return [model.special[name] for name in ("eop", "eos") if name in model.special]


def _prefill(model: InferenceModel, contexts: List[Context], max_new: int):
    batch = len(contexts)
    lengths = [len(c.tokens) for c in contexts]
    padded = max(lengths)
    tokens = torch.zeros(batch, padded, dtype=torch.long)
    positions = torch.zeros(batch, padded, dtype=torch.long)
    mask = torch.ones(batch, 1, padded, padded, dtype=torch.bool)
    for b, c in enumerate(contexts):
        cl = lengths[b]
        if len(c.position_ids) != cl or tuple(c.attention_mask.shape) != (cl, cl):
            raise InferenceError(f"context {b}: {cl} tokens, {len(c.position_ids)} position ids, mask "
                                 f"{tuple(c.attention_mask.shape)}")
        if len(c.generation_position_ids) < max_new:
            raise InferenceError(f"context {b}: {len(c.generation_position_ids)} generation position ids for "
                                 f"{max_new} new tokens")
        tokens[b, :cl] = torch.as_tensor(c.tokens)
        positions[b, :cl] = torch.as_tensor(c.position_ids)
        mask[b, 0, :cl, :cl] = c.attention_mask
        for row in range(cl, padded):  # padding rows see themselves only (no empty softmax row)
            mask[b, 0, row, row] = False
    cache = model.new_cache(batch, padded + max_new)
    # decisions are made on the CPU (seeded CPU generator; logits are [b, V])
    logits = model.extend(cache, tokens, positions, mask, logits_at=torch.tensor(lengths) - 1).cpu()
    # generated rows see what the last context row (<sop>) sees, padding columns masked
    row_mask = torch.stack([mask[b, 0, lengths[b] - 1] for b in range(batch)])
    return cache, logits, row_mask


def fill(model: InferenceModel, contexts: List[Context], config: GenerationConfig,
         generator: Optional[torch.Generator] = None) -> List[List[Candidate]]:
    """Generate after each prepared context; per context the candidates, best first (one for
    greedy/sampling; every final beam for beam search, which runs one context at a time).
    Sampling draws from `generator` (default: a new one seeded with config.seed)."""
    config.check()
    if not contexts:
        return []
    generator = generator or torch.Generator().manual_seed(config.seed)
    if config.strategy == "beam":
        return [_beam_fill(model, c, config, generator) for c in contexts]
    end_tokens = _end_tokens(model, config)
    max_new = config.max_new_tokens
    cache, logits, row_mask = _prefill(model, contexts, max_new)
    batch = len(contexts)
    outputs: List[List[int]] = [[] for _ in range(batch)]
    done = [False] * batch
    ended = [False] * batch
    for step in range(max_new):
        if config.strategy == "greedy":
            chosen = _process_logits(logits, config, step, end_tokens).argmax(dim=-1)
        else:  # GLM-130B's order: temperature, banned ids, top-k, top-p, softmax in fp32, multinomial
            logits = _process_logits(logits.float() / config.temperature, config, step, end_tokens)
            logits = _top_k_top_p(logits, config.top_k, config.top_p)
            chosen = torch.multinomial(F.softmax(logits.float(), dim=-1), 1, generator=generator)[:, 0]
        for b in range(batch):
            if done[b]:
                continue
            token = int(chosen[b])
            if token in end_tokens:
                done[b] = ended[b] = True
            else:
                outputs[b].append(token)
        if all(done) or step == max_new - 1:
            break
        feed = torch.tensor([[model.special.get("pad", 0) if done[b] else int(chosen[b])] for b in range(batch)])
        positions = torch.tensor([[c.generation_position_ids[step]] for c in contexts])
        mask = torch.cat([row_mask, torch.zeros(batch, step + 1, dtype=torch.bool)], dim=1)[:, None, None, :]
        logits = model.extend(cache, feed, positions, mask)[:, -1].cpu()
    return [[Candidate(outputs[b], None, ended[b])] for b in range(batch)]


def _beam_fill(model: InferenceModel, context: Context, config: GenerationConfig,
               generator: torch.Generator) -> List[Candidate]:
    end_tokens = _end_tokens(model, config)
    max_new = config.max_new_tokens
    search = BeamSearch(config, end_tokens, generator)
    cache, logits, row_mask = _prefill(model, [context], max_new)
    beams = [list(context.tokens)]
    for step in range(max_new):
        beams, parents = search.forward(logits, beams)
        if search.is_done or step == max_new - 1:
            break
        cache.reorder(parents)
        width = len(beams)
        feed = torch.tensor([[beam[-1]] for beam in beams])
        positions = torch.full((width, 1), context.generation_position_ids[step], dtype=torch.long)
        mask = torch.cat([row_mask.expand(width, -1), torch.zeros(width, step + 1, dtype=torch.bool)], dim=1)
        logits = model.extend(cache, feed, positions, mask[:, None, None, :])[:, -1].cpu()
    cl = len(context.tokens)
    out = []
    for beam, score in search.finalize(beams):
        generated = beam[cl:]
        ended = bool(generated) and generated[-1] in end_tokens
        out.append(Candidate(generated[:-1] if ended else generated, score, ended))
    return out


# -------------------------------------------------------------------------------------------------
# GLM-130B generate.py


def _room(model: InferenceModel, seq_len: int, config: GenerationConfig) -> int:
    room = model.max_sequence_length - (seq_len + 1)
    if room < 1:
        raise InferenceError(f"the prompt takes {seq_len + 1} of the model's {model.max_sequence_length} positions "
                             f"(<sop> included): no room to generate")
    return min(config.max_new_tokens, room)


def generate_batch(model: InferenceModel, prompts: Sequence[Sequence[int]], config: GenerationConfig,
                   ) -> List[GenerationResult]:
    """generate() for several prompts: in each round every prompt with a blank left gets its next
    blank filled, greedy/sampling as one right-padded batch (beam search one prompt at a time)."""
    config.check()
    special = model.special
    prepared = [prepare_input(p, special) for p in prompts]
    seqs = [seq for seq, _ in prepared]
    kinds = [kind for _, kind in prepared]
    for seq in seqs:
        _room(model, len(seq), config)
    first_inputs = [seq + [special["sop"]] for seq in seqs]
    generator = torch.Generator().manual_seed(config.seed)  # one stream for every blank, as one seed
    blanks: List[List[List[int]]] = [[] for _ in prompts]
    beams: List[List[Candidate]] = [[] for _ in prompts]
    while True:
        active = [i for i, seq in enumerate(seqs) if special[kinds[i]] in seq]
        if not active:
            break
        contexts, limits = [], []
        for i in active:
            max_new = _room(model, len(seqs[i]), config)
            limits.append(max_new)
            position = seqs[i].index(special[kinds[i]])
            contexts.append(blank_context(seqs[i], position, kinds[i] == "gmask", special["sop"], max_new))
        groups = [(contexts, limits, active)]
        if config.strategy != "beam" and len(set(limits)) > 1:  # same budget per batch
            groups = [([c for c, l in zip(contexts, limits) if l == limit], [limit],
                       [i for i, l in zip(active, limits) if l == limit]) for limit in sorted(set(limits))]
        for group_contexts, group_limits, group_ids in groups:
            if config.strategy == "beam":
                results = [fill(model, [c], _with(config, max_new_tokens=l), generator)[0]
                           for c, l in zip(group_contexts, group_limits)]
            else:
                results = fill(model, group_contexts, _with(config, max_new_tokens=group_limits[0]), generator)
            for i, candidates in zip(group_ids, results):
                best = candidates[0].tokens
                position = seqs[i].index(special[kinds[i]])
                seqs[i] = seqs[i][:position] + best + seqs[i][position + 1:]
                blanks[i].append(best)
                beams[i] = candidates if config.strategy == "beam" else []
    out = []
    for i, seq in enumerate(seqs):
        if seq and "eos" in special and seq[-1] == special["eos"]:
            seq = seq[:-1]
        out.append(GenerationResult(first_inputs[i], blanks[i], seq, kinds[i], beams[i]))
    return out


def generate(model: InferenceModel, input_ids: Sequence[int], config: GenerationConfig) -> GenerationResult:
    """Fill every blank of one prompt (token ids, specials by the model's ids) as GLM-130B's
    generate.py does; see the module docstring."""
    return generate_batch(model, [input_ids], config)[0]


def _with(config: GenerationConfig, **changes) -> GenerationConfig:
    from dataclasses import replace

    return replace(config, **changes)
