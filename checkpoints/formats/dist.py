"""Our training format (megatron_glm.training.checkpointing): megatron-core dist_checkpointing's
torch_dist backend, which is torch.distributed.checkpoint (DCP), read and written in one process
without process groups, through DCP's public API.

    DIR/latest                 "iter_0000400"
    DIR/iter_0000400/          .metadata (DCP Metadata), *.distcp (chunks), common.pt, metadata.json

megatron-core saves global tensors: layer parameters are stacked as "decoder.layers.<name>" with
the layer index as a leading axis, TP pieces are chunks at global offsets (GeGLU fc1 as two chunks
per rank at [X1; X2] offsets), optimizer state (fully_reshardable) as "optimizer.state.<s>.<name>"
with the same chunking. So the global view is exactly our canonical whole model.

Reading: DCP's metadata (FileSystemReader.read_metadata) says which chunks cover a layer's
tensor (or a whole unstacked one) and where each chunk's torch.save blob lies in its .distcp file;
each chunk is a view of a read-only memory map of that file (torchzip.blob_layout finds its bytes),
so bytes that are only moved are copied file to file (filecopy). Chunks that a DCP stream extension
transformed are read with `dcp.load` instead. Writing: the chunks megatron-core would save at
TP x PP (one per layer and TP piece, plus the linear layers' empty `_extra_state` objects) are the
write items of one streaming `dcp.save` (DistWriter; FileSystemWriter: one file, `__0_0.distcp`;
the trainer's checkpoints have one per rank, which loading does not depend on);
dist_checkpointing.load reshards it like any training checkpoint.
Converted checkpoints carry no RNG state; their layout record has no "dp", so the trainer never
tries to restore RNG from them.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed.checkpoint as dcp
from torch.utils.serialization import config as serialization_config
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.filesystem import FileSystem
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner
from torch.distributed.checkpoint.metadata import (ChunkStorageMetadata, Metadata,
                                                   MetadataIndex, TensorProperties, TensorStorageMetadata)
from torch.distributed.checkpoint.planner import (LoadPlan, ReadItem, SavePlan, TensorWriteData, WriteItem,
                                                  WriteItemType)
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

from checkpoints import filecopy
from checkpoints.errors import CheckpointError
from checkpoints.formats.base import CheckpointInfo, Reader, WriteOptions, Writer, count_dtype
from checkpoints.mappings import ParamSpec, spec_of
from checkpoints.memory import contiguous, empty
from checkpoints.shapes import GLMShape
from checkpoints.torchzip import blob_layout
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
        self._files: Dict[Path, Any] = {}  # open .distcp files, for reading chunk headers
        self._maps: Dict[Path, torch.UntypedStorage] = {}  # their private read-only memory maps
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
        offsets = [layer] + [0] * len(expected) if layer is not None else [0] * len(expected)
        sizes = [1] + list(expected) if layer is not None else list(expected)
        region = ChunkStorageMetadata(torch.Size(offsets), torch.Size(sizes))
        # DCP's resharding step: which part of which saved chunk fills which part of the region
        items = create_read_items_for_chunk_list(fqn, meta, [region])
        covered = sum(torch.Size(item.lengths).numel() for item in items)
        if covered != region.sizes.numel():
            raise CheckpointError(f"chunks cover {covered} of {region.sizes.numel()} values", self.dir / ".metadata",
                                  fqn, hint="the checkpoint is incomplete")
        by_offset = {tuple(chunk.offsets): chunk for chunk in meta.chunks}
        chunks = [by_offset[tuple(item.storage_index.offset)] for item in items]
        mapped = [self._mapped_chunk(fqn, chunk) for chunk in chunks]  # checks each chunk's file exists
        if None in mapped:
            return self._read_with_dcp(fqn, region, chunks, expected, layer is not None)
        return self._assemble(region, expected, layer is not None, items, mapped)

    def _assemble(self, region: ChunkStorageMetadata, shape: Tuple[int, ...], stacked: bool,
                  items: List[ReadItem], mapped: List[Tuple[torch.Tensor, str, int]]) -> torch.Tensor:
        """`region` from its memory-mapped chunks: a view of the chunk when one chunk holds all of
        it (nothing read until touched), else the chunks' parts copied into a buffer. Either way
        the converter learns which bytes are unchanged file bytes (filecopy)."""
        if len(items) == 1 and items[0].lengths == region.sizes:
            tensor, path, file_offset = mapped[0]
            view = _narrow(tensor, items[0].storage_offsets, items[0].lengths)
            out = view[0] if stacked else view
            if out.is_contiguous():
                filecopy.attach(out, [(0, out.numel() * out.element_size(), path,
                                       file_offset + view.data_ptr() - tensor.data_ptr())])
            return out
        out = empty(shape, mapped[0][0].dtype, "read")
        target = out.unsqueeze(0) if stacked else out
        extents: List[filecopy.Extent] = []
        for item, (tensor, path, file_offset) in zip(items, mapped):
            source = _narrow(tensor, item.storage_offsets, item.lengths)
            destination = _narrow(target, item.dest_offsets, item.lengths)
            destination.copy_(source)
            if source.is_contiguous() and destination.is_contiguous() and destination.numel():
                extents.append((destination.data_ptr() - out.data_ptr(), destination.numel() * out.element_size(),
                                path, file_offset + source.data_ptr() - tensor.data_ptr()))
        filecopy.attach(out, extents)
        return out

    def _mapped_chunk(self, fqn: str, chunk: ChunkStorageMetadata) -> Optional[Tuple[torch.Tensor, str, int]]:
        """`chunk` of `fqn` as a view of its .distcp file's memory map, with that file and the file
        offset of its first byte; None when the chunk is not a plain torch.save blob of one tensor
        (a stream extension transformed it): DCP's own reader reads those.

        Not dcp.load, measured: FileSystemReader torch.loads every chunk from a file stream into
        fresh memory and copies it again into the destination, so none of a dist source's bytes
        could be copied file to file. dist TP2xPP2 -> safetensors of a 1.11 GB model on the 2-core
        machine (2026-12-05, bench/RESULTS.md) took 6.8-8.5 s through dcp.load and 3.3-3.5 s from
        the maps, the rest of the code unchanged."""
        file = self._chunk_file(fqn, chunk)
        info = self.metadata.storage_data[MetadataIndex(fqn, chunk.offsets)]
        if getattr(info, "transform_descriptors", None):
            return None
        dtype = self._meta(fqn).properties.dtype
        try:
            if file not in self._files:
                self._files[file] = open(file, "rb")
            layout = blob_layout(self._files[file], info.offset, info.length)
        except Exception as error:  # zipfile / unpickling errors of a damaged blob
            raise CheckpointError(f"unreadable chunk at {tuple(chunk.offsets)} ({error.__class__.__name__})", file,
                                  fqn, hint="the file is corrupt") from None
        if layout is None:
            return None
        meta, data_offset = layout
        if tuple(meta.shape) != tuple(chunk.sizes) or meta.dtype != dtype:
            raise CheckpointError(f"the chunk at {tuple(chunk.offsets)} holds {tuple(meta.shape)} {meta.dtype}, the "
                                  f"metadata says {tuple(chunk.sizes)} {dtype}", file, fqn, hint="the file is corrupt")
        nbytes = meta.untyped_storage().nbytes()
        if file not in self._maps:
            self._maps[file] = torch.UntypedStorage.from_file(str(file), False, file.stat().st_size)
        if data_offset + nbytes > self._maps[file].nbytes():
            raise CheckpointError(f"the chunk at {tuple(chunk.offsets)} ends past the end of the file", file, fqn,
                                  hint="the file is truncated: copy it again")
        storage = self._maps[file][data_offset: data_offset + nbytes]
        tensor = torch.empty(0, dtype=dtype).set_(storage, meta.storage_offset(), meta.shape, meta.stride())
        return tensor, str(file), data_offset + meta.storage_offset() * dtype.itemsize

    def _read_with_dcp(self, fqn: str, region: ChunkStorageMetadata, chunks: List[ChunkStorageMetadata],
                       shape: Tuple[int, ...], stacked: bool) -> torch.Tensor:
        """`region` read by dcp.load from `chunks`, the saved chunks that hold it."""
        out = empty(shape, self._meta(fqn).properties.dtype, "read")
        try:
            self._load(fqn, region, out.unsqueeze(0) if stacked else out)
        except (Exception, dcp.CheckpointException) as error:  # the latter is a BaseException
            raise self._corrupt(fqn, chunks, error) from None
        return out

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._files.clear()
        self._maps.clear()  # a map goes away with the last tensor that views it

    def _load(self, fqn: str, region: ChunkStorageMetadata, target: torch.Tensor) -> None:
        """dcp.load of `region` (global offsets and sizes) of tensor `fqn` into `target`."""
        with warnings.catch_warnings():  # "torch.distributed is disabled ...: load in a single process": yes
            warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
            dcp.load({fqn: target}, storage_reader=self._storage, planner=_ChunkPlanner(region), no_dist=True)

    def _corrupt(self, fqn: str, chunks: List[ChunkStorageMetadata], error: Exception) -> CheckpointError:
        """The error of a failed read, naming the file: each of the region's chunks is read on its own."""
        culprit = self.dir
        for chunk in chunks:
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


