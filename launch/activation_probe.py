"""Measure the activation memory the planner's coefficients come from (launch/memory_model.py).

A GLM model of a few layers is built on CPU at tensor-parallel degree t inside a fake process
group of t ranks (collectives are no-ops, every shape is the real TP shard), run forward with
labels, and every tensor autograd saves for backward is recorded through
`torch.autograd.graph.saved_tensors_hooks`: the bytes of their storages, each storage once,
parameters excluded. That is the memory a micro-batch holds between its forward and its backward.
The saved tensors are kept referenced until counted so that a freed address cannot be reused and
miscounted. Run it as a script to print the fit over a grid of shapes:

    python -m launch.activation_probe
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch

from launch.memory_model import Layout
from launch.meta_check import fake_world
from megatron_glm.config.schema import ModelConfig, RunConfig

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass(frozen=True)
class ProbeShape:
    seq: int
    micro_batch: int
    hidden: int
    heads: int
    ffn: int
    tp: int
    vocab: int = 256


def probe_run(shape: ProbeShape, layers: int, recompute: str = "none", precision: str = "fp16") -> RunConfig:
    run = RunConfig(model=ModelConfig(num_layers=layers, hidden_size=shape.hidden, num_attention_heads=shape.heads,
                                      ffn_hidden_size=shape.ffn, vocab_size=shape.vocab, seq_length=shape.seq),
                    precision=precision)
    run.parallel.tensor = shape.tp
    run.recompute.granularity = recompute
    return run


def saved_activation_bytes(shape: ProbeShape, layers: int, recompute: str = "none", precision: str = "fp16") -> int:
    """Bytes saved for backward by one forward of a `layers`-layer GLM at `shape`."""
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from megatron_glm.model.build import build_model
    from megatron_glm.model.transformer_config import build_transformer_config

    run = probe_run(shape, layers, recompute, precision)
    with fake_world(0, shape.tp, Layout(tp=shape.tp, pp=1, dp=1)):
        model_parallel_cuda_manual_seed(1)
        config = build_transformer_config(run, use_cpu_initialization=True)
        model = build_model(run, config=config, move_to_gpu=False).to(_DTYPES[precision])
        parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
        sizes, keep = {}, []

        def pack(tensor):
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in parameters:
                sizes[storage.data_ptr()] = storage.nbytes()
                keep.append(tensor)
            return tensor

        s, b = shape.seq, shape.micro_batch
        generator = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, shape.vocab, (b, s), generator=generator)
        positions = torch.arange(s).repeat(b, 1)
        mask = torch.zeros(b, 1, s, s, dtype=torch.bool)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model(tokens, positions, mask, labels=tokens)
        return sum(sizes.values())


def layer_bytes(shape: ProbeShape, recompute: str = "none", precision: str = "fp16") -> int:
    """One transformer layer's share: the difference between a 3-layer and a 2-layer model."""
    return (saved_activation_bytes(shape, 3, recompute, precision)
            - saved_activation_bytes(shape, 2, recompute, precision))


GRID: List[ProbeShape] = [
    ProbeShape(32, 1, 64, 4, 128, 1), ProbeShape(64, 1, 64, 4, 128, 1), ProbeShape(32, 2, 128, 4, 128, 1),
    ProbeShape(32, 1, 64, 8, 256, 1), ProbeShape(32, 1, 64, 4, 128, 2), ProbeShape(64, 1, 128, 8, 256, 2),
    ProbeShape(32, 2, 128, 4, 384, 4), ProbeShape(48, 3, 64, 4, 192, 2), ProbeShape(32, 1, 64, 2, 128, 2),
    ProbeShape(64, 1, 64, 8, 128, 1), ProbeShape(32, 1, 256, 4, 128, 1),
]


def _fit() -> None:
    import numpy as np

    rows, measured = [], []
    for shape in GRID:
        s, b, h, a, f, t = shape.seq, shape.micro_batch, shape.hidden, shape.heads, shape.ffn, shape.tp
        rows.append([s * b * h, s * b * h / t, s * b * f / t, s * b * h / a, s * b, b * a * s * s / t])
        measured.append(layer_bytes(shape))
    coefficients, *_ = np.linalg.lstsq(np.array(rows, float), np.array(measured, float), rcond=None)
    names = ["s b h", "s b h / t", "s b f / t", "s b h / a", "s b", "b a s^2 / t"]
    print("bytes per layer (fp16, no recompute) =", " + ".join(f"{c:.3f} {n}" for c, n in zip(coefficients, names)))
    worst = max(abs(r - m) / m for r, m in zip(np.array(rows) @ coefficients, measured))
    print(f"worst relative residual over {len(GRID)} shapes: {worst:.2e}")
    full = [layer_bytes(shape, "full") / (shape.seq * shape.micro_batch * shape.hidden) for shape in GRID]
    print(f"full recompute, bytes per s b h element per layer: min {min(full):.3f} max {max(full):.3f}")


if __name__ == "__main__":
    _fit()
