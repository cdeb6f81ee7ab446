"""Global batches for one data-parallel rank: from the blended glm-prep stream, or synthetic.

Global batch t holds samples [t * global_batch, (t + 1) * global_batch) of the stream; data-parallel
rank r takes its contiguous share, and every pipeline stage and tensor-parallel rank of that data-
parallel rank builds exactly the same micro-batches (GLM-130B once trained for weeks with stages
seeing different data: GLM130B.md §4.1).
"""

from __future__ import annotations

import tempfile
from typing import Dict, List, Optional, Sequence

import torch
from megatron.core import parallel_state

from megatron_glm.config.schema import RunConfig
from megatron_glm.data.glm_sample import attention_mask_from_layout
from megatron_glm.data.synthetic import synthetic_samples
from megatron_glm.training.step import MicroBatch, collate


def collate_dataset_samples(samples: Sequence[Dict[str, torch.Tensor]]) -> MicroBatch:
    """Stack dataset samples; the dense attention mask is built here from the compact layout."""
    stack = lambda key: torch.stack([torch.as_tensor(s[key]) for s in samples])  # noqa: E731
    return MicroBatch(tokens=stack("tokens"), labels=stack("labels"), loss_mask=stack("loss_mask").float(),
                      position_ids=stack("position_ids"),
                      attention_mask=attention_mask_from_layout(stack("window_ids"), stack("prefix_ends")))


class DatasetBatches:
    """This data-parallel rank's micro-batches of global batch `step` from the blended stream."""

    def __init__(self, run: RunConfig, steps: int, global_batch: int, micro_batch: int):
        from megatron_glm.data.datasets import build_glm_datasets, glm_dataset_config
        from megatron_glm.data.tokenizer import GLMTokenizer, parse_special_ids

        tokenizer = GLMTokenizer(run.data.tokenizer_model, parse_special_ids(run.data.special_token_ids))
        if tokenizer.vocab_size > run.model.resolved_padded_vocab_size:
            raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids but the model embeds only "
                             f"{run.model.resolved_padded_vocab_size}; raise model.vocab_size")
        config = glm_dataset_config(run, tokenizer.special, tempfile.gettempdir() + "/glm-dataset-cache")
        # Twice the planned samples: skipped ranges and rollbacks move the stream forward.
        self.train, self.valid, _ = build_glm_datasets(config, [2 * steps * global_batch, global_batch, 0])
        self.global_batch, self.micro_batch = global_batch, micro_batch
        self.per_rank = global_batch // parallel_state.get_data_parallel_world_size()
        self.offset = parallel_state.get_data_parallel_rank() * self.per_rank

    def _batches(self, dataset, first: int) -> List[MicroBatch]:
        indices = range(first + self.offset, first + self.offset + self.per_rank)
        samples = [dataset[i] for i in indices]
        return [collate_dataset_samples(samples[i:i + self.micro_batch])
                for i in range(0, self.per_rank, self.micro_batch)]

    def batches_at(self, first_sample: int) -> List[MicroBatch]:
        """Micro-batches of the global batch starting at stream sample `first_sample`."""
        return self._batches(self.train, first_sample)

    def train_batches(self, step: int) -> List[MicroBatch]:
        return self.batches_at(step * self.global_batch)

    def validation_batches(self) -> Optional[List[MicroBatch]]:
        return self._batches(self.valid, 0) if self.valid is not None else None


class SyntheticBatches:
    """Synthetic GLM sequences (no corpus needed); the same data on every layout."""

    def __init__(self, run: RunConfig, global_batch: int, micro_batch: int, seq_length: int):
        self.run, self.global_batch, self.micro_batch, self.seq_length = run, global_batch, micro_batch, seq_length
        self.per_rank = global_batch // parallel_state.get_data_parallel_world_size()
        self.offset = parallel_state.get_data_parallel_rank() * self.per_rank

    def batches_at(self, first_sample: int) -> List[MicroBatch]:
        return self.train_batches(first_sample // self.global_batch)

    def train_batches(self, step: int) -> List[MicroBatch]:
        samples = synthetic_samples(self.global_batch, self.seq_length, self.run.model.vocab_size,
                                    seed=self.run.seed + step)
        mine = samples[self.offset:self.offset + self.per_rank]
        return [collate(mine[i:i + self.micro_batch]) for i in range(0, self.per_rank, self.micro_batch)]

    def validation_batches(self) -> Optional[List[MicroBatch]]:
        """A fixed held-out global batch (a seed no training step uses)."""
        return self.train_batches(1_000_003)
