"""Logits of any supported checkpoint, so users (and tests) can verify a conversion end to end.

The checkpoint is loaded into the real GLMModel (megatron-core, TP1 x PP1, a throw-away one-process
group, fp32): the logits are those the trainer's model computes. An INT8/INT4 checkpoint written
at TP1 stays quantized in memory, in the quantized linear layers inference uses
(megatron_glm.quantization), whose fp32 forward equals dequantize-then-multiply; one written at a
larger TP (scales per row of each shard) is dequantized on read. Either way the logits are the
quantized model's. Inputs: a torch file holding a dict (or
a list of dicts) with `tokens` and `position_ids` [b, s] integers and `attention_mask` [b, 1, s, s]
bool, True = masked (docs/glm130b.md §1.3).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Dict, List, Tuple

import torch

from checkpoints.errors import CheckpointError
from checkpoints.formats.base import Reader

INPUT_KEYS = ("tokens", "position_ids", "attention_mask")


def load_inputs(path: str) -> Tuple[List[Dict[str, torch.Tensor]], bool]:
    """(list of input dicts, whether the file held a single dict), checked field by field."""
    try:
        loaded = torch.load(path, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError("does not exist", path) from None
    except Exception as error:
        raise CheckpointError(f"cannot read ({error.__class__.__name__})", path,
                              hint="save the inputs with torch.save({'tokens': ..., ...})") from None
    single = isinstance(loaded, dict)
    batches = [loaded] if single else loaded
    if not isinstance(batches, (list, tuple)) or not batches:
        raise CheckpointError("expected a dict or a non-empty list of dicts", path)
    for index, batch in enumerate(batches):
        where = f"[{index}]" if not single else ""
        for key in INPUT_KEYS:
            if not isinstance(batch, dict) or not isinstance(batch.get(key), torch.Tensor):
                raise CheckpointError(f"entry{where} has no tensor {key!r}", path, key,
                                      hint="each entry needs tokens, position_ids, attention_mask")
        tokens, positions, mask = (batch[k] for k in INPUT_KEYS)
        if tokens.dim() != 2 or positions.shape != tokens.shape or tokens.is_floating_point():
            raise CheckpointError(f"entry{where}: tokens/position_ids must be integer [b, s] of one shape, got "
                                  f"{tuple(tokens.shape)} and {tuple(positions.shape)}", path, "tokens")
        b, s = tokens.shape
        if mask.dtype != torch.bool or tuple(mask.shape) != (b, 1, s, s):
            raise CheckpointError(f"entry{where}: attention_mask must be bool [{b}, 1, {s}, {s}], got "
                                  f"{mask.dtype} {tuple(mask.shape)}", path, "attention_mask",
                                  hint="True marks positions that must not be attended to")
    return list(batches), single


def full_state_dict(reader: Reader) -> Dict[str, torch.Tensor]:
    return {key: reader.read(key, spec).float() for key, spec, _ in reader.glm.entries()}


def model_logits(reader: Reader, batches: List[Dict[str, torch.Tensor]]) -> List[torch.Tensor]:
    """fp32 logits [b, s, padded vocab] of every input batch."""
    with warnings.catch_warnings():  # megatron-core warns at import that apex/TE are absent
        warnings.simplefilter("ignore")
        from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

        from megatron_glm.model.build import build_model
    from megatron_glm.config.schema import ModelConfig, RunConfig
    from megatron_glm.model.describe import _single_process_groups
    from megatron_glm.model.tp_shard import load_full_state_dict
    from megatron_glm.model.transformer_config import build_transformer_config

    glm = reader.glm
    vocab = glm.padded_vocab_size
    for batch in batches:
        if int(batch["tokens"].max()) >= vocab or int(batch["tokens"].min()) < 0:
            raise CheckpointError(f"token ids must be in [0, {vocab})", key="tokens")
    model_config = ModelConfig(
        name="checkpoint", num_layers=glm.num_layers, hidden_size=glm.hidden_size,
        num_attention_heads=glm.num_attention_heads, ffn_hidden_size=glm.ffn_hidden_size, vocab_size=vocab,
        padded_vocab_size=vocab, seq_length=max(int(b["tokens"].shape[1]) for b in batches),
        layernorm_epsilon=glm.layernorm_epsilon, hidden_dropout=0.0, attention_dropout=0.0,
        rotary_base=glm.rotary_base)
    run = RunConfig(model=model_config, precision="fp32")
    # Held quantized at TP1 when its scales allow (a TP1 file; a TP>1 file's row-parallel scales are
    # per shard row, which one rank cannot hold): otherwise dequantized on read, the same values.
    quantization = reader.info.quantization if reader.info.tp == 1 else None
    weights = None if quantization else full_state_dict(reader)
    with _single_process_groups(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model_parallel_cuda_manual_seed(0)  # dropout is off; megatron-core still wants its RNG tracker
        config = build_transformer_config(run, use_cpu_initialization=True)
        config.perform_initialization = False
        model = build_model(run, config=config, parallel_output=False, move_to_gpu=False, quantize=quantization)
        if quantization:
            from megatron_glm.inference.model import load_weights
            from megatron_glm.quantization.load import load_quantized_weights

            load_weights(model, reader)
            load_quantized_weights(model, reader, quantization)
        else:
            load_full_state_dict(model, weights)
            del weights
        model.eval()
        with torch.no_grad():
            return [model(b["tokens"], b["position_ids"], b["attention_mask"]).float().clone() for b in batches]


def compare(a: List[torch.Tensor], b: List[torch.Tensor]) -> Dict[str, float]:
    """Max abs difference and max abs difference relative to the largest |logit| of A."""
    max_abs = max(float((x - y).abs().max()) for x, y in zip(a, b))
    scale = max(float(x.abs().max()) for x in a)
    return {"max_abs_diff": max_abs, "max_rel_diff": max_abs / scale if scale else float("inf")}


def save_logits(logits: List[torch.Tensor], single: bool, out: str) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(logits[0] if single else logits, out)
