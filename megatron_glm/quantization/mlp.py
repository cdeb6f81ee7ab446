"""GLM's GeGLU MLP with quantized fc1 (column-parallel, GLU-split: rank r holds [X1_r; X2_r]) and fc2
(row-parallel); the forward (x1 * gelu(x2)) is GeGLUMLP's."""

from __future__ import annotations

from megatron.core.transformer.mlp import MLPSubmodules

from megatron_glm.model.mlp import GeGLUMLP
from megatron_glm.quantization.layers import QUANTIZED_LINEAR


def _mlp_class(quantize: str) -> type:
    column, row = QUANTIZED_LINEAR[quantize]

    def __init__(self, config, submodules=None, tp_group=None):
        GeGLUMLP.__init__(self, config, submodules or MLPSubmodules(linear_fc1=column, linear_fc2=row),
                          tp_group=tp_group)

    name = f"{quantize.capitalize()}GeGLUMLP"
    return type(name, (GeGLUMLP,), {"__init__": __init__, "__module__": __name__, "__qualname__": name})


Int8GeGLUMLP = _mlp_class("int8")
Int4GeGLUMLP = _mlp_class("int4")
QUANTIZED_MLP = {"int8": Int8GeGLUMLP, "int4": Int4GeGLUMLP}
