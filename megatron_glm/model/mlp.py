"""GeGLU feed-forward with GELU on the *second* half (docs/glm130b.md §1.4).

On every TP rank fc1's local output is [x1 | x2] and the activation is x1 * gelu(x2), exact (erf)
GELU, bias added before the split. megatron-core's MLP activates the first half and its fused
bias_geglu uses tanh-GELU, so we keep its parameters and sharded checkpoint layout (fc1 stored as
per-rank [x1_r; x2_r], resharded GLU-aware by megatron-core) and replace only the forward.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron_glm.model.transformer_config import GLMTransformerConfig


class FFNColumnParallelLinear(ColumnParallelLinear):
    """fc1 with DeepNorm's FFN init (beta-scaled Xavier over h + ffn) instead of config.init_method."""

    def __init__(self, input_size, output_size, *, config, init_method, **kwargs):
        super().__init__(input_size, output_size, config=config,
                         init_method=config.deepnorm_init.ffn(), **kwargs)


class FFNRowParallelLinear(RowParallelLinear):
    """fc2 with DeepNorm's FFN init (the same std as fc1)."""

    def __init__(self, input_size, output_size, *, config, init_method, **kwargs):
        super().__init__(input_size, output_size, config=config,
                         init_method=config.deepnorm_init.ffn(), **kwargs)


class GeGLUMLP(MLP):
    """megatron-core's MLP (gated, biased) with GLM's activation x1 * gelu(x2)."""

    def __init__(
        self,
        config: GLMTransformerConfig,
        submodules: Optional[MLPSubmodules] = None,
        tp_group: Optional[torch.distributed.ProcessGroup] = None,
    ):
        if not config.gated_linear_unit or config.bias_activation_fusion:
            raise ValueError("GeGLUMLP needs gated_linear_unit=True and bias_activation_fusion=False")
        submodules = submodules or MLPSubmodules(
            linear_fc1=FFNColumnParallelLinear, linear_fc2=FFNRowParallelLinear
        )
        super().__init__(config, submodules, ffn_hidden_size=config.ffn_hidden_size, tp_group=tp_group)

    def forward(self, hidden_states: torch.Tensor, per_token_scale=None, **kwargs):
        if per_token_scale is not None:
            raise NotImplementedError("GeGLUMLP is a dense MLP; per-token scales are for MoE experts")
        intermediate, bias = self.linear_fc1(hidden_states)
        if bias is not None:
            intermediate = intermediate + bias
        x1, x2 = torch.chunk(intermediate, 2, dim=-1)
        output, output_bias = self.linear_fc2(x1 * F.gelu(x2))
        return output, output_bias
