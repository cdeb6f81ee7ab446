"""Shared fixtures: glm-tiny weights and inputs (one 1-rank run), the demo tokenizer and datasets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from glm_inputs import build_inputs
from multirank.harness import run_ranks


@pytest.fixture(scope="session")
def tiny_workdir(tmp_path_factory):
    """inputs.pt, weights.pt, init_logits.pt, egs_grads.pt for glm-tiny (seq 64)."""
    workdir = tmp_path_factory.mktemp("glm_tiny")
    inputs, _ = build_inputs()
    torch.save(inputs, workdir / "inputs.pt")
    run_ranks("init", 1, workdir, timeout_s=240)
    return workdir


DEMO_CORPUS = Path(__file__).resolve().parent.parent / "data_prep" / "demo_corpus"


@pytest.fixture(scope="session")
def demo_tokenizer(tmp_path_factory):
    """A small bilingual sentencepiece model trained on the bundled demo corpus (vocab 2000)."""
    from data_prep.tokenizer_training import train_tokenizer
    from megatron_glm.data.tokenizer import GLMTokenizer

    prefix = tmp_path_factory.mktemp("tokenizer") / "demo"
    train_tokenizer([str(DEMO_CORPUS / "pile-demo.jsonl.zst"), str(DEMO_CORPUS / "wudao-demo.json")],
                    str(prefix), vocab_size=2000, sample_bytes=1 << 20, threads=2)
    return GLMTokenizer(f"{prefix}.model")


@pytest.fixture(scope="session")
def demo_datasets(tmp_path_factory, demo_tokenizer):
    """The demo corpus tokenised: {"pile": prefix, "wudao": prefix, "mip": prefix}."""
    from data_prep.tokenize import TokenizeOptions, tokenize

    out = tmp_path_factory.mktemp("prepared")
    prefixes = {}
    for name, file in (("pile", "pile-demo.jsonl.zst"), ("wudao", "wudao-demo.json"), ("mip", "mip-demo.jsonl")):
        prefixes[name] = str(out / name)
        tokenize(TokenizeOptions(inputs=[str(DEMO_CORPUS / file)], output_prefix=prefixes[name], workers=2,
                                 progress=False), demo_tokenizer)
    return prefixes


@pytest.fixture(scope="session")
def demo_data_section(demo_tokenizer, demo_datasets):
    """make(cache_dir, **overrides) -> the `data` section of a run config on the demo datasets
    (pile and wudao by equal weight, MIP as instructions)."""

    def make(cache_dir, **overrides) -> dict:
        return {"tokenizer_model": demo_tokenizer.model_file,
                "sources": [{"prefix": demo_datasets["pile"], "weight": 1.0},
                            {"prefix": demo_datasets["wudao"], "weight": 1.0}],
                "instruction_prefix": demo_datasets["mip"], "split": "95,5,0", "cache_dir": str(cache_dir),
                **overrides}

    return make