def _narrow(tensor: torch.Tensor, offsets, lengths) -> torch.Tensor:
    """The view of `tensor` at `offsets` of `lengths` in every dimension."""
    for dim, (offset, length) in enumerate(zip(offsets, lengths)):
        tensor = tensor.narrow(dim, offset, length)
    return tensor


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

    def create_local_plan(self) -> LoadPlan:
        (fqn, target), = self.state_dict.items()
        return LoadPlan(create_read_items_for_chunk_list(fqn, self.metadata.state_dict_metadata[fqn], [self.chunk]))

    def lookup_tensor(self, index: MetadataIndex) -> torch.Tensor:
        return self.state_dict[index.fqn]  # the region itself: read items' dest_offsets are relative to it


class DistWriter(Writer):
    """Chunks as megatron-core saves them at TP x PP (one per layer and TP piece, at global offsets),
    written by one streaming torch.distributed.checkpoint.save (FileSystemWriter, one process, one
    file): every chunk's shape and dtype are known before any tensor is read, so the save plan lists
    them all up front, and DCP takes each chunk's data from the converter as it writes it
    (write_all). No chunk is held in memory or staged in a spill file; bytes that are unchanged
    source bytes are copied file to file (filecopy.KernelCopyFile)."""

    def __init__(self, root: Path, glm: GLMShape, options: WriteOptions, step: Optional[int],
                 dtypes: Dict[str, torch.dtype], carried_common: Dict[str, Any], source_format: str,
                 extras: Sequence[str] = ()):
        if options.quantize:
            raise CheckpointError(f"--to dist --quantize {options.quantize}: dist checkpoints are for training and "
                                  "hold no quantised weights", hint="quantise with --to sat or --to safetensors")
        self.glm, self.options = glm, options
        self.step = step if step is not None else 0
        self.dir = root / f"iter_{self.step:07d}"
        self.dir.mkdir(parents=True)
        write_latest(root, self.dir.name)
        self.tp, self.pp = options.tp, options.pp
        self.carried = carried_common
        self.source_format = source_format
        self.extras = list(extras)
        self.items: List[WriteItem] = []
        for key, spec, layer in glm.entries():
            self._plan(_stacked(key)[0], spec, layer, dtypes[key])
        for key in self.extras:
            spec, layer = spec_for(key)
            self._plan(_optimizer_fqn(key), spec, layer, dtypes[key])
        self._copy: Optional[Tuple[int, int, Optional[List[Tuple[str, int, int]]]]] = None
        self._failure: Optional[BaseException] = None

    def _pieces(self, spec: ParamSpec, shape: Tuple[int, ...]) -> List[Tuple[int, Optional[int]]]:
        """(start, length) along the mapping's dim of each chunk of one layer's tensor, in rank order;
        [(0, None)] when it is saved whole (replicated, or TP1)."""
        mapping = spec.mapping
        if mapping.dim is None or self.tp == 1:
            return [(0, None)]
        return [piece for rank in range(self.tp) for piece in mapping.ranges(shape[mapping.dim], self.tp, rank)]

    def _plan(self, fqn: str, spec: ParamSpec, layer: Optional[int], source: torch.dtype) -> None:
        shape = tuple(spec.shape(self.glm))
        dtype = self.options.target_dtype(torch.empty(0, dtype=source))
        size = torch.Size(([self.glm.num_layers] if layer is not None else []) + list(shape))
        for start, length in self._pieces(spec, shape):
            offsets, sizes = [0] * len(shape), list(shape)
            if length is not None:
                offsets[spec.mapping.dim], sizes[spec.mapping.dim] = start, length
            if layer is not None:
                offsets, sizes = [layer] + offsets, [1] + sizes
            self.items.append(WriteItem(
                index=MetadataIndex(fqn, torch.Size(offsets)), type=WriteItemType.SHARD,
                tensor_data=TensorWriteData(chunk=ChunkStorageMetadata(torch.Size(offsets), torch.Size(sizes)),
                                            properties=TensorProperties(dtype=dtype), size=size)))

    def _chunks(self, tensors: Iterator[Tuple[str, ParamSpec, Optional[int], torch.Tensor, bool]]
                ) -> Iterator[Tuple[MetadataIndex, torch.Tensor]]:
        """Each planned chunk's index and data, cut from the converter's tensors as DCP asks for them."""
        planned = iter(self.items)
        try:
            for key, spec, layer, full, extra in tensors:
                fqn = _optimizer_fqn(key) if extra else _stacked(key)[0]
                full = full.to(self.options.target_dtype(full))
                for start, length in self._pieces(spec, tuple(full.shape)):
                    piece = full if length is None else full.narrow(spec.mapping.dim, start, length)
                    piece = _exact(piece.unsqueeze(0) if layer is not None else piece)
                    nbytes = piece.numel() * piece.element_size()
                    self._copy = (piece.data_ptr(), nbytes, filecopy.source_ranges(piece))
                    item = next(planned, None)
                    if item is None or item.index.fqn != fqn or item.tensor_data.chunk.sizes != piece.shape:
                        raise CheckpointError(f"{fqn}: the chunk of shape {tuple(piece.shape)} was not planned next",
                                              self.dir, key)
                    yield item.index, piece
        except BaseException as error:  # dcp.save wraps what it catches; convert() raises it as it was
            self._failure = error
            raise

    def _locate(self, address: int, nbytes: int) -> Optional[List[Tuple[str, int, int]]]:
        """Where the chunk DCP is writing (its bytes at `address`) lies in a source file, if anywhere."""
        if self._copy is not None and self._copy[:2] == (address, nbytes):
            return self._copy[2]
        return None

    def write_all(self, tensors) -> None:
        extra = self._extra_states()
        items = [WriteItem(index=MetadataIndex(name), type=WriteItemType.BYTE_IO) for name in extra] + self.items
        planner = _StreamingPlanner(items, extra, self._chunks(iter(tensors)))
        config = serialization_config.save
        previous, config.compute_crc32 = config.compute_crc32, False  # a full pass over every byte: not needed
        try:
            with warnings.catch_warnings():  # "torch.distributed is disabled ...: one process": yes
                warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
                dcp.save({}, storage_writer=_KernelCopyWriter(str(self.dir), self._locate), planner=planner,
                         no_dist=True)
        except BaseException:
            if self._failure is not None:
                raise self._failure from None
            raise
        finally:
            config.compute_crc32 = previous
        planner.check_all_written(self.dir)
        (self.dir / "metadata.json").write_text(json.dumps(METADATA_JSON))
        source = dict(self.carried.get("common", {}))
        common = {key: source[key] for key in ("loop", "scheduler") if key in source}
        common.update(step=self.step, layout={"tp": self.tp, "pp": self.pp}, glm_model=self.glm.to_dict(),
                      converted_from=self.source_format)
        top: Dict[str, Any] = {"common": common}
        if self.extras and "optimizer" in self.carried:
            top["optimizer"] = self.carried["optimizer"]
        torch.save(top, self.dir / "common.pt")

    def _extra_states(self) -> Dict[str, io.BytesIO]:
        """megatron-core saves each linear layer's (empty) `_extra_state` and loads it strictly."""
        buffer = io.BytesIO()
        torch.save([None], buffer)
        names = ["output_layer._extra_state/shard_0_1"]
        for layer in range(self.glm.num_layers):
            names += [f"decoder.layers.{module}._extra_state/shard_{layer}_{self.glm.num_layers}"
                      for module in _EXTRA_STATE_MODULES]
        return {name: io.BytesIO(buffer.getvalue()) for name in names}


