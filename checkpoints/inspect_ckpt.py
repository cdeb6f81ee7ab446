"""`glm-ckpt inspect`: what a checkpoint is, without loading its tensors."""

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
        "bytes": info.bytes,
        "optimizer_state": info.has_optimizer,
        "quantization": info.quantization,
        "model": glm.to_dict(),
    }


def render(summary: Dict[str, Any]) -> str:
    model = summary["model"]
    lines = [
        f"format            {summary['format']}  ({summary['path']})",
        f"step              {summary['step']}",
        f"consumed samples  {summary['consumed_samples']}",
        f"layout            TP{summary['layout']['tp']} x PP{summary['layout']['pp']}",
        f"parameters        {summary['parameters']:,}",
        "dtypes            " + ", ".join(f"{k}: {v:,}" for k, v in sorted(summary["dtypes"].items())),
        f"bytes             {summary['bytes']:,} ({summary['bytes'] / 2**20:.1f} MiB)",
        f"optimizer state   {'yes' if summary['optimizer_state'] else 'no'}",
        f"quantization      {summary['quantization'] or 'none'}",
        f"model             {model['num_layers']} layers, hidden {model['hidden_size']}, "
        f"{model['num_attention_heads']} heads, ffn {model['ffn_hidden_size']}, vocab {model['padded_vocab_size']}",
    ]
    return "\n".join(lines)
