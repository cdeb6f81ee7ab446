"""The training sample stream: blend shares, determinism, resume, sample structure."""

import numpy as np
import pytest
import torch

from megatron_glm.data.datasets import (
    GLMDataset,
    GLMDatasetConfig,
    blend_weights,
    build_glm_datasets,
    objective_for_length,
)
from megatron_glm.data.glm_sample import SpecialTokens, attention_mask_from_layout

SEQ = 512
WEIGHTS = {"pile": 0.6, "wudao": 0.4}


def _config(demo_tokenizer, demo_datasets, cache_dir, seed=1234, ratio=0.05):
    special = demo_tokenizer.special
    prefixes, weights = blend_weights([demo_datasets["pile"], demo_datasets["wudao"]], list(WEIGHTS.values()),
                                      demo_datasets["mip"], ratio)
    return GLMDatasetConfig(
        random_seed=seed, sequence_length=SEQ, blend=(prefixes, weights), split="98,2,0",
        path_to_cache=str(cache_dir),
        special=SpecialTokens(mask=special.mask, gmask=special.gmask, sop=special.sop, eop=special.eop,
                              pad=special.pad),
        objective=objective_for_length(SEQ),
        instruction_prefixes=(demo_datasets["mip"],),
    )


@pytest.fixture(scope="module")
def single_process_group():
    """megatron-core's dataset builders coordinate through torch.distributed (rank 0 builds caches)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def train_stream(single_process_group, demo_tokenizer, demo_datasets, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    train, valid, _ = build_glm_datasets(_config(demo_tokenizer, demo_datasets, cache), [20000, 200, 0])
    return train, valid, cache


def test_blend_shares_over_the_first_20000_samples(train_stream, demo_datasets):
    train, _, _ = train_stream
    ids = np.asarray(train.dataset_index[:20000])
    names = [d.dataset_path for d in train.datasets]
    share = {path: float(np.mean(ids == index)) for index, path in enumerate(names)}
    assert abs(share[demo_datasets["mip"]] - 0.05) <= 0.002
    for name, weight in WEIGHTS.items():
        assert abs(share[demo_datasets[name]] - 0.95 * weight) <= 0.005


def test_samples_have_glm_structure(train_stream, demo_tokenizer):
    train, _, _ = train_stream
    kinds = []
    for index in range(0, 400, 7):
        sample = train[index]
        assert sample["tokens"].shape == (SEQ,) and sample["window_ids"].shape == (SEQ,)
        mask = attention_mask_from_layout(sample["window_ids"], sample["prefix_ends"])
        assert mask.shape == (1, SEQ, SEQ) and mask.dtype == torch.bool
        assert sample["loss_mask"].sum() > 0
        kinds.append((int(sample["dataset_id"]), int(sample["kind"])))
        if int(sample["kind"]) == 2:
            assert (sample["tokens"] == demo_tokenizer.special.mask).sum() == 4  # one per MIP window
    mip_id = len(train.datasets) - 1
    assert all((kind == 2) == (dataset == mip_id) for dataset, kind in kinds)
    assert {kind for _, kind in kinds} == {0, 1, 2}


def test_resume_reproduces_the_stream(train_stream, demo_tokenizer, demo_datasets):
    """A fresh build (as after a restart) yields the same samples from any position k."""
    train, _, cache = train_stream
    restarted, _, _ = build_glm_datasets(_config(demo_tokenizer, demo_datasets, cache), [20000, 200, 0])
    for k in (0, 137, 4999, 19999):
        first, again = train[k], restarted[k]
        for key in ("tokens", "labels", "loss_mask", "position_ids", "window_ids", "prefix_ends", "dataset_id"):
            assert torch.equal(torch.as_tensor(first[key]), torch.as_tensor(again[key])), (k, key)


def test_stream_does_not_depend_on_the_planned_sample_count(train_stream, demo_tokenizer, demo_datasets, tmp_path):
    """A run extended on resume (train.steps raised) asks for more samples: sample k must not change.
    (megatron-core's unique_description_hash includes num_samples; seeding from it did change it.)"""
    train, _, _ = train_stream
    shorter, _, _ = build_glm_datasets(_config(demo_tokenizer, demo_datasets, tmp_path), [3000, 200, 0])
    for k in (0, 1, 2, 57, 1500, 2999):
        for key in ("tokens", "labels", "position_ids", "window_ids", "prefix_ends", "dataset_id"):
            assert torch.equal(torch.as_tensor(train[k][key]), torch.as_tensor(shorter[k][key])), (k, key)


def test_seed_changes_the_stream(train_stream, demo_tokenizer, demo_datasets, tmp_path):
    train, _, _ = train_stream
    other, _, _ = build_glm_datasets(_config(demo_tokenizer, demo_datasets, tmp_path, seed=7), [2000, 20, 0])
    assert any(not torch.equal(train[k]["tokens"], other[k]["tokens"]) for k in range(10))


def test_validation_split_reads_other_documents(train_stream):
    train, valid, _ = train_stream
    for train_part, valid_part in zip(train.datasets, valid.datasets):
        assert isinstance(train_part, GLMDataset)
        train_docs = set(range(train_part.first_document, train_part.first_document + train_part.num_documents))
        valid_docs = set(range(valid_part.first_document, valid_part.first_document + valid_part.num_documents))
        assert train_docs and valid_docs and not train_docs & valid_docs


def test_blend_weights():
    prefixes, weights = blend_weights(["a", "b"], [3, 1], "m", 0.05)
    assert prefixes == ["a", "b", "m"]
    assert weights == pytest.approx([0.7125, 0.2375, 0.05])
