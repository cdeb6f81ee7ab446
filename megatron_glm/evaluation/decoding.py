"""Greedy and deterministic beam search over an evaluation sample, with GLM-130B's eval semantics.

This is the evaluation's own decoder over any `logits_fn(tokens, position_ids, attention_mask)`: it
recomputes the whole sequence each step (no KV cache), so it is exact and simple but costs one full
forward per generated token; a task generates at most max_gen_length tokens (5 for LAMBADA).

Semantics (THUDM/GLM-130B evaluation/model.py and generation/strategies.py, docs/evaluation.md):
- the context is padded to a multiple of 32 and generated tokens follow the padding; a generated
  token sees what the context's last row ([sop]) sees plus the earlier generated tokens, at the
  sample's target positions;
- greedy (BaseStrategy with top_k=1): argmax, stop at an end token (eop, eos), which is dropped;
- beam search (BeamSearchStrategy, deterministic): banned ids at every step, end tokens banned
  before min_gen_length, n-gram bans from generated n-grams, log-softmax scores summed, 3 x beams
  candidates (2 end tokens + 1) in score order, end beams scored score / ((5 + len) / 6) ** lp with
  len the full sequence length (padded context + generated + end token), the done test and the
  final ranking as in the original; LAMBADA's banned prefixes ban a prefix's last token on beams
  that end with the rest of it, at the step equal to the prefix length - 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import torch

from megatron_glm.evaluation.samples import GenSample, padded_length

NEG = -65504.0
LogitsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class DecodeOptions:
    strategy: str = "greedy"  # greedy | beam
    max_gen_length: int = 128
    end_tokens: Sequence[int] = ()
    num_beams: int = 4
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 3
    min_gen_length: int = 0
    banned_ids: Sequence[int] = ()
    banned_prefixes: Sequence[Sequence[int]] = field(default_factory=list)


class _Layout:
    """Full padded tokens / positions / mask of one sample for up to max_gen_length new tokens."""

    def __init__(self, sample: GenSample, max_gen_length: int):
        cl = sample.context_length
        self.padded = padded_length([cl])
        total = self.padded + max_gen_length
        self.context = torch.zeros(self.padded, dtype=torch.long)
        self.context[:cl] = torch.from_numpy(sample.tokens)
        self.positions = torch.zeros(total, dtype=torch.long)
        self.positions[:cl] = torch.from_numpy(sample.position_ids)
        self.positions[self.padded:] = torch.from_numpy(sample.target_position_ids[:max_gen_length])
        mask = torch.ones(total, total, dtype=torch.bool)
        mask[:cl, :cl] = torch.from_numpy(sample.attention_mask)
        mask[self.padded:, : self.padded] = mask[cl - 1, : self.padded]
        mask[self.padded:, self.padded:] = ~torch.tril(torch.ones(max_gen_length, max_gen_length, dtype=torch.bool))
        self.mask = mask
        self.last = cl - 1

    def logits(self, logits_fn: LogitsFn, generated: torch.Tensor) -> torch.Tensor:
        """Next-token logits [n, V] for n continuations [n, t] (fp32)."""
        n, t = generated.shape
        tokens = torch.cat([self.context.expand(n, -1), generated], dim=1)
        length = self.padded + t
        positions = self.positions[:length].expand(n, -1)
        mask = self.mask[:length, :length].expand(n, 1, -1, -1)
        out = logits_fn(tokens, positions.contiguous(), mask.contiguous())
        row = self.last if t == 0 else length - 1
        return out[:, row].float().cpu()


def greedy(logits_fn: LogitsFn, sample: GenSample, options: DecodeOptions) -> List[int]:
    layout = _Layout(sample, options.max_gen_length)
    generated: List[int] = []
    for _ in range(options.max_gen_length):
        logits = layout.logits(logits_fn, torch.tensor([generated], dtype=torch.long).reshape(1, -1))[0]
        for banned in options.banned_ids:
            logits[banned] = NEG
        token = int(torch.argmax(logits))
        generated.append(token)
        if token in options.end_tokens:
            generated.pop()
            break
    return generated


def beam_search(logits_fn: LogitsFn, sample: GenSample, options: DecodeOptions) -> List[List[int]]:
    """Every finished beam's generated ids (end token dropped), best first."""
    layout = _Layout(sample, options.max_gen_length)
    context = layout.context.tolist()
    num_beams, lp, ngram = options.num_beams, options.length_penalty, options.no_repeat_ngram_size
    end_tokens = list(options.end_tokens)
    beams: List[List[int]] = [[]]
    scores = torch.zeros(1, dtype=torch.float32)
    bans: List[dict] = [{}]
    end_beams: List[List[int]] = []
    end_scores: List[float] = []
    done = False

    def add_end(score: float, beam: List[int]) -> None:
        score = score / ((5.0 + len(context) + len(beam)) / 6) ** lp
        i = len(end_beams)
        while i > 0 and not score < end_scores[i - 1]:
            i -= 1
        end_beams.insert(i, beam)
        end_scores.insert(i, score)
        del end_beams[num_beams:], end_scores[num_beams:]

    for step in range(options.max_gen_length):
        seq_len = len(context) + step
        logits = layout.logits(logits_fn, torch.tensor(beams, dtype=torch.long).reshape(len(beams), step))
        for prefix in options.banned_prefixes:
            if step == len(prefix) - 1:
                if len(prefix) == 1:
                    logits[:, prefix[0]] = NEG
                else:
                    for j, beam in enumerate(beams):
                        if (context + beam)[-(len(prefix) - 1):] == list(prefix[:-1]):
                            logits[j, prefix[-1]] = NEG
        for banned in options.banned_ids:
            logits[:, banned] = NEG
        if options.min_gen_length > step:
            for end in end_tokens:
                logits[:, end] = NEG
        if ngram > 0 and seq_len > ngram:
            for j, beam in enumerate(beams):
                key = tuple((context + beam)[-(ngram - 1):]) if ngram > 1 else ()
                for banned in bans[j].get(key, ()):
                    logits[j, banned] = NEG
        vocab = logits.shape[-1]
        total = torch.log_softmax(logits, dim=-1) + scores[:, None]
        flat = total.reshape(-1)
        k = (max(1, len(end_tokens)) + 1) * num_beams
        candidates = torch.topk(flat, k=min(k, flat.numel())).indices
        cand_scores, order = torch.sort(flat[candidates], descending=True)
        candidates = candidates[order]
        new_beams, new_scores, new_bans = [], [], []
        for score, index in zip(cand_scores.tolist(), candidates.tolist()):
            source, token = divmod(index, vocab)
            beam = beams[source] + [token]
            if not done and token in end_tokens:
                add_end(score, beam)
            elif len(new_beams) < num_beams:
                new_beams.append(beam)
                new_scores.append(score)
                if ngram > 0:
                    ban = dict(bans[source])
                    key = tuple((context + beams[source])[-(ngram - 1):]) if ngram > 1 else ()
                    ban[key] = ban.get(key, ()) + (token,)
                    new_bans.append(ban)
            else:
                break
        beams, bans = new_beams, new_bans if ngram > 0 else [{} for _ in new_beams]
        scores = torch.tensor(new_scores, dtype=torch.float32)
        if len(end_beams) == num_beams and end_scores[-1] >= float(scores.max()) / ((5.0 + seq_len + 1) / 6) ** lp:
            done = True
        if done:
            break
    if not done:
        for score, beam in zip(scores.tolist(), beams):
            add_end(score, beam)
    out = []
    for beam in end_beams:
        if beam and beam[-1] in end_tokens:
            beam = beam[:-1]
        out.append(beam)
    return out


