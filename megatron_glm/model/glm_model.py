"""GLMModel: embedding -> DeepNorm layers -> final LN -> tied, vocab-parallel LM head.

Inputs follow GLM's sample format (docs/glm130b.md §2.3): token ids, explicit position ids (any
integers: [MASK] Part-B tokens repeat their [MASK]'s position, packed windows restart at 0) and a
boolean attention mask [b, 1, s, s] with True = masked (prefix-LM, block-diagonal across windows).
Every pipeline stage receives position ids and the mask (each layer applies RoPE and the mask);
the first stage also the tokens, the last stage the labels.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from megatron.core import tensor_parallel
from megatron.core.models.common.embeddings.language_model_embedding import LanguageModelEmbedding
from megatron.core.models.common.language_module.language_module import LanguageModule
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.enums import ModelType
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlock

from megatron_glm.model.grad_shrink import GradShrinkSchedule, shrink_gradient
from megatron_glm.model.rotary import PositionIdRotaryEmbedding
from megatron_glm.model.transformer_config import GLMTransformerConfig


class GLMModel(LanguageModule):
    """One pipeline chunk of a GLM model (the whole model when pre_process and post_process)."""

    def __init__(
        self,
        config: GLMTransformerConfig,
        transformer_layer_spec: ModuleSpec,
        padded_vocab_size: int,
        max_sequence_length: int,
        pre_process: bool = True,
        post_process: bool = True,
        grad_shrink: Optional[GradShrinkSchedule] = None,
        shrink_output_weight_gradient: bool = True,
        parallel_output: bool = True,
        vp_stage: Optional[int] = None,
        pg_collection: Optional[ProcessGroupCollection] = None,
    ):
        super().__init__(config=config, pg_collection=pg_collection)
        self.pre_process = pre_process
        self.post_process = post_process
        self.vp_stage = vp_stage
        self.model_type = ModelType.encoder_or_decoder
        self.share_embeddings_and_output_weights = True
        self.parallel_output = parallel_output
        self.max_sequence_length = max_sequence_length
        self.grad_shrink = grad_shrink or GradShrinkSchedule()
        self.shrink_output_weight_gradient = shrink_output_weight_gradient
        self.grad_shrink_alpha = self.grad_shrink.alpha_at(0)

        if pre_process:
            self.embedding = LanguageModelEmbedding(
                config=config,
                vocab_size=padded_vocab_size,
                max_sequence_length=max_sequence_length,
                position_embedding_type="none",
                tp_group=self.pg_collection.tp,
            )
        self.rotary = PositionIdRotaryEmbedding(config.kv_channels, base=config.rotary_base)
        self.decoder = TransformerBlock(
            config=config,
            spec=transformer_layer_spec,
            pre_process=pre_process,
            post_process=post_process,
            pg_collection=self.pg_collection,
            vp_stage=vp_stage,
        )
        if post_process:
            self.output_layer = tensor_parallel.ColumnParallelLinear(
                config.hidden_size,
                padded_vocab_size,
                config=config,
                init_method=config.embedding_init_method,
                bias=False,
                skip_bias_add=False,
                gather_output=False,
                skip_weight_param_allocation=pre_process,
                tp_group=self.pg_collection.tp,
            )
        if pre_process or post_process:
            self.setup_embeddings_and_output_layer()

    def set_training_step(self, step: int) -> None:
        """Update the embedding-gradient-shrink alpha for the optimizer step about to run."""
        self.grad_shrink_alpha = self.grad_shrink.alpha_at(step)

    def set_input_tensor(self, input_tensor) -> None:
        """Pipeline schedules hand the previous stage's activations in here."""
        if not isinstance(input_tensor, list):
            input_tensor = [input_tensor]
        assert len(input_tensor) == 1, "GLMModel takes one input tensor per pipeline stage"
        self.decoder.set_input_tensor(input_tensor[0])

    def forward(
        self,
        input_ids: Optional[torch.Tensor],
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: Optional[torch.Tensor] = None,
        inference_context: Optional[Any] = None,
        logits_at: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Returns hidden states [s, b, h] (not the last stage), per-token fp32 loss [b, s] when
        labels are given, else logits [b, s, vocab/TP] (or full vocab if parallel_output=False).

        Inference only (megatron_glm.inference): `inference_context`, a megatron-core
        StaticInferenceContext, makes attention append these tokens' keys (after RoPE) and values to
        its KV cache and attend over the cache; `logits_at` [b] computes the logits of one position
        per sequence only ([b, 1, vocab]).
        """
        hidden_states = None
        if self.pre_process:
            hidden_states = self.embedding(input_ids=input_ids, position_ids=None)
            hidden_states = shrink_gradient(hidden_states, self.grad_shrink_alpha)
        rotary_angles = self.rotary(position_ids)
        if inference_context is None:
            hidden_states = self.decoder(
                hidden_states=hidden_states, attention_mask=attention_mask, rotary_pos_emb=rotary_angles
            )
        else:
            hidden_states = self.decoder(
                hidden_states=hidden_states, attention_mask=attention_mask, rotary_pos_emb=rotary_angles,
                inference_context=inference_context,
            )
        if not self.post_process:
            return hidden_states
        if logits_at is not None:
            batch = torch.arange(hidden_states.size(1), device=hidden_states.device)
            hidden_states = hidden_states[logits_at.to(hidden_states.device), batch][None]

        output_weight = self.shared_embedding_or_output_weight()
        if self.shrink_output_weight_gradient:
            output_weight = shrink_gradient(output_weight, self.grad_shrink_alpha)
        logits, _ = self.output_layer(hidden_states, weight=output_weight)
        if labels is not None:  # the loss is computed vocab-parallel, never on gathered logits
            return self.compute_language_model_loss(labels, logits.float())
        if not self.parallel_output:
            logits = tensor_parallel.gather_from_tensor_model_parallel_region(logits)
        return logits.transpose(0, 1).contiguous()
