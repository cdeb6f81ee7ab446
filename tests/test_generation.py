"""The inference engine against the float64 reference: full forward, KV cache, GLM-130B's generation
layouts ([MASK]/[sMASK]/[gMASK], several blanks), batching, sampling and a hand-checked beam search."""

from __future__ import annotations

import math

import pytest
import torch

from generation_fixtures import SPECIAL, reference, reference_generate, tiny_shape, tiny_weights, write_safetensors
from megatron_glm.inference import (Context, GenerationConfig, InferenceError, generate, generate_batch,
                                    load_inference_model, parse_special_token_ids)
from megatron_glm.inference.generation import blank_context, fill, prepare_input

VOCAB = 128
TIGHT = 3e-4
"""fp32 round-off at logits of about 10 (a one-token GEMV vs the sequence's GEMM): 3e-5 relative.
Measured: up to 1e-4, the same size as the full forward's own distance from the float64 reference."""
M, S, G, EOS, SOP = SPECIAL["mask"], SPECIAL["smask"], SPECIAL["gmask"], SPECIAL["eos"], SPECIAL["sop"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    glm = tiny_shape(VOCAB)
    weights = tiny_weights(glm)
    path = write_safetensors(tmp_path_factory.mktemp("gen") / "tiny", glm, weights)
    model = load_inference_model(str(path), special_token_ids=SPECIAL, max_sequence_length=64)
    yield model, weights
    model.close()


def _text(n: int, seed: int) -> list:
    return torch.randint(10, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_logits_equal_the_float64_reference(tiny):
    model, weights = tiny
    context = blank_context(_text(9, 1) + [M] + _text(4, 2), 9, False, SOP, 8)
    tokens = torch.tensor([context.tokens])
    logits = model.logits(tokens, torch.tensor([context.position_ids]), context.attention_mask[None, None])
    assert logits.dtype == torch.float32 and logits.shape == (1, len(context.tokens), VOCAB)
    expected = reference(weights, context.tokens, context.position_ids, context.attention_mask)
    assert torch.allclose(logits[0].double(), expected, atol=1e-3, rtol=0)  # fp32 vs fp64, logits ~10


@pytest.mark.parametrize("gmask", [False, True])
def test_kv_cache_decode_equals_full_forward(tiny, gmask):
    """Prefill a right-padded batch of two contexts, then decode one token per step: every step's
    logits equal the full forward of the whole sequence at that row."""
    model, _ = tiny
    steps = 6
    prompts = [_text(11, 3) + [G if gmask else M] + _text(3, 4), _text(5, 5) + [G if gmask else M]]
    contexts = [blank_context(p, p.index(G if gmask else M), gmask, SOP, steps) for p in prompts]
    lengths = [len(c.tokens) for c in contexts]
    padded = max(lengths)
    total = padded + steps
    generated = torch.tensor([_text(steps, 6), _text(steps, 7)])
    tokens = torch.zeros(2, total, dtype=torch.long)
    positions = torch.zeros(2, total, dtype=torch.long)
    mask = torch.ones(2, 1, total, total, dtype=torch.bool)
    for b, c in enumerate(contexts):
        cl = lengths[b]
        tokens[b, :cl], positions[b, :cl] = torch.tensor(c.tokens), torch.tensor(c.position_ids)
        mask[b, 0, :cl, :cl] = c.attention_mask
        tokens[b, padded:] = generated[b]
        positions[b, padded:] = torch.tensor(c.generation_position_ids[:steps])
        for row in range(cl, padded):
            mask[b, 0, row, row] = False
        for t in range(steps):
            mask[b, 0, padded + t, :padded] = mask[b, 0, cl - 1, :padded]
            mask[b, 0, padded + t, padded:padded + t + 1] = False
    full = model.logits(tokens, positions, mask)

    cache = model.new_cache(2, total)
    last = model.extend(cache, tokens[:, :padded], positions[:, :padded], mask[:, :, :padded, :padded],
                        logits_at=torch.tensor(lengths) - 1)
    assert torch.allclose(last, full[torch.arange(2), torch.tensor(lengths) - 1], atol=TIGHT, rtol=0)
    for t in range(steps):
        column = padded + t
        step = model.extend(cache, tokens[:, column:column + 1], positions[:, column:column + 1],
                            mask[:, :, column:column + 1, :column + 1])
        assert step.shape == (2, 1, VOCAB)
        assert torch.allclose(step[:, 0], full[:, column], atol=TIGHT, rtol=0), t
    assert cache.length == total


def test_layouts_follow_glm_130b():
    """generate.py's layouts (docs/generation.md): positions of <sop> and generated tokens, masks."""
    seq, kind = prepare_input([11, 12, M, 13], SPECIAL)
    assert (seq, kind) == ([11, 12, M, 13, EOS], "mask")
    c = blank_context(seq, 2, False, SOP, 3)
    assert c.tokens == [11, 12, M, 13, EOS, SOP]
    assert c.position_ids == [0, 1, 2, 3, 4, 2] and c.generation_position_ids == [2, 2, 2]
    visible = ~c.attention_mask
    assert visible[:5, :5].all() and not visible[:5, 5].any() and visible[5].all()
    assert prepare_input([11, 12], SPECIAL) == ([11, 12, G], "gmask")
    c = blank_context([11, 12, G], 2, True, SOP, 3)
    assert c.position_ids == [0, 1, 2, 3] and c.generation_position_ids == [4, 5, 6]
    assert prepare_input([11, S, 12, S], SPECIAL) == ([11, S, 12, S], "smask")
    assert prepare_input([11, G, 12, M, 13], SPECIAL) == ([11, G, 12, M, 13, EOS], "mask")
    assert prepare_input([11, G, 12], SPECIAL) == ([11, G, 12, EOS], "gmask")


@pytest.mark.parametrize("prompt", [
    [21, 22, 23, M, 24, 25, M, 26],   # two [MASK] blanks, eos appended
    [21, 22, S, 23, 24, S],           # two [sMASK] blanks, ends with a mask: no eos
    [21, 22, 23, 24],                 # [gMASK] appended
    [21, G, 22, 23],                  # [gMASK] inside the text, eos appended
    [21, G, 22, M, 23],               # [MASK] wins; the [gMASK] stays a literal token
], ids=["mask-2-blanks", "smask", "gmask-appended", "gmask-inside", "mask-over-gmask"])
def test_greedy_generation_equals_the_float64_reference(tiny, prompt):
    model, weights = tiny
    result = generate(model, prompt, GenerationConfig(max_new_tokens=4))
    expected = reference_generate(weights, prompt, 4)
    assert {"input_ids": result.input_ids, "blanks": result.blanks, "output_ids": result.output_ids} == expected
    assert len(result.blanks) == sum(t == {"mask": M, "smask": S, "gmask": G}[result.mask] for t in prompt) or \
        result.mask == "gmask"


def test_batch_equals_one_prompt_at_a_time(tiny):
    model, _ = tiny
    prompts = [[21, 22, 23, M, 24, 25, M, 26], _text(17, 8), [30, S, 31]]
    config = GenerationConfig(max_new_tokens=5)
    batched = generate_batch(model, prompts, config)
    assert [r.blanks for r in batched] == [generate(model, p, config).blanks for p in prompts]


def test_sampling_is_seeded_and_top_k_1_is_greedy(tiny):
    model, _ = tiny
    prompt = _text(8, 9)
    greedy = generate(model, prompt, GenerationConfig(max_new_tokens=6)).blanks
    top1 = generate(model, prompt, GenerationConfig("sample", max_new_tokens=6, top_k=1, temperature=0.7)).blanks
    assert top1 == greedy
    sample = GenerationConfig("sample", max_new_tokens=6, temperature=1.5, top_p=0.9, seed=3)
    assert generate(model, prompt, sample).blanks == generate(model, prompt, sample).blanks
    banned = generate(model, prompt, GenerationConfig(max_new_tokens=6, banned_token_ids=greedy[0][:1])).blanks
    assert banned[0][:1] != greedy[0][:1]


def test_no_room_to_generate(tiny):
    model, _ = tiny
    with pytest.raises(InferenceError, match="no room to generate"):
        generate(model, _text(63, 1), GenerationConfig())
    assert len(generate(model, _text(61, 1), GenerationConfig(max_new_tokens=9)).blanks[0]) <= 1


def test_special_token_ids_parse_eos():
    assert parse_special_token_ids("mask=3,eos=2") == {"mask": 3, "eos": 2}
    with pytest.raises(InferenceError):
        parse_special_token_ids("bos=1")


# -------------------------------------------------------------------------------------------------
# Beam search by hand: a fake model whose next-token distribution depends on the last token only.

END = 4


class ChainModel:
    """new_cache/extend of InferenceModel over a Markov chain: logits = log P(next | last token)."""

    def __init__(self, table):
        self.table = {k: torch.tensor(v, dtype=torch.float64).log().float() for k, v in table.items()}
        self.special = {"eop": END}

    def new_cache(self, batch_size, max_length):
        class Cache:
            def reorder(self, index):
                pass
        return Cache()

    def extend(self, cache, tokens, position_ids, attention_mask, logits_at=None):
        if logits_at is not None:
            return torch.stack([self.table[int(tokens[b, i])] for b, i in enumerate(logits_at.tolist())])
        return torch.stack([self.table[int(t)] for t in tokens[:, -1]])[:, None]


#             token:   0     1     2     3    END
CHAIN = {0: [0.04, 0.50, 0.21, 0.06, 0.19],   # after <sop> (= token 0)
         1: [0.07, 0.15, 0.10, 0.08, 0.60],
         2: [0.05, 0.70, 0.10, 0.05, 0.10],
         3: [0.2, 0.2, 0.2, 0.2, 0.2]}


def _beam(model, max_new, **options):
    context = Context([1, 2, 0], [0, 1, 2], torch.zeros(3, 3, dtype=torch.bool), [3] * max_new)
    config = GenerationConfig("beam", max_new_tokens=max_new, end_tokens=[END], **options)
    return [(c.tokens, round(c.score, 4), c.ended) for c in fill(model, [context], config)[0]]


def test_beam_search_hand_checked():
    """num_beams 2, 4 candidates a step, penalty ((5 + len) / 6) on the full length (context 3).

    Step 1: candidates 1 (.5), 2 (.21), END (.19), 3: beams [1] and [2]; end beam [END] with
    log .19 / (9/6) = -1.1072. Step 2: [1, END] log(.5 * .6) / (10/6) = -0.7224 joins the end
    beams first; [2, 1] (log .147 = -1.9173) and [1, 1] (log .075) continue. Done: the worst end
    beam -1.1072 >= -1.9173 / (10/6) = -1.1504, so the result is [1] then [] (both ended).
    """
    chain = ChainModel(CHAIN)
    assert _beam(chain, 5, num_beams=2) == [([1], round(math.log(0.3) / (10 / 6), 4), True),
                                            ([], round(math.log(0.19) / 1.5, 4), True)]
    # Stopped after one token: live beams join the end beams (consider_end) with their scores.
    assert _beam(chain, 1, num_beams=2) == [([1], round(math.log(0.5) / 1.5, 4), False),
                                            ([2], round(math.log(0.21) / 1.5, 4), False)]


def test_beam_search_ngram_ban_and_min_length():
    table = {0: [0.01, 0.9, 0.04, 0.04, 0.01], 1: [0.02, 0.8, 0.15, 0.02, 0.01], 2: [0.02, 0.02, 0.02, 0.04, 0.9],
             3: [0.25, 0.25, 0.25, 0.24, 0.01]}
    chain = ChainModel(table)
    assert _beam(chain, 4, num_beams=1)[0][0] == [1, 1, 1, 1]
    # the bigram (1, 1) exists after step 2, so step 3 cannot repeat it: 2, then END
    tokens, _, ended = _beam(chain, 6, num_beams=1, no_repeat_ngram_size=2)[0]
    assert (tokens, ended) == ([1, 1, 2], True)
    # END is banned until 4 tokens exist: after 2 comes the next best, 3
    tokens, _, _ = _beam(chain, 4, num_beams=1, no_repeat_ngram_size=2, min_new_tokens=4)[0]
    assert tokens == [1, 1, 2, 3]
    # LAMBADA's banned prefixes: a generation cannot start with token 1
    assert _beam(chain, 2, num_beams=1, banned_prefixes=[[1]])[0][0][0] != 1


def test_beam_search_on_the_model(tiny):
    model, weights = tiny
    prompt = _text(10, 11)
    result = generate(model, prompt, GenerationConfig("beam", max_new_tokens=4, num_beams=3, no_repeat_ngram_size=3))
    assert result.blanks[0] == result.beams[0].tokens and len(result.beams) == 3
    scores = [b.score for b in result.beams]
    assert scores == sorted(scores, reverse=True)
    one_beam = generate(model, prompt, GenerationConfig("beam", max_new_tokens=4, num_beams=1))
    greedy = reference_generate(weights, prompt, 4)["blanks"]
    assert one_beam.blanks == greedy or one_beam.beams[0].ended


# -------------------------------------------------------------------------------------------------
# Checkpoint formats and GLM-130B's fp16 rotary angles


def test_every_format_loads_and_sat_defaults_to_fp16_angles(tiny, tmp_path):
    """The same weights as dist (TP2 x PP1 on disk) and SAT (TP2 on disk) give the safetensors
    model's logits; a SAT checkpoint (GLM-130B's layout) uses fp16 rotary angles unless asked."""
    from checkpoints.convert import ReadOptions, convert
    from checkpoints.formats.base import WriteOptions

    model, _ = tiny
    source = model.source
    convert(source, str(tmp_path / "dist"), "dist", WriteOptions(tp=2), progress=False)
    convert(source, str(tmp_path / "sat"), "sat", WriteOptions(tp=2), ReadOptions(num_attention_heads=4),
            progress=False)
    context = blank_context(_text(40, 12) + [G], 40, True, SOP, 4)
    inputs = (torch.tensor([context.tokens]), torch.tensor([context.position_ids]), context.attention_mask[None, None])
    expected = model.logits(*inputs)
    for path, options, rope in [(tmp_path / "dist", {}, "fp32"), (tmp_path / "sat", {"rope_precision": "fp32"}, "fp32"),
                                (tmp_path / "sat", {}, "fp16")]:
        other = load_inference_model(str(path), special_token_ids=SPECIAL, num_attention_heads=4,
                                     max_sequence_length=64, **options)
        try:
            assert other.rope_precision == rope
            logits = other.logits(*inputs)
        finally:
            other.close()
        if rope == "fp32":
            assert torch.equal(logits, expected), path
        else:
            assert not torch.allclose(logits, expected, atol=1e-3)


def test_fp16_angles_are_sat_s_table():
    """SAT's RotaryEmbedding: inv_freq.half(), t = arange(dtype=half), einsum in fp16."""
    from megatron_glm.model.rotary import PositionIdRotaryEmbedding

    d, positions = 128, torch.tensor([[0, 1, 500, 1000, 2022, 2047]])
    inv_freq = (1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))).half()
    table = torch.einsum("i,j->ij", torch.arange(2048, dtype=torch.half).float(), inv_freq.float()).half()
    ours = PositionIdRotaryEmbedding(d, angle_dtype=torch.float16)(positions)[:, 0, 0, : d // 2]
    assert torch.equal(ours, table[positions[0]].float())
    exact = PositionIdRotaryEmbedding(d)(positions)[:, 0, 0, : d // 2]
    assert float((ours - exact).abs().max()) > 0.5  # fp16 angles are far off at large positions


def test_kv_cache_with_the_sdpa_backend(tiny):
    """attention_backend=sdpa (torch's fused attention) decodes through the same cache."""
    model, _ = tiny
    sdpa = load_inference_model(model.source, special_token_ids=SPECIAL, max_sequence_length=64,
                                attention_backend="sdpa")
    try:
        prompt = _text(20, 13)
        assert generate(sdpa, prompt, GenerationConfig(max_new_tokens=6)).blanks == \
            generate(model, prompt, GenerationConfig(max_new_tokens=6)).blanks
        context = blank_context(prompt + [G], 20, True, SOP, 4)
        n = len(context.tokens)
        tokens, positions = torch.tensor([context.tokens]), torch.tensor([context.position_ids])
        full = sdpa.logits(tokens, positions, context.attention_mask[None, None])
        cache = sdpa.new_cache(1, n)
        sdpa.extend(cache, tokens[:, :n - 1], positions[:, :n - 1], context.attention_mask[None, None, :n - 1, :n - 1])
        step = sdpa.extend(cache, tokens[:, n - 1:], positions[:, n - 1:], context.attention_mask[None, None, n - 1:])
        assert torch.allclose(step[:, 0], full[:, -1], atol=TIGHT, rtol=0)
    finally:
        sdpa.close()
