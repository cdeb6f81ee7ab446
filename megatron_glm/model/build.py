"""build_model / build_model_chunks: what the trainer, converter and tests call to get a model.

The parallel layout comes from megatron-core's parallel_state, which must be initialised first
(megatron_glm.runtime.initialize_distributed). With a virtual pipeline each rank holds several
chunks; build_model_chunks returns them in schedule order.
"""

from __future__ import annotations

from typing import List, Optional

import torch
from megatron.core import parallel_state

from megatron_glm.config.schema import RunConfig
from megatron_glm.model.glm_model import GLMModel
from megatron_glm.model.grad_shrink import GradShrinkSchedule
from megatron_glm.model.spec import glm_layer_spec
from megatron_glm.model.transformer_config import GLMTransformerConfig, build_transformer_config


def grad_shrink_schedule(run: RunConfig) -> GradShrinkSchedule:
    egs = run.model.embedding_grad_shrink
    return GradShrinkSchedule(alpha=egs.alpha, knots=egs.schedule)


def build_model(
    run: RunConfig,
    pre_process: bool = True,
    post_process: bool = True,
    vp_stage: Optional[int] = None,
    config: Optional[GLMTransformerConfig] = None,
    parallel_output: bool = True,
    move_to_gpu: bool = True,
    quantize: Optional[str] = None,
) -> GLMModel:
    """One GLM model chunk. Pass `config` to share one TransformerConfig between chunks.
    `quantize` ("int8"/"int4", inference only) puts weight-only quantized linear layers in the
    layer spec (megatron_glm.quantization); their weights are filled by its loader.

    On a GPU machine the chunk is moved to the current device: megatron-core allocates its linear
    layers there, but torch's LayerNorm parameters start on the CPU.
    """
    config = config or build_transformer_config(run)
    model = GLMModel(
        config=config,
        transformer_layer_spec=glm_layer_spec(run.model.attention_backend, quantize=quantize),
        padded_vocab_size=run.model.resolved_padded_vocab_size,
        max_sequence_length=run.model.seq_length,
        pre_process=pre_process,
        post_process=post_process,
        grad_shrink=grad_shrink_schedule(run),
        shrink_output_weight_gradient=run.model.embedding_grad_shrink.apply_to_output_weight,
        parallel_output=parallel_output,
        vp_stage=vp_stage,
    )
    if move_to_gpu and torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    return model


def build_model_chunks(run: RunConfig, config: Optional[GLMTransformerConfig] = None) -> List[GLMModel]:
    """This rank's model chunks (one unless a virtual pipeline is configured), schedule order."""
    config = config or build_transformer_config(run)
    vpp = parallel_state.get_virtual_pipeline_model_parallel_world_size()
    if vpp is None or vpp == 1:
        return [
            build_model(
                run,
                pre_process=parallel_state.is_pipeline_first_stage(),
                post_process=parallel_state.is_pipeline_last_stage(),
                config=config,
            )
        ]
    return [
        build_model(
            run,
            pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=stage),
            post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=stage),
            vp_stage=stage,
            config=config,
        )
        for stage in range(vpp)
    ]
