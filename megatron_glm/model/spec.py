"""The GLM layer as a megatron-core ModuleSpec (local, non-Transformer-Engine modules).

Attention is megatron-core's SelfAttention (as GLMSelfAttention, whose KV cache keeps keys after
RoPE) with the fused, per-head-interleaved QKV (ColumnParallelLinear, rows [head][q, k, v][d], the layout of GLM-130B's checkpoints) and the
local DotProductAttention: an explicit boolean mask (True = masked, filled with -10000), scores
scaled and softmaxed in FP32 (docs/glm130b.md §1.3) -- or, with attention_backend "sdpa", torch's fused
scaled_dot_product_attention with the same mask. The mask type is `arbitrary` because GLM's masks
are prefix-LM and block-diagonal, not causal: flash/causal kernels must not be used.
"""

from __future__ import annotations

from typing import Optional

from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.attention import SelfAttentionSubmodules
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.torch_norm import WrappedTorchNorm
from megatron.core.transformer.transformer_layer import TransformerLayerSubmodules

from megatron_glm.model.attention import GLMSelfAttention
from megatron_glm.model.layer import DeepNormTransformerLayer
from megatron_glm.model.mlp import GeGLUMLP
from megatron_glm.model.sdpa_attention import SDPAttention

try:  # apex's fused LayerNorm where the NVIDIA container has it; torch's LayerNorm otherwise.
    import apex  # noqa: F401  # pylint: disable=unused-import
    from megatron.core.fusions.fused_layer_norm import FusedLayerNorm as LayerNormImpl
except ImportError:
    LayerNormImpl = WrappedTorchNorm


CORE_ATTENTION = {"local": DotProductAttention, "sdpa": SDPAttention}


def glm_layer_spec(attention_backend: str = "local", quantize: Optional[str] = None) -> ModuleSpec:
    """DeepNorm Post-LN layer: LN -> self-attention -> alpha-residual, LN -> GeGLU -> alpha-residual.

    `quantize` ("int8", "int4"; inference only): the four linear layers are weight-only quantized
    stand-ins for Column/RowParallelLinear (megatron_glm.quantization, docs/quantization.md)."""
    linear_qkv, linear_proj, mlp = ColumnParallelLinear, RowParallelLinear, GeGLUMLP
    if quantize is not None:
        from megatron_glm.quantization.layers import QUANTIZED_LINEAR
        from megatron_glm.quantization.mlp import QUANTIZED_MLP

        (linear_qkv, linear_proj), mlp = QUANTIZED_LINEAR[quantize], QUANTIZED_MLP[quantize]
    return ModuleSpec(
        module=DeepNormTransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=LayerNormImpl,
            self_attention=ModuleSpec(
                module=GLMSelfAttention,
                params={"attn_mask_type": AttnMaskType.arbitrary},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=linear_qkv,
                    core_attention=CORE_ATTENTION[attention_backend],
                    linear_proj=linear_proj,
                    q_layernorm=IdentityOp,
                    k_layernorm=IdentityOp,
                ),
            ),
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=LayerNormImpl,
            mlp=mlp,
            mlp_bda=get_bias_dropout_add,
        ),
    )