# ------------------------------------------------------------------------------------------------
# The same decoding through megatron_glm.inference's KV cache (one forward per new token).

def _generation_config(options: DecodeOptions):
    from megatron_glm.inference.generation import GenerationConfig

    return GenerationConfig(  # min_gen_length is a beam-search setting in GLM-130B (its greedy ignores it)
        strategy=options.strategy, max_new_tokens=options.max_gen_length,
        min_new_tokens=options.min_gen_length if options.strategy == "beam" else 0,
        num_beams=options.num_beams, length_penalty=options.length_penalty,
        no_repeat_ngram_size=options.no_repeat_ngram_size, deterministic=True,
        banned_token_ids=list(options.banned_ids), banned_prefixes=[list(p) for p in options.banned_prefixes],
        end_tokens=list(options.end_tokens))


def greedy_cached(model, samples: Sequence[GenSample], options: DecodeOptions) -> List[List[int]]:
    """Greedy continuations of a micro-batch through the inference engine's `fill` (right-padded
    batch, KV cache); the context padding GLM-130B adds changes nothing in greedy decoding."""
    from megatron_glm.inference.generation import Context, fill

    contexts = [Context(tokens=s.tokens.tolist(), position_ids=s.position_ids.tolist(),
                        attention_mask=torch.from_numpy(s.attention_mask),
                        generation_position_ids=s.target_position_ids.tolist()) for s in samples]
    return [candidates[0].tokens for candidates in fill(model, contexts, _generation_config(options))]


def beam_search_cached(model, sample: GenSample, options: DecodeOptions) -> List[List[int]]:
    """beam_search() through the inference engine's KV cache and its BeamSearch (GLM-130B's
    strategy). The context is padded to a multiple of 32 as GLM-130B's evaluation pads it, because
    the length penalty and the n-gram test count the padded sequence."""
    from megatron_glm.inference.generation import BeamSearch

    layout = _Layout(sample, options.max_gen_length)
    padded, cl = layout.padded, sample.context_length
    tokens = layout.context[None]
    positions = layout.positions[None, :padded]
    mask = layout.mask[:padded, :padded].clone()
    for row in range(cl, padded):  # padding rows attend to themselves only (they are never read)
        mask[row, row] = False
    cache = model.new_cache(1, padded + options.max_gen_length)
    logits = model.extend(cache, tokens, positions, mask[None, None], logits_at=torch.tensor([cl - 1])).float().cpu()
    row_mask = layout.mask[cl - 1, :padded]
    search = BeamSearch(_generation_config(options), list(options.end_tokens), torch.Generator().manual_seed(0))
    beams = [layout.context.tolist()]
    for step in range(options.max_gen_length):
        beams, parents = search.forward(logits, beams)
        if search.is_done or step == options.max_gen_length - 1:
            break
        cache.reorder(parents)
        width = len(beams)
        feed = torch.tensor([[beam[-1]] for beam in beams])
        position = torch.full((width, 1), int(sample.target_position_ids[step]), dtype=torch.long)
        rows = torch.cat([row_mask.expand(width, -1), torch.zeros(width, step + 1, dtype=torch.bool)], dim=1)
        logits = model.extend(cache, feed, position, rows[:, None, None, :])[:, -1].float().cpu()
    out = []
    for beam, _ in search.finalize(beams):
        generated = beam[padded:]
        if generated and generated[-1] in options.end_tokens:
            generated = generated[:-1]
        out.append(generated)
    return out
