"""Our training format (megatron_glm.training.checkpointing): megatron-core dist_checkpointing's
torch_dist backend, which is torch.distributed.checkpoint (DCP), read and written in one process
without process groups, through DCP's public API.

    DIR/latest                 "iter_0000400"
    DIR/iter_0000400/          .metadata (DCP Metadata), *.distcp (chunks), common.pt, metadata.json

megatron-core saves global tensors: layer parameters are stacked as "decoder.layers.<name>" with
the layer index as a leading axis, TP pieces are chunks at global offsets (GeGLU fc1 as two chunks
per rank at [X1; X2] offsets), optimizer state (fully_reshardable) as "optimizer.state.<s>.<name>"
with the same chunking. So the global view is exactly our canonical whole model.

Reading: one layer's tensor (or a whole unstacked one) is one `dcp.load` of that region of the
global tensor into a buffer of its shape (a DefaultLoadPlanner whose local plan is the read items of
that region, `planner_helpers.create_read_items_for_chunk_list`); FileSystemReader reads each
chunk it needs. Writing: the chunks megatron-core would save at TP x PP (one per layer and TP piece,
plus the linear layers' empty `_extra_state` objects) are write items of one `dcp.save` at close()
(FileSystemWriter: one file, `__0_0.distcp`; the trainer's checkpoints have one per rank, which
loading does not depend on); dist_checkpointing.load reshards it like any training checkpoint.
Converted checkpoints carry no RNG state; their layout record has no "dp", so the trainer never
tries to restore RNG from them.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed.checkpoint as dcp
from torch.utils.serialization import config as serialization_config
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner
from torch.distributed.checkpoint.metadata import (ChunkStorageMetadata, Metadata,
                                                   MetadataIndex, TensorProperties, TensorStorageMetadata)
from torch.distributed.checkpoint.planner import LoadPlan, SavePlan, TensorWriteData, WriteItem, WriteItemType
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

from checkpoints import filecopy
from checkpoints.errors import CheckpointError
from checkpoints.formats.base import CheckpointInfo, Reader, WriteOptions, Writer, count_dtype
from checkpoints.mappings import ParamSpec, spec_of
from checkpoints.memory import empty
from checkpoints.shapes import GLMShape
from megatron_glm.rundir import MANIFEST, read_latest, write_latest
from megatron_glm.training.manifest import ManifestError, has_manifest, read_manifest, verify_files

METADATA_JSON = {"sharded_backend": "torch_dist", "sharded_backend_version": 1, "common_backend": "torch",
                 "common_backend_version": 1}
_EXTRA_STATE_MODULES = ("self_attention.linear_proj", "self_attention.linear_qkv", "mlp.linear_fc1", "mlp.linear_fc2")
_OPTIMIZER = "optimizer.state."


def checkpoint_dir(path: Path) -> Optional[Path]:
    """The iter_* directory of a dist checkpoint (following `latest`), or None if `path` is not one."""
    path = Path(path)
    if (path / ".metadata").is_file() and (path / "metadata.json").is_file():
        return path
    name, problem = read_latest(path)
    if name is not None and problem is None and (path / name / ".metadata").is_file():
        return path / name
    return None


def _check_manifest(directory: Path) -> None:
    """A checkpoint the trainer wrote lists its files in manifest.json: a missing or truncated
    file is reported here, before anything is read (`glm-ckpt verify` also checks the CRCs)."""
    if not has_manifest(directory):
        return
    try:
        record = read_manifest(directory)
    except ManifestError as error:
        raise CheckpointError(error.problem, directory / MANIFEST) from None
    problems = verify_files(directory, record, record["files"], checksums=False)
    if problems:
        raise CheckpointError(problems[0].problem, directory / (problems[0].file or ""),
                              hint="the checkpoint is incomplete or damaged; `glm-ckpt verify` lists every problem")


def _stacked(key: str) -> Tuple[str, Optional[int]]:
    """canonical "decoder.layers.3.mlp.x" -> ("decoder.layers.mlp.x", 3); other keys unchanged."""
    parts = key.split(".")
    if parts[:2] == ["decoder", "layers"] and len(parts) > 3 and parts[2].isdigit():
        return ".".join(parts[:2] + parts[3:]), int(parts[2])
    return key, None


class DistReader(Reader):
    def __init__(self, path: Path, num_attention_heads: Optional[int] = None, layernorm_epsilon: float = 1e-5,
                 rotary_base: int = 10000):
        self.dir = checkpoint_dir(path)
        if self.dir is None:
            raise CheckpointError("not a dist checkpoint (no .metadata)", path)
        _check_manifest(self.dir)
        try:
            self._storage = _MetadataOnce(str(self.dir))
            self.metadata: Metadata = self._storage.read_metadata()
        except Exception as error:
            raise CheckpointError(f"cannot read the checkpoint metadata ({error.__class__.__name__})",
                                  self.dir / ".metadata", hint="the file is truncated or corrupt") from None
        self.top = self._load_common()
        common = self.top.get("common", {})
        self.tensors = {k: v for k, v in self.metadata.state_dict_metadata.items()
                        if isinstance(v, TensorStorageMetadata)}
        self.glm = self._shape(common, num_attention_heads, layernorm_epsilon, rotary_base)
        layout = common.get("layout", {})
        loop = common.get("loop", {})
        self.has_optimizer = any(k.startswith(_OPTIMIZER) for k in self.tensors)
        self.info = CheckpointInfo("dist", str(self.dir), step=common.get("step", loop.get("step")),
                                   consumed_samples=loop.get("consumed_samples", common.get("consumed_samples")),
                                   tp=layout.get("tp", 1), pp=layout.get("pp", 1), has_optimizer=self.has_optimizer,
                                   common=self.top)
        for name, meta in self.tensors.items():
            if not name.startswith(_OPTIMIZER):
                count_dtype(self.info, meta.properties.dtype, meta.size.numel(),
                            meta.size.numel() * meta.properties.dtype.itemsize)

    def _load_common(self) -> Dict[str, Any]:
        file = self.dir / "common.pt"
        if not file.is_file():
            raise CheckpointError("common state is missing", file, hint="the checkpoint is incomplete")
        try:
            return torch.load(file, weights_only=True)
        except Exception as error:
            raise CheckpointError(f"cannot read ({error.__class__.__name__})", file,
                                  hint="the file is truncated or corrupt") from None

    def _meta(self, name: str) -> TensorStorageMetadata:
        meta = self.tensors.get(name)
        if meta is None:
            raise CheckpointError("key is missing", self.dir / ".metadata", name,
                                  hint="not a complete GLM training checkpoint")
        return meta

    def _shape(self, common, heads, eps, rotary_base) -> GLMShape:
        if "glm_model" in common:
            glm = GLMShape.from_dict(common["glm_model"], self.dir / "common.pt")
        else:
            if heads is None:
                raise CheckpointError("the number of attention heads is not recorded in this checkpoint",
                                      self.dir, hint="pass --num-attention-heads or --model PRESET")
            embedding = self._meta("embedding.word_embeddings.weight").size
            fc1 = self._meta("decoder.layers.mlp.linear_fc1.weight").size
            glm = GLMShape(num_layers=fc1[0], hidden_size=embedding[1], num_attention_heads=heads,
                           ffn_hidden_size=fc1[1] // 2, padded_vocab_size=embedding[0],
                           layernorm_epsilon=eps, rotary_base=rotary_base)
        glm.validate(self.dir)
        return glm

    def dtype(self, key: str) -> torch.dtype:
        if key.startswith(_OPTIMIZER):
            state, key = key[len(_OPTIMIZER):].split(".", 1)
            return self._meta(f"{_OPTIMIZER}{state}.{_stacked(key)[0]}").properties.dtype
        return self._meta(_stacked(key)[0]).properties.dtype

    def extra_keys(self) -> List[str]:
        keys = []
        for name in self.tensors:
            if not name.startswith(_OPTIMIZER):
                continue
            state, param = name[len(_OPTIMIZER):].split(".", 1)
            if param.startswith("decoder.layers."):
                keys.extend(f"{_OPTIMIZER}{state}.decoder.layers.{i}.{param[len('decoder.layers.'):]}"
                            for i in range(self.glm.num_layers))
            else:
                keys.append(name)
        return keys

    def read(self, key: str, spec: ParamSpec) -> torch.Tensor:
        prefix = ""
        if key.startswith(_OPTIMIZER):
            state, key = key[len(_OPTIMIZER):].split(".", 1)
            prefix = f"{_OPTIMIZER}{state}."
        name, layer = _stacked(key)
        fqn = prefix + name
        meta = self._meta(fqn)
        expected = tuple(spec.shape(self.glm))
        stored = tuple(meta.size[1:]) if layer is not None else tuple(meta.size)
        if stored != expected or (layer is not None and meta.size[0] != self.glm.num_layers):
            raise CheckpointError(f"global shape {tuple(meta.size)}, expected {expected} per layer"
                                  if layer is not None else f"shape {tuple(meta.size)}, expected {expected}",
                                  self.dir / ".metadata", fqn, hint="shape mismatch: another model's checkpoint?")
        out = empty(expected, meta.properties.dtype, "read")
        offsets = [layer] + [0] * out.dim() if layer is not None else [0] * out.dim()
        sizes = [1] + list(expected) if layer is not None else list(expected)
        region = ChunkStorageMetadata(torch.Size(offsets), torch.Size(sizes))
        try:
            covered = self._load(fqn, region, out.unsqueeze(0) if layer is not None else out)
        except CheckpointError:
            raise
        except (Exception, dcp.CheckpointException) as error:  # the latter is a BaseException
            raise self._corrupt(fqn, region, error) from None
        if covered != out.numel():
            raise CheckpointError(f"chunks cover {covered} of {out.numel()} values", self.dir / ".metadata", fqn,
                                  hint="the checkpoint is incomplete")
        return out

    def _load(self, fqn: str, region: ChunkStorageMetadata, target: torch.Tensor) -> int:
        """dcp.load of `region` (global offsets and sizes) of tensor `fqn` into `target`; values read."""
        for chunk in self._meta(fqn).chunks:
            if _overlap(region, chunk):
                self._chunk_file(fqn, chunk)
        planner = _ChunkPlanner(region)
        with warnings.catch_warnings():  # "torch.distributed is disabled ...: load in a single process": yes
            warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
            dcp.load({fqn: target}, storage_reader=self._storage, planner=planner, no_dist=True)
        return planner.covered

    def _corrupt(self, fqn: str, region: ChunkStorageMetadata, error: Exception) -> CheckpointError:
        """The error of a failed read, naming the file: each chunk of the region is read on its own."""
        culprit = self.dir
        for chunk in self._meta(fqn).chunks:
            if not _overlap(region, chunk):
                continue
            part = ChunkStorageMetadata(chunk.offsets, chunk.sizes)
            try:
                self._load(fqn, part, torch.empty(tuple(chunk.sizes), dtype=self._meta(fqn).properties.dtype))
            except (Exception, dcp.CheckpointException):
                culprit = self._chunk_file(fqn, chunk)
                break
        first = str(error).strip().splitlines()[-1] if str(error).strip() else ""
        return CheckpointError(f"unreadable chunk ({error.__class__.__name__}: {first[:200]})", culprit, fqn,
                               hint="the file is corrupt")

    def _chunk_file(self, fqn: str, chunk: ChunkStorageMetadata) -> Path:
        """The file holding `chunk` (named in FileSystemWriter's storage record), checked to exist."""
        info = self.metadata.storage_data.get(MetadataIndex(fqn, chunk.offsets))
        if info is None:
            raise CheckpointError(f"no storage for the chunk at {tuple(chunk.offsets)}", self.dir / ".metadata", fqn)
        file = self.dir / info.relative_path
        if not file.is_file():
            raise CheckpointError("shard file is missing", file, fqn, hint="copy every __*.distcp file")
        return file


def _overlap(a: ChunkStorageMetadata, b: ChunkStorageMetadata) -> bool:
    return all(x < y + n and y < x + m for x, m, y, n in zip(a.offsets, a.sizes, b.offsets, b.sizes))


class _MetadataOnce(FileSystemReader):
    """FileSystemReader that reads and unpickles .metadata once, not once per dcp.load."""

    def read_metadata(self, *args, **kwargs) -> Metadata:
        if not hasattr(self, "_metadata_once"):
            self._metadata_once = super().read_metadata(*args, **kwargs)
        return self._metadata_once


class _ChunkPlanner(DefaultLoadPlanner):
    """dcp.load of one region (`chunk`: global offsets and sizes) of one tensor into the state dict's
    tensor of that region's shape (one layer of a stacked tensor, or a whole tensor)."""

    def __init__(self, chunk: ChunkStorageMetadata):
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self.chunk = chunk
        self.covered = 0

    def create_local_plan(self) -> LoadPlan:
        (fqn, target), = self.state_dict.items()
        items = create_read_items_for_chunk_list(fqn, self.metadata.state_dict_metadata[fqn], [self.chunk])
        for item in items:
            numel = 1
            for length in item.lengths:
                numel *= length
            self.covered += numel
        return LoadPlan(items)

    def lookup_tensor(self, index: MetadataIndex) -> torch.Tensor:
        return self.state_dict[index.fqn]  # the region itself: read items' dest_offsets are relative to it


class DistWriter(Writer):
    """Chunks as megatron-core saves them at TP x PP (one per layer and TP piece, at global offsets),
    written at close() by torch.distributed.checkpoint.save (FileSystemWriter, one process, one
    file). Until then each chunk is held as a view of a file map, not in memory (filecopy.Staging)."""

    def __init__(self, root: Path, glm: GLMShape, options: WriteOptions, step: Optional[int],
                 dtypes: Dict[str, torch.dtype], carried_common: Dict[str, Any], source_format: str):
        if options.quantize:
            raise CheckpointError(f"--to dist --quantize {options.quantize}: dist checkpoints are for training and "
                                  "hold no quantised weights", hint="quantise with --to sat or --to safetensors")
        self.glm, self.options = glm, options
        self.step = step if step is not None else 0
        self.dir = root / f"iter_{self.step:07d}"
        self.dir.mkdir(parents=True)
        write_latest(root, self.dir.name)
        self.tp, self.pp = options.tp, options.pp
        self.layers_per_stage = glm.num_layers // self.pp
        self.carried = carried_common
        self.source_format = source_format
        self.items: List[WriteItem] = []
        self.staging = filecopy.Staging(str(root / ".chunks.spill"))
        self.wrote_optimizer = False

    def _stage(self, spec: ParamSpec, layer: Optional[int]) -> int:
        if layer is not None:
            return layer // self.layers_per_stage
        return 0 if spec.first else self.pp - 1

    def _write(self, fqn: str, spec: ParamSpec, layer: Optional[int], full: torch.Tensor) -> None:
        full = full.to(self.options.target_dtype(full))
        size = torch.Size(([self.glm.num_layers] if layer is not None else []) + list(full.shape))
        mapping = spec.mapping
        split = mapping.dim is not None and self.tp > 1
        for tp_rank in range(self.tp if split else 1):
            ranges = mapping.ranges(full.shape[mapping.dim], self.tp, tp_rank) if split else [(0, None)]
            for start, length in ranges:
                piece = full.narrow(mapping.dim, start, length) if split else full
                offsets = [0] * full.dim()
                if split:
                    offsets[mapping.dim] = start
                if layer is not None:
                    piece, offsets = piece.unsqueeze(0), [layer] + offsets
                index = MetadataIndex(fqn, torch.Size(offsets))
                self.staging.add(f"{fqn}@{tuple(offsets)}", piece)
                self.items.append(WriteItem(index=index, type=WriteItemType.SHARD, tensor_data=TensorWriteData(
                    chunk=ChunkStorageMetadata(torch.Size(offsets), piece.shape),
                    properties=TensorProperties(dtype=piece.dtype), size=size)))

    def write(self, key: str, spec: ParamSpec, layer: Optional[int], full: torch.Tensor) -> None:
        self._write(_stacked(key)[0], spec, layer, full)

    def write_extra(self, key: str, spec: ParamSpec, layer: Optional[int], full: torch.Tensor) -> None:
        state, param = key[len(_OPTIMIZER):].split(".", 1)
        self._write(f"{_OPTIMIZER}{state}.{_stacked(param)[0]}", spec, layer, full)
        self.wrote_optimizer = True

    def _extra_states(self) -> Dict[str, io.BytesIO]:
        """megatron-core saves each linear layer's (empty) `_extra_state` and loads it strictly."""
        buffer = io.BytesIO()
        torch.save([None], buffer)
        names = ["output_layer._extra_state/shard_0_1"]
        for layer in range(self.glm.num_layers):
            names += [f"decoder.layers.{module}._extra_state/shard_{layer}_{self.glm.num_layers}"
                      for module in _EXTRA_STATE_MODULES]
        return {name: io.BytesIO(buffer.getvalue()) for name in names}

    def close(self) -> None:
        try:
            extra = self._extra_states()
            items = [WriteItem(index=MetadataIndex(name), type=WriteItemType.BYTE_IO) for name in extra] + self.items
            tensors = self.staging.tensors()
            data = {item.index.fqn: extra[item.index.fqn] for item in items if item.type == WriteItemType.BYTE_IO}
            data.update({f"{item.index.fqn}@{tuple(item.index.offset)}": None for item in self.items})
            for name in data:
                if data[name] is None:
                    data[name] = tensors[name]
            config = serialization_config.save
            previous, config.compute_crc32 = config.compute_crc32, False  # a full pass over every byte: not needed
            try:
                with warnings.catch_warnings():  # "torch.distributed is disabled ...: one process": yes
                    warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
                    dcp.save({}, storage_writer=FileSystemWriter(str(self.dir), sync_files=False),
                             planner=_ItemsPlanner(items, data), no_dist=True)
            finally:
                config.compute_crc32 = previous
        finally:
            self.staging.close()
        (self.dir / "metadata.json").write_text(json.dumps(METADATA_JSON))
        source = dict(self.carried.get("common", {}))
        common = {key: source[key] for key in ("loop", "scheduler") if key in source}
        common.update(step=self.step, layout={"tp": self.tp, "pp": self.pp}, glm_model=self.glm.to_dict(),
                      converted_from=self.source_format)
        top: Dict[str, Any] = {"common": common}
        if self.wrote_optimizer and "optimizer" in self.carried:
            top["optimizer"] = self.carried["optimizer"]
        torch.save(top, self.dir / "common.pt")


class _ItemsPlanner(DefaultSavePlanner):
    """dcp.save of prepared write items (tensor chunks at global offsets, byte objects); resolve_data
    hands each one's data to the storage writer when it writes it."""

    def __init__(self, items: List[WriteItem], data: Dict[str, Any]):
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self._items, self._data = items, data

    def create_local_plan(self) -> SavePlan:
        self.plan = SavePlan(self._items)
        return self.plan

    def resolve_data(self, write_item: WriteItem):
        if write_item.type == WriteItemType.BYTE_IO:
            return self._data[write_item.index.fqn]
        return self._data[f"{write_item.index.fqn}@{tuple(write_item.index.offset)}"]


def spec_for(key: str) -> Tuple[ParamSpec, Optional[int]]:
    """The ParamSpec and layer of a canonical or optimizer-state key."""
    if key.startswith(_OPTIMIZER):
        key = key[len(_OPTIMIZER):].split(".", 1)[1]
    return spec_of(key)
