"""The random choices of the pretraining mix (docs/glm130b.md §2.3, §2.6): statistics with fixed seeds."""


import numpy as np
import pytest

from megatron_glm.data.glm_sample import SpecialTokens
from megatron_glm.data.sampling import (
    GLMObjectiveConfig,
    draw_span_lengths,
    fitted_piece_length,
    glm_sequence,
    gmask_sequence,
    instruction_sequence,
    mask_sequence,
    place_spans,
    span_length_distribution,
    truncate_instruction,
)

S = SpecialTokens(mask=150000, gmask=150001, sop=150004, eop=150005, pad=0)
CONFIG = GLMObjectiveConfig()
TEXT_VOCAB = (20000, 150000)  # icetk text ids: never a special token, never the pad id

# 0.999 quantiles of the chi-square distribution (scipy is not installed):
# scipy.stats.chi2.ppf(0.999, 7) = 24.322, scipy.stats.chi2.ppf(0.999, 15) = 37.697.
CHI2_999 = {7: 24.322, 15: 37.697}


def random_row(rng, length=CONFIG.row_length):
    return rng.integers(*TEXT_VOCAB, size=length)


def chi_square(observed, expected_probabilities):
    observed = np.asarray(observed, dtype=np.float64)
    expected = observed.sum() * np.asarray(expected_probabilities, dtype=np.float64)
    return float(((observed - expected) ** 2 / expected).sum())


def span_length_chi_square(lengths, tail=8):
    """Goodness of fit to Poisson(3) on 1..39: bins 1..7 and >=8 (7 degrees of freedom)."""
    pmf = span_length_distribution(CONFIG.poisson_lambda, CONFIG.max_span_length)
    probabilities = np.append(pmf[: tail - 1], pmf[tail - 1 :].sum())
    lengths = np.asarray(lengths)
    observed = np.append(np.bincount(np.minimum(lengths, tail), minlength=tail + 1)[1:tail], 0)
    observed[-1] = int((lengths >= tail).sum())
    return chi_square(observed, probabilities), len(probabilities) - 1


def restricted_poisson(rng, lam, count, max_length=39):
    """i.i.d. draws of Poisson(lam) restricted to 1..max_length (rejection)."""
    out = np.zeros(0, dtype=np.int64)
    while len(out) < count:
        draws = rng.poisson(lam, size=2 * count)
        out = np.concatenate([out, draws[(draws >= 1) & (draws <= max_length)]])
    return out[:count]


def decode_mask_window(sample, window):
    """Check one packed [MASK] window's layout and return (text it holds, span lengths, #lost spans).

    Checks: no two adjacent [MASK]s in Part A; Part A positions 0..|A|-1, no loss; each Part-B span
    is sop + span, labels span + eop, every token at its [MASK]'s position, each [MASK] used at
    most once; loss_mask 1 on Part B, 0 on padding (pad tokens, position 0).
    """
    start, end, prefix = window
    tokens, labels = sample.tokens[start:end], sample.labels[start:end]
    loss, positions = sample.loss_mask[start:end], sample.position_ids[start:end]
    part_a = tokens[:prefix]
    assert (labels[:prefix] == part_a).all() and (loss[:prefix] == 0).all()
    assert (positions[:prefix] == np.arange(prefix)).all()
    mask_at = np.flatnonzero(part_a == S.mask)
    assert (np.diff(mask_at) > 1).all(), "spans must be separated by an unmasked token"
    assert not np.isin(part_a, [S.gmask, S.sop, S.eop, S.pad]).any()

    n_loss = int(loss.sum())
    assert (loss[prefix : prefix + n_loss] == 1).all() and (loss[prefix + n_loss :] == 0).all()
    assert (tokens[prefix + n_loss :] == S.pad).all() and (positions[prefix + n_loss :] == 0).all()
    part_b = slice(prefix, prefix + n_loss)
    b_tokens, b_labels, b_positions = tokens[part_b], labels[part_b], positions[part_b]
    sops = np.flatnonzero(b_tokens == S.sop)
    assert len(sops) == 0 or sops[0] == 0
    bounds = list(sops) + [n_loss]
    filled, lengths = {}, []
    for s, e in zip(bounds, bounds[1:]):
        position = int(b_positions[s])
        assert (b_positions[s:e] == position).all(), "all of a span takes its [MASK]'s position"
        assert part_a[position] == S.mask and position not in filled
        complete = e < n_loss or b_labels[e - 1] == S.eop
        if complete:
            assert b_labels[e - 1] == S.eop
            assert (b_labels[: e - 1][s:] == b_tokens[s + 1 : e]).all(), "labels = input shifted"
            filled[position] = b_tokens[s + 1 : e]
            lengths.append(e - s - 1)
        else:  # truncated by pack_windows (reproduce_window_overflow only)
            assert (b_labels[s : e - 1] == b_tokens[s + 1 : e]).all()
    lost = len(mask_at) - len(filled)
    if lost:
        return None, lengths, lost
    pieces, cursor = [], 0
    for position in mask_at:
        pieces += [part_a[cursor:position], filled[int(position)]]
        cursor = position + 1
    pieces.append(part_a[cursor:])
    return np.concatenate(pieces), lengths, 0


