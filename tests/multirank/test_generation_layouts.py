"""The inference engine at TP2 x PP2 (gloo ranks): full-forward logits equal TP1's, per-step
KV-cache logits equal the full forward's, and generation (greedy batch, beam search) is TP1's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from generation_fixtures import SPECIAL, tiny_shape, tiny_weights, write_safetensors
from megatron_glm.inference import GenerationConfig, generate, generate_batch, load_inference_model
from megatron_glm.inference.generation import blank_context
from multirank.harness import run_ranks

pytestmark = pytest.mark.multirank
SCRIPT = Path(__file__).with_name("generation_scenarios.py")
M, G, SOP = SPECIAL["mask"], SPECIAL["gmask"], SPECIAL["sop"]


def _case():
    """Two right-padded contexts ([MASK] and [gMASK] layouts) followed by 5 decode columns."""
    prompts = [[21, 22, 23, M, 24, 25, M, 26], [30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40]]
    contexts = [blank_context(prompts[0] + [2], 3, False, SOP, 5), blank_context(prompts[1] + [G], 11, True, SOP, 5)]
    padded = max(len(c.tokens) for c in contexts)
    total = padded + 5
    tokens = torch.zeros(2, total, dtype=torch.long)
    positions = torch.zeros(2, total, dtype=torch.long)
    mask = torch.ones(2, 1, total, total, dtype=torch.bool)
    for b, c in enumerate(contexts):
        cl = len(c.tokens)
        tokens[b, :cl], positions[b, :cl] = torch.tensor(c.tokens), torch.tensor(c.position_ids)
        mask[b, 0, :cl, :cl] = c.attention_mask
        for row in range(cl, padded):
            mask[b, 0, row, row] = False
        tokens[b, padded:] = torch.arange(50, 55) + b
        positions[b, padded:] = torch.tensor(c.generation_position_ids)
        for t in range(5):
            mask[b, 0, padded + t, :padded] = mask[b, 0, cl - 1, :padded]
            mask[b, 0, padded + t, padded:padded + t + 1] = False
    return {"tokens": tokens, "position_ids": positions, "attention_mask": mask, "prefill": padded, "prompts": prompts}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("generation_layouts")
    glm = tiny_shape(128)
    write_safetensors(path / "ckpt", glm, tiny_weights(glm, seed=3))
    torch.save(_case(), path / "cases.pt")
    model = load_inference_model(str(path / "ckpt"), special_token_ids=SPECIAL, max_sequence_length=64)
    case = torch.load(path / "cases.pt")
    tp1 = {"full": model.logits(case["tokens"], case["position_ids"], case["attention_mask"]),
           "greedy": [r.blanks for r in generate_batch(model, case["prompts"], GenerationConfig(max_new_tokens=5))],
           "beam": [(b.tokens, b.score) for b in generate(model, case["prompts"][0], GenerationConfig(
               "beam", max_new_tokens=4, num_beams=3, no_repeat_ngram_size=2)).beams]}
    model.close()
    return path, tp1


@pytest.mark.parametrize("tp,pp", [(2, 2)], ids=["tp2xpp2"])
def test_layout_equals_tp1(workdir, tp, pp):
    """One launch covers both: TP shards (and their gathered logits) and the pipeline's send/recv
    and broadcast of the last stage's logits (pipeline groups [0, 2] and [1, 3])."""
    path, tp1 = workdir
    run_ranks("layout", tp * pp, path, str(tp), str(pp), timeout_s=300, script=SCRIPT)
    prefill = torch.load(path / "cases.pt")["prefill"]
    for rank in range(tp * pp):
        result = torch.load(path / f"tp{tp}pp{pp}.rank{rank}.pt")
        assert torch.allclose(result["full"], tp1["full"], atol=3e-4, rtol=0), rank
        cached, full = result["cached"], result["full"]
        assert torch.allclose(cached[:, prefill:], full[:, prefill:], atol=3e-4, rtol=0), rank
        assert result["greedy"] == tp1["greedy"], rank
        assert [t for t, _ in result["beam"]] == [t for t, _ in tp1["beam"]], rank
        assert [s for _, s in result["beam"]] == pytest.approx([s for _, s in tp1["beam"]], abs=1e-4)
