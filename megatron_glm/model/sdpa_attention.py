"""Core attention through torch's scaled_dot_product_attention, with GLM's boolean masks.

A drop-in for megatron-core's local DotProductAttention (same constructor and forward), for GPUs
without Transformer Engine: SDPA picks a fused kernel (memory-efficient attention accepts arbitrary
boolean masks) instead of materialising fp32 scores, softmax and probabilities for every head.
Numerically it is GLM's FP32 softmax: the fused kernels accumulate scores and the softmax in fp32.
Masked scores get -inf instead of -10000; every GLM row sees at least itself, so no row is empty
and the two agree exactly (exp(-10000 - max) underflows to 0 in fp32).
"""

from __future__ import annotations

import contextlib
import math
from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig


class SDPAttention(MegatronModule):
    """q, k, v [s, b, heads/TP, d] -> context [s, b, heads/TP * d]; mask [b, 1, s, s], True = masked."""

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: Optional[float] = None,
        softmax_scale: Optional[float] = None,
        cp_comm_type: Optional[str] = None,
        pg_collection: Optional[ProcessGroupCollection] = None,
    ):
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError("SDPAttention does not support context parallelism")
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        self.softmax_scale = softmax_scale or 1.0 / math.sqrt(config.kv_channels)

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if attention_mask is None or attention_bias is not None or packed_seq_params is not None:
            raise NotImplementedError("SDPAttention takes GLM's explicit boolean mask, nothing else")
        seq, batch, heads, head_dim = query.shape
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, heads, s, d]
        dropout = self.dropout if self.training else 0.0
        # Tensor-parallel ranks hold different heads: dropout draws from the model-parallel RNG.
        rng = tensor_parallel.get_cuda_rng_tracker().fork() if dropout > 0 else contextlib.nullcontext()
        with rng:
            context = F.scaled_dot_product_attention(
                q, k, v, attn_mask=~attention_mask, dropout_p=dropout, scale=self.softmax_scale
            )
        return context.permute(2, 0, 1, 3).reshape(seq, batch, heads * head_dim)