def mask_samples(config, count, seed):
    rng = np.random.default_rng(seed)
    rows, samples = [], []
    for _ in range(count):
        rows.append(random_row(rng))
        samples.append(mask_sequence(rng, rows[-1], config, S))
    return rows, samples


# ------------------------------------------------------------------------------------------------
# [MASK]


def test_span_length_distribution_is_restricted_poisson():
    pmf = span_length_distribution(3.0, 39)
    assert pmf.shape == (39,) and abs(pmf.sum() - 1) < 1e-12
    assert abs(pmf[2] / pmf[0] - 3.0**2 / 6) < 1e-12  # P(3)/P(1) = λ²/3!
    assert abs(np.dot(np.arange(1, 40), pmf) - 3 / (1 - np.exp(-3))) < 1e-9


def test_place_spans_uniform_non_overlapping():
    rng = np.random.default_rng(0)
    counts = np.zeros(20)
    for _ in range(4000):
        spans = place_spans(rng, [3, 1, 2], 20)
        assert sorted(e - s for s, e in spans) == [1, 2, 3]
        for (s0, e0), (s1, _) in zip(spans, spans[1:]):
            assert s1 > e0  # a gap of at least one token
        assert spans[0][0] >= 0 and spans[-1][1] <= 20
        for s, e in spans:
            counts[s:e] += 1
    assert counts.min() > 0  # every token can be masked
    assert place_spans(rng, [2, 2], 5) == [(0, 2), (3, 5)]  # the only layout with a gap
    with pytest.raises(ValueError):
        place_spans(rng, [3, 2], 5)


def test_mask_spans_statistics():
    _, samples = mask_samples(CONFIG, 500, seed=1)  # 2000 windows
    fractions, window_lengths = [], []
    for sample in samples:
        assert len(sample.tokens) == CONFIG.seq_length and len(sample.windows) == 4
        for window in sample.windows:
            text, lengths, lost = decode_mask_window(sample, window)
            assert lost == 0
            fractions.append(sum(lengths) / len(text))
            window_lengths += lengths
    mean_fraction = float(np.mean(fractions))
    print(f"\n[MASK] masked fraction per window: {mean_fraction:.4f} over {len(fractions)} windows")
    assert abs(mean_fraction - 0.15) < 0.01

    # Span lengths: Poisson(3) restricted to 1..39. Within a window the draws are shaped by the
    # stopping rule (the crossing draw tends to be long), but pooled over windows each length
    # occurs in proportion to its probability: whether draw i happens depends only on draws < i.
    statistic, dof = span_length_chi_square(window_lengths)
    rng = np.random.default_rng(2)
    wrong, _ = span_length_chi_square(restricted_poisson(rng, 4.0, len(window_lengths)))
    print(f"span-length chi2 over {len(window_lengths)} spans: {statistic:.1f} "
          f"(dof {dof}, 0.999 critical {CHI2_999[dof]}); Poisson(4) control {wrong:.1f}")
    assert statistic < CHI2_999[dof]
    assert wrong > CHI2_999[dof], "the test must be able to fail"
    assert abs(np.mean(window_lengths) - 3 / (1 - np.exp(-3))) < 0.05

    # The same through the span-length sampler alone, on its own seed.
    drawn = np.concatenate([draw_span_lengths(rng, 500, CONFIG) for _ in range(2000)])
    statistic, _ = span_length_chi_square(drawn)
    assert statistic < CHI2_999[dof]


