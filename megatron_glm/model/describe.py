"""Count the parameters of the model actually built, on the meta device (no memory, any size)."""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator

import torch
import torch.distributed as dist

from megatron_glm.config.schema import RunConfig
from megatron_glm.model.init import deepnorm_alpha


@contextlib.contextmanager
def _single_process_groups() -> Iterator[None]:
    """A throw-away world of one process (TP1 PP1), unless groups already exist."""
    from megatron.core import parallel_state

    from megatron_glm.runtime.cpu_backend import install_cpu_backend

    if dist.is_initialized():
        yield
        return
    install_cpu_backend()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        parallel_state.initialize_model_parallel(1, 1)
        yield
    finally:
        parallel_state.destroy_model_parallel()
        dist.destroy_process_group()


def describe(run: RunConfig) -> Dict[str, Any]:
    """Shapes and exact parameter counts of the whole model (built unsharded on the meta device)."""
    from megatron_glm.model.build import build_model
    from megatron_glm.model.transformer_config import build_transformer_config

    model_cfg = run.model
    single = RunConfig(model=model_cfg, precision=run.precision)
    with _single_process_groups(), torch.device("meta"):
        config = build_transformer_config(single, use_cpu_initialization=True)
        config.perform_initialization = False
        model = build_model(single, config=config, move_to_gpu=False)
        params = sum(p.numel() for p in model.parameters())
        embedding = model.embedding.word_embeddings.weight.numel()
        per_layer = sum(p.numel() for p in model.decoder.layers[0].parameters())
    return {
        "name": model_cfg.name,
        "params": params,
        "params_embedding": embedding,
        "params_per_layer": per_layer,
        "num_layers": model_cfg.num_layers,
        "hidden_size": model_cfg.hidden_size,
        "num_attention_heads": model_cfg.num_attention_heads,
        "head_dim": model_cfg.head_dim,
        "ffn_hidden_size": model_cfg.resolved_ffn_hidden_size,
        "vocab_size": model_cfg.vocab_size,
        "padded_vocab_size": model_cfg.resolved_padded_vocab_size,
        "seq_length": model_cfg.seq_length,
        "deepnorm_alpha": deepnorm_alpha(model_cfg.num_layers),
        "source": model_cfg.source,
    }
