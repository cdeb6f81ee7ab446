"""The DeepNorm Post-LN transformer layer of GLM-130B (docs/glm130b.md §1.2).

    x = input_layernorm(h);      h = alpha * x + dropout(attention(x) + b_o)
    y = pre_mlp_layernorm(h);    h = alpha * y + dropout(mlp(y) + b_2)

The residual is the LayerNorm *output* scaled by alpha = sqrt(2N), not the layer input as in
megatron-core's pre-LN TransformerLayer. We reuse TransformerLayer's construction from a ModuleSpec
(submodules, sharded checkpoint, recompute plumbing) and replace its forward. The LN applied to the
embeddings is layer 0's input_layernorm; the block's final LayerNorm closes the stack (2N+1 LNs).
Names follow megatron-core: GLM's post_attention_layernorm is our pre_mlp_layernorm.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from megatron.core.transformer.transformer_layer import TransformerLayer
from megatron.core.utils import make_viewless_tensor


class DeepNormTransformerLayer(TransformerLayer):
    """A TransformerLayer whose residuals are alpha * LN(h) (Post-LN DeepNorm)."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        context: Optional[torch.Tensor] = None,
        context_mask: Optional[torch.Tensor] = None,
        rotary_pos_emb: Optional[torch.Tensor] = None,
        inference_context: Optional[Any] = None,
        packed_seq_params: Optional[Any] = None,
        **unused: Any,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if context is not None or packed_seq_params is not None:
            raise NotImplementedError(
                "DeepNormTransformerLayer supports self-attention only "
                "(no cross-attention or packed THD sequences)"
            )
        alpha = self.config.deepnorm_residual_scale

        normed = self.input_layernorm(hidden_states)
        if inference_context is None:
            attention_output_with_bias = self.self_attention(
                normed, attention_mask=attention_mask, rotary_pos_emb=rotary_pos_emb
            )
        else:  # KV-cache prefill/decode (megatron_glm.inference; GLMSelfAttention keeps the cache)
            attention_output_with_bias = self.self_attention(
                normed, attention_mask=attention_mask, rotary_pos_emb=rotary_pos_emb,
                inference_context=inference_context,
            )
        with self.bias_dropout_add_exec_handler():
            hidden_states = self.self_attn_bda(self.training, self.config.bias_dropout_fusion)(
                attention_output_with_bias, alpha * normed, self.hidden_dropout
            )

        normed = self.pre_mlp_layernorm(hidden_states)
        mlp_output_with_bias = self.mlp(normed)
        with self.bias_dropout_add_exec_handler():
            hidden_states = self.mlp_bda(self.training, self.config.bias_dropout_fusion)(
                mlp_output_with_bias, alpha * normed, self.hidden_dropout
            )
        output = make_viewless_tensor(inp=hidden_states, requires_grad=hidden_states.requires_grad, keep_graph=True)
        return output, None