def test_mask_window_layout_and_order_is_shuffled():
    rows, samples = mask_samples(CONFIG, 50, seed=4)
    in_order = 0
    for row, sample in zip(rows, samples):
        for index, window in enumerate(sample.windows):
            assert window == (512 * index, 512 * (index + 1), window[2])
            text, _, _ = decode_mask_window(sample, window)
            piece = row[500 * index : 500 * (index + 1)]
            assert (text == piece[: len(text)]).all(), "Part A + Part B give back the piece"
            start, _, prefix = window
            b_positions = sample.position_ids[start + prefix :][sample.tokens[start + prefix :] == S.sop]
            in_order += bool((np.diff(b_positions) > 0).all())
    assert in_order < 5  # Part B is a random permutation, almost never sorted


def test_default_loses_no_target_and_reproduce_mode_does():
    results = {}
    for reproduce in (False, True):
        config = GLMObjectiveConfig(reproduce_window_overflow=reproduce)
        _, samples = mask_samples(config, 500, seed=5)
        loss_tokens, lost_windows, text_tokens = [], 0, []
        for sample in samples:
            for window in sample.windows:
                start, end, prefix = window
                text, lengths, lost = decode_mask_window(sample, window)
                n_loss = int(sample.loss_mask[start:end].sum())
                loss_tokens.append(n_loss)
                if lost or n_loss and sample.labels[start + prefix + n_loss - 1] != S.eop:
                    lost_windows += 1
                else:
                    num_spans = int((sample.tokens[start : start + prefix] == S.mask).sum())
                    assert n_loss == sum(lengths) + num_spans  # masked + one eop per span
                    assert prefix + n_loss <= 512
                    text_tokens.append(len(text))
        results[reproduce] = (float(np.mean(loss_tokens)), lost_windows / len(loss_tokens))
        print(f"\nreproduce_window_overflow={reproduce}: {np.mean(loss_tokens):.1f} loss tokens/window, "
              f"{100 * lost_windows / len(loss_tokens):.1f}% windows lose targets, "
              f"{np.mean(text_tokens) if text_tokens else 0:.0f} text tokens/intact window")
    (fit_loss, fit_lost), (orig_loss, orig_lost) = results[False], results[True]
    assert fit_lost == 0
    assert 0.93 < orig_lost < 0.99  # docs/glm130b.md: 96%
    assert 58 < orig_loss < 68  # docs/glm130b.md: ≈63
    assert 88 < fit_loss < 96  # ≈94 in full windows, less in the 2% short / 2% single-span ones


def test_fitted_piece_length():
    assert fitted_piece_length(500, 24, CONFIG) == 464
    assert fitted_piece_length(500, 5, CONFIG) == 500
    assert fitted_piece_length(100, 30, CONFIG) == 100
    assert fitted_piece_length(500, 24, GLMObjectiveConfig(reproduce_window_overflow=True)) == 500


def test_short_and_single_span_windows_occur():
    _, samples = mask_samples(CONFIG, 500, seed=6)
    short = single = 0
    for sample in samples:
        for window in sample.windows:
            text, lengths, _ = decode_mask_window(sample, window)
            short += len(text) < 512 - 2 * 40 - 40  # cut to [32, 500): far below a fitted piece
            single += len(lengths) == 1
            assert len(text) >= 32
    # 2% each of 2000 windows: 40 expected (a short window's piece is usually < 392 tokens)
    assert 15 <= short <= 60 and 20 <= single <= 65


# ------------------------------------------------------------------------------------------------
# [gMASK]


def test_gmask_generation_length_uniform_and_layout():
    rng = np.random.default_rng(7)
    row = random_row(rng)
    generation = []
    for i in range(20000):
        sample = gmask_sequence(rng, row, CONFIG, S)
        n_loss = int(sample.loss_mask.sum())
        generation.append(n_loss)
        if i < 200:
            src = CONFIG.row_length - n_loss
            assert len(sample.tokens) == 2048 and sample.windows == [(0, 2048, src + 1)]
            assert sample.tokens[src] == S.gmask and sample.tokens[src + 1] == S.sop
            assert (sample.tokens[:src] == row[:src]).all()
            assert (sample.tokens[src + 2 : 2001] == row[src:-1]).all()
            assert (sample.labels[: src + 1] == np.append(row[:src], S.gmask)).all()
            assert (sample.labels[src + 1 : 2001] == row[src:]).all()
            assert (sample.loss_mask[: src + 1] == 0).all() and (sample.loss_mask[src + 1 : 2001] == 1).all()
            assert (sample.loss_mask[2001:] == 0).all() and (sample.tokens[2001:] == S.pad).all()
            assert (sample.position_ids[:2001] == np.arange(2001)).all()
            assert (sample.position_ids[2001:] == 0).all()
            assert S.eop not in sample.tokens and S.eop not in sample.labels
    generation = np.asarray(generation)
    print(f"\n[gMASK] generation length: min {generation.min()} max {generation.max()} "
          f"mean {generation.mean():.1f}")
    assert generation.min() >= 400 and generation.max() <= 2000
    assert generation.min() < 410 and generation.max() > 1990
    assert abs(generation.mean() - 1200) < 15
    edges = np.linspace(400, 2001, 17).astype(int)  # 16 bins over the 1601 integers 400..2000
    observed = np.histogram(generation, bins=edges)[0]
    statistic = chi_square(observed, np.diff(edges) / 1601)
    print(f"[gMASK] 16-bin uniformity chi2 {statistic:.1f} (0.999 critical {CHI2_999[15]})")
    assert statistic < CHI2_999[15]
    # and a 1200-centred triangular (the wrong law) fails the same test
    wrong = np.histogram(rng.triangular(400, 1200, 2001, size=20000), bins=edges)[0]
    assert chi_square(wrong, np.diff(edges) / 1601) > CHI2_999[15]


