"""The bridge from our RunConfig to megatron-core's TransformerConfig, with GLM's fixed choices.

GLMTransformerConfig adds what megatron-core has no field for (the DeepNorm residual scale and init,
the rotary base); everything else is megatron-core's own knobs set the way GLM-130B trained.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_glm.config.schema import RunConfig
from megatron_glm.model.init import DeepNormInit, deepnorm_alpha

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class GLMTransformerConfig(TransformerConfig):
    """megatron-core's TransformerConfig plus the GLM-only settings."""

    deepnorm_init: Optional[DeepNormInit] = None
    """Init functions for q/k/v, projections, FFN and embedding (docs/glm130b.md §1.5)."""
    deepnorm_residual_scale: float = 1.0
    """alpha = sqrt(2N): the residual is alpha * LN(h) (docs/glm130b.md §1.2)."""
    rotary_base: float = 10000.0


def fused_softmax_available() -> bool:
    """megatron-core's fused masked-softmax kernels are CUDA extensions shipped by apex (NVIDIA's
    containers); without them the fusion flag would fail at the first forward."""
    return torch.cuda.is_available() and importlib.util.find_spec("scaled_masked_softmax_cuda") is not None


def _previous_stage_is_next_stage(run: RunConfig) -> bool:
    """True for the interleaved schedule at pipeline 2, where megatron-core's batched p2p must be off.

    There a rank's previous and next pipeline ranks are the same rank. Once backward passes start,
    the interleaved schedule exchanges an activation (send_next / recv_prev) and an input gradient
    (send_prev / recv_next) with that rank in one call, and untagged point-to-point messages between
    two ranks are matched in posting order. The batched ops (batch_p2p_comm, the default) post
    send_prev, recv_prev, send_next, recv_next on every rank, so the peer's gradient lands in the
    activation buffer and its activation in the gradient buffer: PP2 x VPP2 losses differed from the
    reference from micro-batch 2 of step 1 on. The unbatched _p2p_ops orders sends and receives by
    even/odd rank and gives the two directions of a two-rank pipeline different process groups, so
    every tensor reaches its own buffer. With pipeline > 2 prev != next; without interleaving no
    call sends both ways: the batched path stays correct there.
    """
    return run.parallel.pipeline == 2 and run.parallel.virtual_pipeline is not None


def build_transformer_config(run: RunConfig, use_cpu_initialization: Optional[bool] = None) -> GLMTransformerConfig:
    """megatron-core config for `run`. Fused CUDA kernels are used only where CUDA is present."""
    model, par = run.model, run.parallel
    on_gpu = torch.cuda.is_available()
    dtype = _DTYPES[run.precision]
    init = DeepNormInit(
        hidden_size=model.hidden_size,
        ffn_hidden_size=model.resolved_ffn_hidden_size,
        num_layers=model.num_layers,
        head_dim=model.head_dim,
        embedding_std=model.resolved_embedding_init_std,
    )
    recompute = run.recompute.granularity
    return GLMTransformerConfig(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        num_attention_heads=model.num_attention_heads,
        ffn_hidden_size=model.resolved_ffn_hidden_size,
        kv_channels=model.head_dim,
        tensor_model_parallel_size=par.tensor,
        pipeline_model_parallel_size=par.pipeline,
        virtual_pipeline_model_parallel_size=par.virtual_pipeline,
        num_layers_in_first_pipeline_stage=par.first_stage_layers,
        num_layers_in_last_pipeline_stage=par.last_stage_layers,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        batch_p2p_comm=not _previous_stage_is_next_stage(run),
        fp16=run.precision == "fp16",
        bf16=run.precision == "bf16",
        hidden_dropout=model.hidden_dropout,
        attention_dropout=model.attention_dropout,
        layernorm_epsilon=model.layernorm_epsilon,
        normalization="LayerNorm",
        add_bias_linear=True,
        add_qkv_bias=True,
        gated_linear_unit=True,
        activation_func=F.gelu,
        bias_activation_fusion=False,
        attention_softmax_in_fp32=True,
        apply_query_key_layer_scaling=model.apply_query_key_layer_scaling,
        masked_softmax_fusion=fused_softmax_available(),
        bias_dropout_fusion=on_gpu,
        apply_rope_fusion=False,
        rotary_interleaved=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        cross_entropy_loss_fusion=False,
        init_method=init.qkv,
        output_layer_init_method=init.attention_output(),
        embedding_init_method=init.embedding(),
        use_cpu_initialization=(not on_gpu) if use_cpu_initialization is None else use_cpu_initialization,
        recompute_granularity=None if recompute == "none" else recompute,
        recompute_method=run.recompute.method if recompute == "full" else None,
        recompute_num_layers=run.recompute.num_layers if recompute == "full" else None,
        recompute_modules=["core_attn"] if recompute == "selective" else None,
        deepnorm_init=init,
        deepnorm_residual_scale=deepnorm_alpha(model.num_layers),
        rotary_base=float(model.rotary_base),
    )
