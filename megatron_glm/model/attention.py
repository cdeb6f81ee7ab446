"""GLM's self-attention: megatron-core's SelfAttention with a KV cache that stores keys after RoPE.

Training and full forwards are megatron-core's code path unchanged (no inference context: the
override returns at its first line). With a megatron-core StaticInferenceContext (what
megatron_glm.inference passes for prefill and decode), the new tokens' q and k are rotated here by
their own position ids (the angles GLMModel gathered for exactly these tokens) and the rotated keys
and the values are written at the context's sequence offset. Attention then runs over the cached
keys with no further rotation. megatron-core's own static path stores keys *before* RoPE and
re-rotates the whole cache every step with angles indexed by cache slot, which assumes positions
0..s-1; GLM's positions are explicit (generated [MASK] tokens all sit at the mask's position), and
GLM-130B's cache holds keys after RoPE (SAT `mem_kv`, docs/generation.md).
"""

from __future__ import annotations

from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb
from megatron.core.transformer.attention import SelfAttention


class GLMSelfAttention(SelfAttention):
    """SelfAttention whose static-batching KV cache holds post-RoPE keys."""

    def _adjust_key_value_for_inference(self, inference_context, query, key, value, rotary_pos_emb,
                                        rotary_pos_cos=None, rotary_pos_sin=None, rotary_pos_cos_sin=None,
                                        sequence_len_offset=None, *, inference_params=None):
        if inference_context is None and inference_params is None:
            return super()._adjust_key_value_for_inference(
                inference_context, query, key, value, rotary_pos_emb, rotary_pos_cos, rotary_pos_sin,
                rotary_pos_cos_sin, sequence_len_offset, inference_params=inference_params)
        context = inference_context or inference_params
        if not context.is_static_batching() or self.config.flash_decode:
            raise NotImplementedError("GLM's KV cache uses megatron-core's StaticInferenceContext without flash decode")
        if rotary_pos_emb is not None:
            q_angles, k_angles = rotary_pos_emb
            query = apply_rotary_pos_emb(query, q_angles, config=self.config, cp_group=self.pg_collection.cp)
            key = apply_rotary_pos_emb(key, k_angles, config=self.config, cp_group=self.pg_collection.cp)
        memory = context.key_value_memory_dict.get(self.layer_number)
        if memory is None:
            memory = (
                self._allocate_memory(context.max_sequence_length, context.max_batch_size, self.key_hidden_size,
                                      key.dtype),
                self._allocate_memory(context.max_sequence_length, context.max_batch_size, self.val_hidden_size,
                                      value.dtype),
            )
            context.key_value_memory_dict[self.layer_number] = memory
        key_memory, value_memory = memory
        start, batch = context.sequence_len_offset, key.size(1)
        end = start + key.size(0)
        if end > key_memory.size(0) or batch > key_memory.size(1):
            raise ValueError(f"KV cache holds {key_memory.size(0)} tokens x {key_memory.size(1)} sequences; "
                             f"asked for {end} x {batch}")
        key_memory[start:end, :batch] = key
        value_memory[start:end, :batch] = value
        return (query, key_memory[:end, :batch].contiguous(), value_memory[:end, :batch].contiguous(), None,
                self.attn_mask_type, None)