# ------------------------------------------------------------------------------------------------
# MIP


def test_instruction_truncation_rules():
    t = np.arange(1, 1001)
    # fits: untouched
    text, target = truncate_instruction(t[:300], t[:210], 512)
    assert (len(text), len(target)) == (300, 210)
    # text too long: cut to 512 - |target| - 2, beginning kept
    text, target = truncate_instruction(t[:600], t[:100], 512)
    assert (len(text), len(target)) == (410, 100) and (text == t[:410]).all()
    # long target: text cut to max(128, 512 - |target| - 2) = 128, then target cut to fit
    text, target = truncate_instruction(t[:600], t[:450], 512)
    assert (len(text), len(target)) == (128, 382) and (target == t[:382]).all()
    # short text, huge target: only the target is cut
    text, target = truncate_instruction(t[:50], t[:1000], 512)
    assert (len(text), len(target)) == (50, 460)


def test_instruction_sequence_layout():
    rng = np.random.default_rng(8)
    examples = [(random_row(rng, a), random_row(rng, b)) for a, b in [(600, 450), (20, 5), (300, 100), (50, 1000)]]
    sample = instruction_sequence(examples, CONFIG, S)
    assert len(sample.tokens) == 2048 and len(sample.windows) == 4
    for index, ((text, target), window) in enumerate(zip(examples, sample.windows)):
        text, target = truncate_instruction(text, target, 512)
        start, end, prefix = window
        assert (start, end, prefix) == (512 * index, 512 * (index + 1), len(text) + 1)
        n = len(text) + len(target) + 2
        assert n <= 512
        assert (sample.tokens[start : start + n] == np.concatenate([text, [S.mask, S.sop], target])).all()
        assert (sample.labels[start : start + n] == np.concatenate([text, [S.mask], target, [S.eop]])).all()
        assert (sample.loss_mask[start : start + n] == np.repeat([0, 1], [len(text) + 1, len(target) + 1])).all()
        assert (sample.position_ids[start : start + n] == np.arange(n)).all()  # linear
        assert (sample.loss_mask[start + n : end] == 0).all() and (sample.tokens[start + n : end] == S.pad).all()
    with pytest.raises(ValueError):
        instruction_sequence(examples[:3], CONFIG, S)


# ------------------------------------------------------------------------------------------------
# The mix


def test_mix_frequency_length_and_determinism():
    """The speed of glm_sequence is measured by bench/sample_construction.py."""
    rng = np.random.default_rng(9)
    row = random_row(rng)
    kinds = []
    for _ in range(5000):
        kind, sample = glm_sequence(rng, row, CONFIG, S)
        kinds.append(kind)
        assert len(sample.tokens) == len(sample.labels) == len(sample.loss_mask) == 2048
        assert len(sample.position_ids) == 2048
        assert sum(end - begin for begin, end, _ in sample.windows) == 2048
    frequency = kinds.count("mask") / len(kinds)
    assert set(kinds) == {"mask", "gmask"} and abs(frequency - 0.30) < 0.02

    first = [glm_sequence(np.random.default_rng(10), row, CONFIG, S) for _ in range(2)]
    assert first[0][0] == first[1][0]
    for name in ("tokens", "labels", "loss_mask", "position_ids"):
        assert (getattr(first[0][1], name) == getattr(first[1][1], name)).all()