def _optimizer_fqn(key: str) -> str:
    """"optimizer.state.exp_avg.decoder.layers.3.x" -> "optimizer.state.exp_avg.decoder.layers.x"."""
    state, param = key[len(_OPTIMIZER):].split(".", 1)
    return f"{_OPTIMIZER}{state}.{_stacked(param)[0]}"


def _exact(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor`, contiguous, over a storage of exactly its bytes: DCP's writer clones any tensor
    whose storage is larger (fresh memory for every chunk), and torch.save writes whole storages."""
    tensor = contiguous(tensor, "contig")
    nbytes = tensor.numel() * tensor.element_size()
    start = tensor.storage_offset() * tensor.element_size()
    if start == 0 and tensor.untyped_storage().nbytes() == nbytes:
        return tensor
    storage = tensor.untyped_storage()[start: start + nbytes]  # shares the memory
    return torch.empty(0, dtype=tensor.dtype).set_(storage, 0, tensor.shape)


class _KernelCopyFileSystem(FileSystem):
    """DCP's local file system whose output streams copy unchanged source bytes in the kernel
    (filecopy.KernelCopyFile): DCP's storage layer is made for replacing the file system this way."""

    def __init__(self, locate):
        super().__init__()
        self.locate = locate

    @contextlib.contextmanager
    def create_stream(self, path, mode: str):
        with super().create_stream(path, mode) as stream:
            yield filecopy.KernelCopyFile(stream, self.locate) if "w" in mode else stream


class _KernelCopyWriter(FileSystemWriter):
    """FileSystemWriter (one file, no fsync: convert() publishes the directory by rename) whose
    chunk bytes are copied file to file where they are unchanged source bytes."""

    def __init__(self, path: str, locate):
        super().__init__(path, sync_files=False)
        self.fs = _KernelCopyFileSystem(locate)


class _StreamingPlanner(DefaultSavePlanner):
    """dcp.save of prepared write items (tensor chunks at global offsets, byte objects); resolve_data
    hands DCP each chunk when it writes it, taken from `chunks` in plan order."""

    def __init__(self, items: List[WriteItem], byte_data: Dict[str, io.BytesIO],
                 chunks: Iterator[Tuple[MetadataIndex, torch.Tensor]]):
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self._items, self._bytes, self._chunks = items, byte_data, chunks
        self._written = 0

    def create_local_plan(self) -> SavePlan:
        self.plan = SavePlan(self._items)
        return self.plan

    def resolve_data(self, write_item: WriteItem):
        if write_item.type == WriteItemType.BYTE_IO:
            return self._bytes[write_item.index.fqn]
        index, chunk = next(self._chunks, (None, None))
        if index != write_item.index:
            raise CheckpointError(f"torch.distributed.checkpoint asked for the chunk {write_item.index} while the "
                                  f"next one is {index}: the save plan was reordered")
        self._written += 1
        return chunk

    def check_all_written(self, where: Path) -> None:
        planned = sum(item.type != WriteItemType.BYTE_IO for item in self._items)
        if self._written != planned or next(self._chunks, None) is not None:
            raise CheckpointError(f"{self._written} of {planned} planned chunks were written", where)


def spec_for(key: str) -> Tuple[ParamSpec, Optional[int]]:
    """The ParamSpec and layer of a canonical or optimizer-state key."""
    if key.startswith(_OPTIMIZER):
        key = key[len(_OPTIMIZER):].split(".", 1)[1]
    return spec_of(key)
