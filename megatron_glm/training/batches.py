"""Global batches for one data-parallel rank: from the blended glm-prep stream, or synthetic.

A global batch of B samples starting at stream sample c holds samples [c, c + B) (B changes during
a batch-size ramp-up, so batches are addressed by their first sample); data-parallel rank r takes
its contiguous share [c + r * B / dp, c + (r + 1) * B / dp), and every pipeline stage and tensor-parallel rank of that data-
parallel rank builds exactly the same micro-batches (GLM-130B once trained for weeks with stages
seeing different data: docs/glm130b.md §4.1).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from megatron.core import parallel_state

from megatron_glm.config.schema import RunConfig
from megatron_glm.data.glm_sample import attention_mask_from_layout
from megatron_glm.data.synthetic_samples import synthetic_samples
from megatron_glm.training.step import MicroBatch, collate


def collate_dataset_samples(samples: Sequence[Dict[str, torch.Tensor]]) -> MicroBatch:
    """Stack dataset samples; the dense attention mask is built here from the compact layout. The
    blend's `dataset_id` (absent with a single source) becomes the per-source loss key."""
    stack = lambda key: torch.stack([torch.as_tensor(s[key]) for s in samples])  # noqa: E731
    source_ids = torch.tensor([int(s.get("dataset_id", 0)) for s in samples], dtype=torch.long)
    return MicroBatch(tokens=stack("tokens"), labels=stack("labels"), loss_mask=stack("loss_mask").float(),
                      position_ids=stack("position_ids"),
                      attention_mask=attention_mask_from_layout(stack("window_ids"), stack("prefix_ends")),
                      source_ids=source_ids)


class DatasetBatches:
    """This data-parallel rank's micro-batches of global batch `step` from the blended stream."""

    def __init__(self, run: RunConfig, train_samples: int, global_batch: int, micro_batch: int):
        from megatron_glm.data.datasets import build_glm_datasets, glm_dataset_config
        from megatron_glm.data.tokenizer import GLMTokenizer, parse_special_ids

        from megatron_glm.data.datasets import source_names

        tokenizer = GLMTokenizer(run.data.tokenizer_model, parse_special_ids(run.data.special_token_ids))
        if tokenizer.vocab_size > run.model.resolved_padded_vocab_size:
            raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids but the model embeds only "
                             f"{run.model.resolved_padded_vocab_size}; raise model.vocab_size")
        if not run.data.cache_dir:
            raise ValueError("data.cache_dir is empty: resolve the run config first (megatron_glm.config.resolve)")
        config = glm_dataset_config(run, tokenizer.special, run.data.cache_dir)
        self.eval_batches = run.train.eval_batches
        self.train, self.valid, _ = build_glm_datasets(config, [train_samples, global_batch * self.eval_batches, 0])
        self.source_names = source_names(run.data)
        self.global_batch, self.micro_batch = global_batch, micro_batch

    def _batches(self, dataset, first: int, batch_size: int) -> List[MicroBatch]:
        first, count = _my_share(first, batch_size)
        samples = [dataset[i] for i in range(first, first + count)]
        return [collate_dataset_samples(samples[i:i + self.micro_batch]) for i in range(0, count, self.micro_batch)]

    def batches_at(self, first_sample: int, batch_size: Optional[int] = None) -> List[MicroBatch]:
        """Micro-batches of the global batch of `batch_size` (default: the full one) starting at
        stream sample `first_sample`."""
        return self._batches(self.train, first_sample, batch_size or self.global_batch)

    def validation_batches(self) -> Optional[List[MicroBatch]]:
        """train.eval_batches global batches of the validation split, the same ones every time."""
        if self.valid is None:
            return None
        return [micro for i in range(self.eval_batches)
                for micro in self._batches(self.valid, i * self.global_batch, self.global_batch)]


def _my_share(first_sample: int, batch_size: int) -> tuple:
    """(first sample, count) of this data-parallel rank's contiguous share of a global batch."""
    per_rank = batch_size // parallel_state.get_data_parallel_world_size()
    return first_sample + parallel_state.get_data_parallel_rank() * per_rank, per_rank


class SyntheticBatches:
    """Synthetic GLM sequences (no corpus needed); the same data on every layout."""

    source_names = ()  # synthetic samples carry no data source: no loss/<source> keys

    def __init__(self, run: RunConfig, global_batch: int, micro_batch: int, seq_length: int):
        self.run, self.global_batch, self.micro_batch, self.seq_length = run, global_batch, micro_batch, seq_length

    def batches_at(self, first_sample: int, batch_size: Optional[int] = None) -> List[MicroBatch]:
        """The global batch starting at `first_sample` (seeded by it), this rank's share."""
        batch_size = batch_size or self.global_batch
        samples = synthetic_samples(batch_size, self.seq_length, self.run.model.vocab_size,
                                    seed=self.run.seed + first_sample)
        first, count = _my_share(0, batch_size)
        mine = samples[first:first + count]
        return [collate(mine[i:i + self.micro_batch]) for i in range(0, count, self.micro_batch)]

    def validation_batches(self) -> Optional[List[MicroBatch]]:
        """train.eval_batches fixed held-out global batches (seeds no training step uses)."""
        return [micro for i in range(self.run.train.eval_batches)
                for micro in self.batches_at(1_000_000_007 + i * self.global_batch)]
