"""Inference on any checkpoint glm-ckpt reads: our real megatron-core GLMModel, full forwards and a
KV cache (docs/generation.md).

    model = load_inference_model("runs/demo/run/checkpoints")          # dist, SAT or safetensors
    logits = model.logits(tokens, position_ids, attention_mask)          # fp32 [b, s, padded vocab]
    cache = model.new_cache(batch_size=1, max_length=300)
    last = model.extend(cache, tokens, position_ids, attention_mask, logits_at=ctx_len - 1)   # prefill
    step = model.extend(cache, new_tokens[:, None], new_positions[:, None], row_mask)         # decode

Inputs follow GLM-130B (docs/glm130b.md §1.3): token ids and explicit position ids [b, s], and a
boolean attention mask, True = masked. A full forward takes [b, 1, s, s]; `extend` takes the rows
of the new tokens over every column cached so far plus the new ones, [b, 1, n, cache.length + n].

Layouts: in one process with no process group, the model is built at TP1 x PP1 in a throw-away
one-process group (as glm-ckpt forward does), kept for the model's lifetime. Under torch.distributed
with megatron-core's parallel_state initialised (TP x PP), every rank reads the whole checkpoint and
keeps its shard (megatron_glm.model.tp_shard); logits are gathered over TP and broadcast from the
last pipeline stage, so every rank gets the same full-vocabulary logits and can run the same
generation loop.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Mapping, Optional, Union

import torch
import torch.distributed as dist


SPECIAL_TOKEN_NAMES = ("pad", "mask", "gmask", "smask", "eod", "sop", "eop", "eos")
"""The special tokens generation needs: GLM's seven (megatron_glm.data.tokenizer) plus `eos`, which
GLM-130B appends to prompts that do not end with a mask and treats as an end token."""

GLM_130B_EOS = 20002
"""icetk's `</s>` (GLM-130B's `eos`)."""

DEFAULT_MAX_SEQUENCE_LENGTH = 2048
"""GLM-130B's sequence length: the limit for checkpoints that record none (SAT, safetensors)."""


class InferenceError(ValueError):
    """A checkpoint, tokenizer or input that inference cannot use; the message says why."""


def parse_special_token_ids(text: str) -> Dict[str, int]:
    """'mask=150000,gmask=150001,eos=20002' -> dict; megatron_glm.data.tokenizer's syntax plus eos."""
    from megatron_glm.data.tokenizer import TokenizerError, parse_special_ids

    eos, rest = {}, []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        if name.strip() == "eos":
            if not value.strip().lstrip("-").isdigit():
                raise InferenceError(f"bad special-token id {item!r}: expected eos=ID")
            eos["eos"] = int(value)
        else:
            rest.append(item)
    try:
        ids = parse_special_ids(",".join(rest))
    except TokenizerError as error:
        raise InferenceError(f"{error} or eos") from None
    return {**ids, **eos}


@dataclass
class KVCache:
    """The keys (after RoPE) and values of every layer for `length` tokens of `batch_size` sequences,
    in a megatron-core StaticInferenceContext (its key_value_memory_dict, one buffer pair per layer)."""

    context: object
    batch_size: int
    max_length: int
    position_ids: torch.Tensor = field(repr=False, default=None)
    """[b, max_length] the position ids of the cached tokens (bookkeeping for callers)."""

    @property
    def length(self) -> int:
        return self.context.sequence_len_offset

    def reorder(self, index: Union[torch.Tensor, list]) -> None:
        """Cached sequence i becomes old sequence index[i] (beam search; len(index) may differ from
        the current batch size: a one-sequence prefill is expanded to num_beams this way)."""
        index = torch.as_tensor(index, dtype=torch.long)
        memory = self.context.key_value_memory_dict
        for layer, (keys, values) in list(memory.items()):
            memory[layer] = (keys[:, index].contiguous(), values[:, index].contiguous())
        if self.position_ids is not None:
            self.position_ids = self.position_ids[index]
        self.batch_size = len(index)
        self.context.max_batch_size = len(index)


