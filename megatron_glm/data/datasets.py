"""GLM training samples as megatron-core datasets, blended with BlendedMegatronDatasetBuilder.

One MegatronDataset subclass serves both kinds of prefix glm-prep writes:
- text (Pile, WuDao, ...): the split's documents (each ending in eod) form one token stream, cut
  into rows of `row_length` (2000) tokens, as GLM-130B's BinaryDataset; rows are read in a seeded
  permutation per epoch (its RandomMappingDataset) and each becomes a [MASK] or [gMASK] sequence;
- instruction (MIP): every example is a (text, target) document; a sample packs four examples,
  taken in a seeded permutation per epoch, into 512-token windows.
Because a split is a contiguous range of documents, a row is one contiguous slice of the .bin: no
per-document index has to be built, only the row permutation (cached as .npy by megatron-core's
convention: under `path_to_cache`, keyed by the dataset's unique description).

Sample i depends only on (config, seed, i): the random choices of sample construction come from a
generator seeded with (seed, split, dataset, i). A restart at consumed sample k therefore continues
the same stream, data-parallel ranks read disjoint indices, and every pipeline stage of a rank
builds the identical sample. Blending (text sources by weight, MIP at exactly `instruction_ratio`
of sequences) is megatron-core's BlendedDataset, whose dataset_id is the per-source loss key.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.blended_megatron_dataset_config import BlendedMegatronDatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDataset
from megatron.core.datasets.megatron_dataset import MegatronDataset
from megatron.core.datasets.utils import Split

from megatron_glm.data.glm_sample import PackedSample, SpecialTokens, mask_layout
from megatron_glm.data.sampling import GLMObjectiveConfig, glm_sequence, instruction_sequence

log = logging.getLogger(__name__)

KIND_CODES = {"mask": 0, "gmask": 1, "mip": 2}


@dataclass
class GLMDatasetConfig(BlendedMegatronDatasetConfig):
    """megatron-core's blend/split/cache config plus what GLM samples need."""

    special: Optional[SpecialTokens] = None
    objective: GLMObjectiveConfig = field(default_factory=GLMObjectiveConfig)
    instruction_prefixes: Tuple[str, ...] = ()
    """Prefixes holding MIP (text, target) examples; every other prefix is text."""
    objective_description: str = field(init=False, default="")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.special is None:
            raise ValueError("GLMDatasetConfig needs the tokenizer's special-token ids")
        if self.objective.seq_length != self.sequence_length:
            raise ValueError(f"objective.seq_length {self.objective.seq_length} != sequence_length "
                             f"{self.sequence_length}")
        self.objective_description = repr((self.objective, self.special))


def _seed_words(*parts) -> List[int]:
    """Stable 32-bit words for numpy's SeedSequence (Python's hash() is salted per process)."""
    words = []
    for part in parts:
        digest = hashlib.sha256(str(part).encode()).digest()
        words.append(int.from_bytes(digest[:4], "little"))
    return words


