"""`glm-ckpt inspect`: what a checkpoint is, without loading its tensors.

Two counts, labelled apart: `parameters` is the model's (every tensor once, as the trainer builds
it); `stored_values` is what the files hold, by dtype (`dtypes`): a SAT checkpoint stores the
tensors every TP rank keeps whole (layernorms, some biases) once per shard plus rotary inv_freq
buffers, and a quantised one int8 weights (INT4: two per byte) with their scales, so the two
differ there. What a format does not record (SAT: the step's consumed samples) is "not recorded".
"""

from __future__ import annotations

from typing import Any, Dict

from checkpoints.formats.base import Reader


def describe(reader: Reader) -> Dict[str, Any]:
    info, glm = reader.info, reader.glm
    return {
        "format": info.format,
        "path": info.path,
        "step": info.step,
        "consumed_samples": info.consumed_samples,
        "layout": {"tp": info.tp, "pp": info.pp},
        "parameters": glm.parameter_count(),
        "dtypes": info.dtypes,
        "stored_values": sum(info.dtypes.values()),
        "bytes": info.bytes,
        "optimizer_state": info.has_optimizer,
        "quantization": info.quantization,
        "model": glm.to_dict(),
    }


def _stored_note(summary: Dict[str, Any]) -> str:
    if summary["stored_values"] == summary["parameters"]:
        return "= the parameters"
    reasons = []
    if summary["format"] == "sat":
        tp = summary["layout"]["tp"]
        reasons.append((f"whole tensors repeated in each of the {tp} TP shards, " if tp > 1 else "")
                       + "rotary inv_freq buffers if kept")
    if summary["quantization"]:
        reasons.append(f"{summary['quantization']} weights" + (" two per byte" if summary["quantization"] == "int4"
                                                               else "") + " with per-row scales")
    return "as stored in the files" + (f": {', '.join(reasons)}" if reasons else "")


def render(summary: Dict[str, Any]) -> str:
    model = summary["model"]
    consumed = summary["consumed_samples"]
    lines = [
        f"format            {summary['format']}  ({summary['path']})",
        f"step              {summary['step'] if summary['step'] is not None else 'not recorded'}",
        f"consumed samples  {f'{consumed:,}' if consumed is not None else 'not recorded'}",
        f"layout            TP{summary['layout']['tp']} x PP{summary['layout']['pp']}",
        f"parameters        {summary['parameters']:,} (the model's, each tensor once)",
        f"stored values     {summary['stored_values']:,} ({_stored_note(summary)}); by dtype: "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(summary["dtypes"].items())),
        f"bytes             {summary['bytes']:,} ({summary['bytes'] / 2**20:.1f} MiB)",
        f"optimizer state   {'yes' if summary['optimizer_state'] else 'no'}",
        f"quantization      {summary['quantization'] or 'none'}",
        f"model             {model['num_layers']} layers, hidden {model['hidden_size']}, "
        f"{model['num_attention_heads']} heads, ffn {model['ffn_hidden_size']}, vocab {model['padded_vocab_size']}",
    ]
    return "\n".join(lines)