class InferenceModel:
    """One GLM model (this rank's shard of it) in eval mode, with GLM-130B's inference conventions.

    Attributes: `shape` (checkpoints.shapes.GLMShape), `vocab_size` (padded: the logits' last dim),
    `max_sequence_length`, `special` (name -> id, SPECIAL_TOKEN_NAMES that are known), `tokenizer`
    (a GLMTokenizer when one was given or recorded), `dtype`, `format` (dist, sat, safetensors),
    `rope_precision` (fp32 or fp16 rotary angles), `quantization` (int8, int4 or None).
    """

    def __init__(self, model, shape, *, max_sequence_length: int, special: Dict[str, int], dtype: torch.dtype,
                 tokenizer=None, exit_stack: Optional[contextlib.ExitStack] = None, source: str = ""):
        self.model = model
        self.shape = shape
        self.vocab_size = shape.padded_vocab_size
        self.max_sequence_length = max_sequence_length
        self.special = dict(special)
        self.dtype = dtype
        self.tokenizer = tokenizer
        self.source = source
        # The one-process group goes with close(), garbage collection or interpreter exit, whichever
        # comes first (at exit, before the modules it needs are torn down).
        self._release = weakref.finalize(self, exit_stack.close) if exit_stack is not None else None
        self.format = ""
        self.rope_precision = "fp32"
        self.quantization: Optional[str] = None
        """int8 / int4: weight-only quantized linear layers (megatron_glm.quantization); None: full precision."""
        from megatron.core import parallel_state

        self._pp = parallel_state.get_pipeline_model_parallel_world_size()
        self._first = parallel_state.is_pipeline_first_stage()
        self._last = parallel_state.is_pipeline_last_stage()
        if self._pp > 1:
            self._pp_group = parallel_state.get_pipeline_model_parallel_group()
            self._pp_ranks = dist.get_process_group_ranks(self._pp_group)
            self._pp_rank = parallel_state.get_pipeline_model_parallel_rank()

    def close(self) -> None:
        """Release the throw-away process group of a single-process model."""
        if self._release is not None:
            self._release()

    # ---------------------------------------------------------------------------------------------
    def _check(self, tokens: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
               columns: int) -> None:
        if tokens.dim() != 2 or tokens.shape != position_ids.shape or tokens.is_floating_point():
            raise InferenceError(f"tokens and position_ids must be integer [b, s] of one shape, got "
                                 f"{tuple(tokens.shape)} and {tuple(position_ids.shape)}")
        b, s = tokens.shape
        if attention_mask.dtype != torch.bool or tuple(attention_mask.shape) != (b, 1, s, columns):
            raise InferenceError(f"attention_mask must be bool [{b}, 1, {s}, {columns}] (True = masked), got "
                                 f"{attention_mask.dtype} {tuple(attention_mask.shape)}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
            raise InferenceError(f"token ids must be in [0, {self.vocab_size}), got "
                                 f"[{int(tokens.min())}, {int(tokens.max())}]")

    def _run(self, tokens, position_ids, attention_mask, inference_context=None, logits_at=None) -> torch.Tensor:
        """The model's forward across pipeline stages; fp32 logits on every rank."""
        device = next(self.model.parameters()).device
        tokens, position_ids = tokens.to(device), position_ids.to(device)
        attention_mask = attention_mask.to(device)
        b, s = tokens.shape
        out_s = 1 if logits_at is not None else s
        with torch.no_grad():
            if self._pp > 1 and not self._first:
                hidden = torch.empty(s, b, self.shape.hidden_size, dtype=self.dtype, device=device)
                dist.recv(hidden, src=self._pp_ranks[self._pp_rank - 1], group=self._pp_group)
                self.model.set_input_tensor(hidden)
            output = self.model(tokens, position_ids, attention_mask, inference_context=inference_context,
                                logits_at=logits_at)
            if self._pp > 1 and not self._last:
                dist.send(output.contiguous(), dst=self._pp_ranks[self._pp_rank + 1], group=self._pp_group)
            if self._pp > 1:
                logits = output.float().contiguous() if self._last else torch.empty(
                    b, out_s, self.vocab_size, dtype=torch.float32, device=device)
                dist.broadcast(logits, src=self._pp_ranks[-1], group=self._pp_group)
                return logits
            return output.float()

    def logits(self, tokens: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Full forward: tokens, position_ids [b, s] integers; attention_mask bool [b, 1, s, s], True =
        masked (GLM-130B's convention) -> fp32 logits [b, s, padded vocab] (full vocabulary on every
        rank). No cache is read or written. Stable API (glm-eval scores multiple-choice and LM tasks
        with it)."""
        self._check(tokens, position_ids, attention_mask, tokens.shape[1] if tokens.dim() == 2 else -1)
        if tokens.shape[1] > self.max_sequence_length:
            raise InferenceError(f"{tokens.shape[1]} tokens exceed the model's sequence length "
                                 f"{self.max_sequence_length}")
        return self._run(tokens, position_ids, attention_mask)

    def new_cache(self, batch_size: int, max_length: Optional[int] = None) -> KVCache:
        """An empty KV cache for `batch_size` sequences of up to `max_length` tokens (default the
        model's sequence length); buffers are allocated by the first `extend`."""
        from megatron.core.inference.contexts.static_context import StaticInferenceContext

        max_length = self.max_sequence_length if max_length is None else max_length
        if max_length > self.max_sequence_length:
            raise InferenceError(f"a cache of {max_length} tokens exceeds the model's sequence length "
                                 f"{self.max_sequence_length}")
        context = StaticInferenceContext(max_batch_size=batch_size, max_sequence_length=max_length)
        return KVCache(context, batch_size, max_length,
                       position_ids=torch.zeros(batch_size, max_length, dtype=torch.long))

    def extend(self, cache: KVCache, tokens: torch.Tensor, position_ids: torch.Tensor,
               attention_mask: torch.Tensor, logits_at: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Run `n` new tokens per sequence through the model on top of `cache` and append them.

        tokens, position_ids [b, n]; attention_mask bool [b, 1, n, cache.length + n] (the new rows
        over every cached column and the new ones; True = masked). Returns fp32 logits [b, n, V],
        or [b, V] at one new-token index per sequence when `logits_at` [b] is given (a prefill
        needs only the last context token's). Prefill is `extend` on an empty cache; a decode step
        is `extend` with n = 1."""
        if tokens.dim() != 2 or tokens.shape[0] != cache.batch_size:
            raise InferenceError(f"the cache holds {cache.batch_size} sequences, got tokens of shape "
                                 f"{tuple(tokens.shape)}")
        n = tokens.shape[1]
        start = cache.length
        self._check(tokens, position_ids, attention_mask, start + n)
        if start + n > cache.max_length:
            raise InferenceError(f"the cache holds {cache.max_length} tokens; {start} cached + {n} new do not fit")
        context = cache.context
        if start == 0:
            context.enable_prefill_mode()
        else:
            context.enable_decode_mode()
        if logits_at is not None:
            logits_at = torch.as_tensor(logits_at, dtype=torch.long).reshape(-1)
        logits = self._run(tokens, position_ids, attention_mask, inference_context=context, logits_at=logits_at)
        cache.position_ids[:, start:start + n] = position_ids.cpu()
        context.sequence_len_offset = start + n
        return logits[:, 0] if logits_at is not None else logits


# -------------------------------------------------------------------------------------------------
# Loading


def _find_run_config(checkpoint: Path) -> Optional[Path]:
    """config.yaml of the run directory a dist checkpoint belongs to (RUN/checkpoints[/iter_N])."""
    from megatron_glm.rundir import CONFIG_FILE

    path = checkpoint.resolve()
    for candidate in (path, path.parent, path.parent.parent):
        if (candidate / CONFIG_FILE).is_file():
            return candidate / CONFIG_FILE
    return None


def _resolve_path(value: str, run_config: Path) -> Optional[Path]:
    """A path recorded in a run config: as given (relative to the working directory, as the trainer
    saw it), else relative to the run directory and its parents."""
    candidates = [Path(value)]
    if not Path(value).is_absolute():
        candidates += [parent / value for parent in run_config.resolve().parents]
    return next((c for c in candidates if c.is_file()), None)


def _eos_of(tokenizer) -> Optional[int]:
    eos = tokenizer.sp.eos_id()
    return eos if eos >= 0 else None


def resolve_special_ids(*, explicit: Optional[Mapping[str, int]] = None, tokenizer=None,
                        run_data: Optional[dict] = None, checkpoint_format: str = "", padded_vocab: int = 0,
                        run_tokenizer=None) -> Dict[str, int]:
    """Special-token ids, by precedence: explicit > tokenizer > the run config's tokenizer and
    `data.special_token_ids` > GLM-130B's icetk ids for a SAT checkpoint of GLM-130B's vocabulary."""
    from megatron_glm.data.tokenizer import GLM_130B_SPECIAL_IDS

    ids: Dict[str, int] = {}
    if checkpoint_format == "sat" and padded_vocab > max(GLM_130B_SPECIAL_IDS.values()):
        ids.update(GLM_130B_SPECIAL_IDS, eos=GLM_130B_EOS)
    if run_tokenizer is not None:
        ids.update(run_tokenizer.special.as_dict())
        if _eos_of(run_tokenizer) is not None:
            ids["eos"] = _eos_of(run_tokenizer)
    if run_data and run_data.get("special_token_ids"):
        ids.update(parse_special_token_ids(run_data["special_token_ids"]))
    if tokenizer is not None:
        ids.update(tokenizer.special.as_dict())
        if _eos_of(tokenizer) is not None:
            ids["eos"] = _eos_of(tokenizer)
    ids.update(explicit or {})
    return ids


def _load_yaml(path: Path) -> dict:
    import yaml

    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def _mark_tensor_parallel(model: torch.nn.Module) -> None:
    """The TP attributes megatron-core sets on weights only when it initialises them (we skip the
    initialisation: every value comes from the checkpoint), so tp_shard knows how to split them."""
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding
    from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes

    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if weight is None or getattr(weight, "tensor_model_parallel", False):
            continue
        if isinstance(module, ColumnParallelLinear):
            bias = getattr(module, "bias", None)
            stride = getattr(bias, "partition_stride", 2 if name.endswith("mlp.linear_fc1") else 1)
            set_tensor_model_parallel_attributes(weight, True, 0, stride)
        elif isinstance(module, RowParallelLinear):
            set_tensor_model_parallel_attributes(weight, True, 1, 1)
        elif isinstance(module, VocabParallelEmbedding):
            set_tensor_model_parallel_attributes(weight, True, 0, 1)


def load_weights(model: torch.nn.Module, reader) -> None:
    """Copy this rank's shard of every parameter of `model` from `reader`, one whole tensor at a
    time (peak memory: the largest tensor, not the model), only the layers of this pipeline stage."""
    from megatron.core import parallel_state

    from megatron_glm.model.tp_shard import _full_key, shard

    specs = {key: spec for key, spec, _ in reader.glm.entries()}
    rank = parallel_state.get_tensor_model_parallel_rank()
    world = parallel_state.get_tensor_model_parallel_world_size()
    with torch.no_grad():
        for local_key, param in model.named_parameters():
            key = _full_key(model, local_key)
            if key not in specs:
                raise InferenceError(f"the model has a parameter {key!r} that the checkpoint format does not map")
            value = reader.read(key, specs[key])
            if world > 1 and getattr(param, "tensor_model_parallel", False):
                value = shard(value, rank, world, param.partition_dim, param.partition_stride)
            param.copy_(value.to(device=param.device, dtype=param.dtype))


def load_inference_model(
    checkpoint: str,
    *,
    dtype: torch.dtype = torch.float32,
    special_token_ids: Optional[Union[str, Mapping[str, int]]] = None,
    tokenizer_model: Optional[str] = None,
    max_sequence_length: Optional[int] = None,
    num_attention_heads: Optional[int] = None,
    layernorm_epsilon: Optional[float] = None,
    rotary_base: Optional[int] = None,
    attention_backend: str = "local",
    rope_precision: Optional[str] = None,
    quantize: Optional[str] = None,
) -> InferenceModel:
    """Read `checkpoint` (ours: a run's checkpoints/ or one iter_N; GLM-130B's SAT layout;
    safetensors) and build the model in the current parallel layout.

    - Without process groups: TP1 x PP1 in a one-process group kept until `InferenceModel.close()`.
      Under torch.distributed with megatron-core's parallel_state initialised: its TP x PP layout.
    - Special-token ids (`InferenceModel.special`): `special_token_ids` ("mask=3,...,eos=2" or a
      dict) > `tokenizer_model`'s > the run config's (`data.tokenizer_model`,
      `data.special_token_ids` of the config.yaml next to our checkpoints) > GLM-130B's icetk ids
      for a SAT checkpoint with GLM-130B's vocabulary.
    - `max_sequence_length`: default the run config's `model.seq_length`, else 2048.
    - SAT checkpoints do not record the head count: `num_attention_heads` (or our checkpoints'
      recorded shape; GLM-130B: 96).
    - `rope_precision`: "fp16" rounds the rotary angles as GLM-130B's released model computes them
      (fp16 inv_freq, positions and products; docs/generation.md), "fp32" as our trainer does.
      Default: fp16 for SAT checkpoints (GLM-130B's release layout), fp32 otherwise.
    - `quantize`: "int8" / "int4" build weight-only quantized linear layers (megatron_glm.quantization,
      docs/quantization.md) and keep a quantized checkpoint's weights quantized or quantize a
      full-precision one on load, shard by shard; None keeps the checkpoint's own (a quantized
      checkpoint stays quantized); "none" dequantizes to full precision.
    Raises InferenceError (or checkpoints' CheckpointError) with a one-line reason.
    """
    from checkpoints.convert import ReadOptions, open_checkpoint
    from megatron_glm.config.schema import ModelConfig, ParallelConfig, RunConfig
    from megatron_glm.data.tokenizer import GLMTokenizer, TokenizerError

    if quantize not in (None, "none", "int8", "int4"):
        raise InferenceError(f"quantize must be int8, int4 or none, got {quantize!r}")
    if rope_precision not in (None, "fp32", "fp16"):
        raise InferenceError(f"rope_precision must be fp32 or fp16, got {rope_precision!r}")
    precision = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype)
    if precision is None:
        raise InferenceError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
    options = ReadOptions(num_attention_heads=num_attention_heads)
    if layernorm_epsilon is not None:
        options.layernorm_epsilon = layernorm_epsilon
    if rotary_base is not None:
        options.rotary_base = rotary_base
    if (Path(checkpoint) / "checkpoints").is_dir():  # a run directory: its checkpoints
        checkpoint = str(Path(checkpoint) / "checkpoints")
    reader = open_checkpoint(checkpoint, options)
    glm = reader.glm
    quantization = reader.info.quantization if quantize is None else None if quantize == "none" else quantize

    run_config_file = _find_run_config(Path(checkpoint)) if reader.info.format == "dist" else None
    run_yaml = _load_yaml(run_config_file) if run_config_file else {}
    run_model, run_data = run_yaml.get("model") or {}, run_yaml.get("data") or {}

    explicit = special_token_ids
    if isinstance(explicit, str):
        explicit = parse_special_token_ids(explicit)
    tokenizer = run_tokenizer = None
    try:
        if tokenizer_model:
            tokenizer = GLMTokenizer(tokenizer_model, {k: v for k, v in (explicit or {}).items() if k != "eos"})
        elif run_data.get("tokenizer_model"):
            found = _resolve_path(run_data["tokenizer_model"], run_config_file)
            if found is not None:
                recorded = parse_special_token_ids(run_data.get("special_token_ids") or "")
                recorded = {k: v for k, v in {**recorded, **(explicit or {})}.items() if k != "eos"}
                run_tokenizer = GLMTokenizer(str(found), recorded)
    except TokenizerError as error:
        raise InferenceError(str(error)) from None
    special = resolve_special_ids(explicit=explicit, tokenizer=tokenizer, run_data=run_data,
                                  checkpoint_format=reader.info.format, padded_vocab=glm.padded_vocab_size,
                                  run_tokenizer=run_tokenizer)
    tokenizer = tokenizer or run_tokenizer
    vocabulary = glm.vocab_size or glm.padded_vocab_size  # ours record the tokenizer's size
    if tokenizer is not None and tokenizer.vocab_size > vocabulary:
        raise InferenceError(f"tokenizer {tokenizer.model_file} has {tokenizer.vocab_size} ids (specials included) "
                             f"but the checkpoint's vocabulary has {vocabulary}: not this model's tokenizer")
    bad = {name: value for name, value in special.items() if not 0 <= value < glm.padded_vocab_size}
    if bad:
        raise InferenceError(f"special-token ids {bad} are outside the checkpoint's vocabulary "
                             f"[0, {glm.padded_vocab_size})")

    with warnings.catch_warnings():  # megatron-core only now: bad input fails fast, before its imports
        warnings.simplefilter("ignore")
        from megatron.core import parallel_state
        from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

        from megatron_glm.model.build import build_model
    from megatron_glm.model.describe import _single_process_groups
    from megatron_glm.model.transformer_config import build_transformer_config

    seq_length = max_sequence_length or int(run_model.get("seq_length") or DEFAULT_MAX_SEQUENCE_LENGTH)
    standalone = not dist.is_initialized()
    if not standalone and not parallel_state.model_parallel_is_initialized():
        raise InferenceError("torch.distributed is initialised but megatron-core's parallel_state is not: call "
                             "megatron_glm.runtime.distributed.initialize_distributed (or initialize_model_parallel) "
                             "first")
    tp = 1 if standalone else parallel_state.get_tensor_model_parallel_world_size()
    pp = 1 if standalone else parallel_state.get_pipeline_model_parallel_world_size()
    if glm.num_attention_heads % tp:
        raise InferenceError(f"{glm.num_attention_heads} attention heads do not split over TP{tp}")
    if glm.num_layers < pp:
        raise InferenceError(f"{glm.num_layers} layers do not fill {pp} pipeline stages")
    model_config = ModelConfig(
        name="inference", num_layers=glm.num_layers, hidden_size=glm.hidden_size,
        num_attention_heads=glm.num_attention_heads, ffn_hidden_size=glm.ffn_hidden_size,
        vocab_size=glm.vocab_size or glm.padded_vocab_size, padded_vocab_size=glm.padded_vocab_size,
        seq_length=seq_length, layernorm_epsilon=glm.layernorm_epsilon, hidden_dropout=0.0,
        attention_dropout=0.0, rotary_base=glm.rotary_base, attention_backend=attention_backend)
    run = RunConfig(model=model_config, precision=precision, parallel=ParallelConfig(tensor=tp, pipeline=pp))
    stack = contextlib.ExitStack()
    try:
        if standalone:
            stack.enter_context(_single_process_groups())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rng_state = torch.get_rng_state()
            model_parallel_cuda_manual_seed(0)  # no dropout; megatron-core still wants its RNG tracker
            torch.set_rng_state(rng_state)
            config = build_transformer_config(run, use_cpu_initialization=True)
            config.perform_initialization = False
            stages = dict(pre_process=parallel_state.is_pipeline_first_stage(),
                          post_process=parallel_state.is_pipeline_last_stage())
            model = build_model(run, config=config, parallel_output=False, quantize=quantization, **stages)
            if tp > 1:
                _mark_tensor_parallel(model)
            load_weights(model, reader)
            if quantization:
                from megatron_glm.quantization.load import load_quantized_weights

                load_quantized_weights(model, reader, quantization)
        rope_precision = rope_precision or ("fp16" if reader.info.format == "sat" else "fp32")
        model.rotary.angle_dtype = torch.float16 if rope_precision == "fp16" else torch.float32
        model.eval()
    except BaseException:
        stack.close()
        raise
    finally:
        reader.close()
    inference = InferenceModel(model, glm, max_sequence_length=seq_length, special=special, dtype=dtype,
                               tokenizer=tokenizer, exit_stack=stack if standalone else None, source=str(checkpoint))
    inference.rope_precision = rope_precision
    inference.format = reader.info.format
    inference.quantization = quantization
    return inference