class GLMDataset(MegatronDataset):
    """GLM pretraining sequences from one glm-prep prefix (text or instruction)."""

    def __init__(self, dataset: IndexedDataset, dataset_path: Optional[str], indices: np.ndarray,
                 num_samples: Optional[int], index_split: Split, config: GLMDatasetConfig) -> None:
        super().__init__(dataset, dataset_path, indices, num_samples, index_split, config)
        self.objective = config.objective
        self.special = config.special
        self.is_instruction = dataset_path in config.instruction_prefixes
        documents = np.asarray(indices)
        self.first_document = int(documents[0]) if len(documents) else 0
        self.num_documents = len(documents)
        if len(documents) and not np.array_equal(documents, np.arange(documents[0], documents[0] + len(documents))):
            raise ValueError("GLMDataset expects a contiguous range of documents per split")
        if self.is_instruction:
            self.units = self.num_documents
            self.examples_per_sample = self.objective.mask_windows
            self.epoch_samples = max(1, self.units // self.examples_per_sample)
        else:
            itemsize = dataset.index.dtype_size
            pointers = dataset.index.sequence_pointers
            doc_index = dataset.document_indices
            start_seq = doc_index[self.first_document] if self.num_documents else 0
            end_seq = doc_index[self.first_document + self.num_documents] if self.num_documents else 0
            self.token_start = int(pointers[start_seq]) // itemsize if self.num_documents else 0
            total = (int(pointers[end_seq - 1]) // itemsize + int(dataset.index.sequence_lengths[end_seq - 1])
                     - self.token_start) if end_seq > start_seq else 0
            self.units = total // self.objective.row_length
            self.epoch_samples = self.units
        if self.epoch_samples == 0:
            raise ValueError(f"{dataset_path} ({index_split.name} split) is too small for one sample")
        self.length = num_samples if num_samples is not None else self.epoch_samples
        self._permutations: Dict[int, np.ndarray] = {}
        # Not megatron's unique_description_hash: it includes num_samples, and the stream must not
        # change when a run is extended (train.steps raised on resume) or its sample count differs.
        self._stream_key = hashlib.sha256(repr((
            os.path.basename(dataset_path or ""), index_split.name, self.first_document, self.num_documents,
            self.units, config.objective_description)).encode()).hexdigest()
        self._seed_base = (config.random_seed, index_split.name, self._stream_key)
        self._permutation(0)  # built (and cached) here, so rank 0 builds it before the others load it

    @staticmethod
    def numel_low_level_dataset(low_level_dataset: IndexedDataset) -> int:
        return len(low_level_dataset.document_indices) - 1

    @staticmethod
    def build_low_level_dataset(dataset_path: str, config: GLMDatasetConfig) -> IndexedDataset:
        return IndexedDataset(dataset_path, multimodal=False, mmap=config.mmap_bin_files)

    @staticmethod
    def _key_config_attributes() -> List[str]:
        return ["random_seed", "sequence_length", "split", "split_matrix", "objective_description"]

    def __len__(self) -> int:
        return self.length

    def _permutation(self, epoch: int) -> np.ndarray:
        """The order of rows (text) or examples (instruction) in one epoch, cached as .npy."""
        if epoch in self._permutations:
            return self._permutations[epoch]
        cache_dir = self.config.path_to_cache
        path = None
        if cache_dir:
            path = os.path.join(cache_dir, f"{self._stream_key}-seed{self.config.random_seed}-glm-epoch{epoch}.npy")
            if os.path.exists(path):
                permutation = np.load(path, mmap_mode="r")
                self._permutations = {epoch: permutation}
                return permutation
        rng = np.random.default_rng(_seed_words(*self._seed_base, "permutation", epoch))
        dtype = np.int32 if self.units < 2**31 else np.int64
        permutation = rng.permutation(self.units).astype(dtype)
        if path:
            os.makedirs(cache_dir, exist_ok=True)
            tmp = f"{path}.tmp{os.getpid()}.npy"
            np.save(tmp, permutation)
            os.replace(tmp, path)
        self._permutations = {epoch: permutation}
        return permutation

    def _row(self, row: int) -> np.ndarray:
        length = self.objective.row_length
        offset = (self.token_start + row * length) * self.dataset.index.dtype_size
        return np.asarray(self.dataset.bin_reader.read(dtype=self.dataset.index.dtype, count=length,
                                                       offset=offset), dtype=np.int64)

    def _example(self, document: int) -> Tuple[np.ndarray, np.ndarray]:
        start = self.dataset.document_indices[self.first_document + document]
        return (np.asarray(self.dataset[int(start)], dtype=np.int64),
                np.asarray(self.dataset[int(start) + 1], dtype=np.int64))

    def sample(self, idx: int) -> Tuple[str, PackedSample]:
        """The (kind, packed sequence) of sample idx, without tensors (for inspection)."""
        rng = np.random.default_rng(_seed_words(*self._seed_base, "sample", idx))
        if self.is_instruction:
            per_sample = self.examples_per_sample
            start = idx * per_sample
            examples = []
            for k in range(per_sample):
                position = start + k
                epoch, offset = divmod(position, self.epoch_samples * per_sample)
                permutation = self._permutation(epoch)
                examples.append(self._example(int(permutation[offset % self.units])))
            return "mip", instruction_sequence(examples, self.objective, self.special)
        epoch, offset = divmod(idx, self.epoch_samples)
        row = int(self._permutation(epoch)[offset])
        return glm_sequence(rng, self._row(row), self.objective, self.special)

    def __getitem__(self, idx: int) -> Dict[str, torch.Tensor]:
        kind, packed = self.sample(int(idx))
        window_ids, prefix_ends = mask_layout(packed.windows, self.objective.seq_length)
        return {
            "tokens": torch.from_numpy(packed.tokens),
            "labels": torch.from_numpy(packed.labels),
            "loss_mask": torch.from_numpy(packed.loss_mask.astype(np.float32)),
            "position_ids": torch.from_numpy(packed.position_ids),
            "window_ids": torch.from_numpy(window_ids),
            "prefix_ends": torch.from_numpy(prefix_ends),
            "kind": torch.tensor(KIND_CODES[kind]),
        }


def blend_weights(text_prefixes: Sequence[str], text_weights: Sequence[float],
                  instruction_prefix: Optional[str], instruction_ratio: float) -> Tuple[List[str], List[float]]:
    """Prefixes and normalised weights: text by weight within (1 - ratio), MIP exactly `ratio`."""
    total = float(sum(text_weights))
    if total <= 0:
        raise ValueError("text source weights must add up to more than 0")
    share = 1.0 - (instruction_ratio if instruction_prefix else 0.0)
    prefixes = list(text_prefixes)
    weights = [share * w / total for w in text_weights]
    if instruction_prefix:
        prefixes.append(instruction_prefix)
        weights.append(instruction_ratio)
    return prefixes, weights


def source_names(data) -> List[str]:
    """Names of the blend's datasets in `dataset_id` order (the prefixes' file names, e.g. "pile",
    "wudao", "mip"): the keys of `loss/<source>` in metrics.jsonl. Repeated names get a suffix."""
    prefixes = [s.prefix for s in data.sources] + ([data.instruction_prefix] if data.instruction_prefix else [])
    names: List[str] = []
    for prefix in prefixes:
        name = os.path.basename(prefix.rstrip("/")) or "source"
        names.append(name if name not in names else f"{name}_{len(names)}")
    return names


def objective_for_length(seq_length: int, reproduce_window_overflow: bool = False) -> GLMObjectiveConfig:
    """GLM-130B's mix at another sequence length: 2000 of every 2048 tokens are raw text."""
    row = seq_length * 2000 // 2048
    return GLMObjectiveConfig(seq_length=seq_length, row_length=row - row % 4,
                              reproduce_window_overflow=reproduce_window_overflow)


def glm_dataset_config(run, special_ids, cache_dir: str) -> GLMDatasetConfig:
    """The dataset config of a RunConfig's `data` section (special_ids: the tokenizer's SpecialIds)."""
    data = run.data
    prefixes, weights = blend_weights([s.prefix for s in data.sources], [s.weight for s in data.sources],
                                      data.instruction_prefix or None, data.instruction_ratio)
    special = SpecialTokens(mask=special_ids.mask, gmask=special_ids.gmask, sop=special_ids.sop,
                            eop=special_ids.eop, pad=special_ids.pad)
    return GLMDatasetConfig(
        random_seed=run.seed, sequence_length=run.model.seq_length, blend=(prefixes, weights),
        split=data.split, path_to_cache=data.cache_dir or cache_dir, special=special,
        objective=objective_for_length(run.model.seq_length, data.reproduce_window_overflow),
        instruction_prefixes=(data.instruction_prefix,) if data.instruction_prefix else (),
    )


def build_glm_datasets(config: GLMDatasetConfig, train_valid_test_samples: Sequence[int]):
    """[train, valid, test] datasets (None where a split is empty), built rank-0 first."""
    # Every rank builds the datasets (each pipeline stage needs positions and masks); megatron-core
    # builds on rank 0 first, so index caches are written once and loaded by the others.
    return BlendedMegatronDatasetBuilder(GLMDataset, list(train_valid_test_samples), lambda: True,
                                         config).build()
