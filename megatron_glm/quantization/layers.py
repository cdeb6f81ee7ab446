"""Weight-only INT8/INT4 tensor-parallel linear layers that stand in for megatron-core's
Column/RowParallelLinear in the GLM layer spec at inference (docs/quantization.md).

Each layer keeps this rank's shard of the weight exactly as GLM-130B stores it (docs/glm130b.md §5):

    weight        int8 [out_local, in_local]          (INT8)
                  int8 [out_local, in_local // 2]     (INT4: two values per byte, even column in the
                                                       high nibble, odd column in the low nibble)
    weight_scale  fp16 (or bf16) [out_local]          one symmetric absmax scale per output row

and the bias (unquantized, as GLM-130B) as a parameter. The forward multiplies the activations by
`dequantize(weight) ^ T` through `kernels.quantized_matmul`: the torch path dequantizes the layer's
weight into a scratch tensor of the activations' dtype and runs one GEMM (GLM-130B's own scheme:
`extract_weight_to_half` then `mm`), so the only full-precision weight that ever exists is one
layer's, for the duration of its matmul. A fused GPU kernel plugs in there.

Communication is megatron-core's: column-parallel layers keep their output split (or gather it),
row-parallel layers all-reduce their partial sums and add the bias after the reduction.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes
from megatron.core.tensor_parallel.mappings import (copy_to_tensor_model_parallel_region,
                                                    gather_from_tensor_model_parallel_region,
                                                    reduce_from_tensor_model_parallel_region)
from megatron.core.utils import divide, get_pg_rank, get_pg_size, get_tensor_model_parallel_group_if_none

from megatron_glm.quantization.kernels import quantized_matmul

SCALE_DTYPE = torch.float16
"""GLM-130B's scales (docs/glm130b.md §5); bf16 scales are accepted from checkpoints that hold them."""


def packed_columns(columns: int, bits: int) -> int:
    """Bytes per row of a quantized weight with `columns` input columns."""
    return columns // 2 if bits == 4 else columns


class _QuantizedParallelLinear(torch.nn.Module):
    """Shared construction: int8/packed-int4 weight and per-row scale buffers, an unquantized bias."""

    bits: int = 8
    parallel_dim: int = 0

    def __init__(self, input_size: int, output_size: int, *, config, init_method=None, bias: bool = True,
                 gather_output: bool = False, input_is_parallel: bool = True, skip_bias_add: bool = False,
                 stride: int = 1, is_expert: bool = False, tp_group=None, **unused):
        super().__init__()
        if is_expert:
            raise NotImplementedError("quantized linear layers are for dense layers, not MoE experts")
        if getattr(config, "sequence_parallel", False):
            raise NotImplementedError("quantized inference runs without sequence parallelism")
        self.config = config
        self.input_size, self.output_size = input_size, output_size
        self.gather_output = gather_output
        self.input_is_parallel = input_is_parallel
        self.skip_bias_add = skip_bias_add
        self.stride = stride
        self.tp_group = get_tensor_model_parallel_group_if_none(tp_group)
        self.world = get_pg_size(self.tp_group)
        self.rank = get_pg_rank(self.tp_group)
        if self.parallel_dim == 0:
            rows, columns = divide(output_size, self.world), input_size
        else:
            rows, columns = output_size, divide(input_size, self.world)
        if self.bits == 4 and columns % 2:
            raise ValueError(f"INT4 packs two input columns per byte: {columns} local columns (input {input_size}"
                             f" over TP{self.world}) is odd; use INT8 or another TP")
        self.rows, self.columns = rows, columns
        device = None if config.use_cpu_initialization or not torch.cuda.is_available() \
            else torch.cuda.current_device()
        self.register_buffer("weight", torch.zeros(rows, packed_columns(columns, self.bits), dtype=torch.int8,
                                                   device=device))
        self.register_buffer("weight_scale", torch.zeros(rows, dtype=SCALE_DTYPE, device=device))
        if bias:
            size = rows if self.parallel_dim == 0 else output_size
            self.bias = torch.nn.Parameter(torch.zeros(size, dtype=config.params_dtype, device=device),
                                           requires_grad=False)
            if self.parallel_dim == 0:
                set_tensor_model_parallel_attributes(self.bias, True, 0, stride)
            else:
                setattr(self.bias, "sequence_parallel", False)
        else:
            self.register_parameter("bias", None)

    def extra_repr(self) -> str:
        kind = "column" if self.parallel_dim == 0 else "row"
        return (f"int{self.bits} {kind}-parallel, in={self.input_size}, out={self.output_size}, "
                f"local weight [{self.rows}, {self.columns}], TP{self.world}")

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        return quantized_matmul(x, self.weight, self.weight_scale, self.bits)

    def set_quantized(self, values: torch.Tensor, scale: torch.Tensor, name: str = "") -> None:
        """Install this rank's shard: int8 values [rows, bytes per row], per-row scales [rows]."""
        expected = (self.rows, packed_columns(self.columns, self.bits))
        if values.dtype != torch.int8 or tuple(values.shape) != expected:
            raise ValueError(f"{name or 'weight'}: expected int8 {expected} (INT{self.bits} shard of "
                             f"[{self.rows}, {self.columns}]), got {values.dtype} {tuple(values.shape)}")
        if scale.dim() != 1 or scale.shape[0] != self.rows or not scale.is_floating_point():
            raise ValueError(f"{name or 'weight'}_scale: expected one floating-point scale per row "
                             f"[{self.rows}], got {scale.dtype} {tuple(scale.shape)}")
        with torch.no_grad():
            self.weight.copy_(values)
            if scale.dtype != self.weight_scale.dtype:
                self.weight_scale = scale.detach().to(device=self.weight.device).clone()
            else:
                self.weight_scale.copy_(scale)


class _Column(_QuantizedParallelLinear):
    parallel_dim = 0

    def forward(self, input_: torch.Tensor, weight: Optional[torch.Tensor] = None,
                runtime_gather_output: Optional[bool] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if weight is not None:
            raise NotImplementedError("a quantized layer multiplies by its own weight")
        if self.world > 1:
            input_ = copy_to_tensor_model_parallel_region(input_, group=self.tp_group)
        output = self._matmul(input_)
        if self.bias is not None and not self.skip_bias_add:
            output = output + self.bias
        gather = self.gather_output if runtime_gather_output is None else runtime_gather_output
        if gather and self.world > 1:
            output = gather_from_tensor_model_parallel_region(output, group=self.tp_group)
        return output, (self.bias if self.skip_bias_add else None)


class _Row(_QuantizedParallelLinear):
    parallel_dim = 1

    def forward(self, input_: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if not self.input_is_parallel:
            raise NotImplementedError("quantized row-parallel layers take an already split input")
        output = self._matmul(input_)
        if self.world > 1:
            output = reduce_from_tensor_model_parallel_region(output, group=self.tp_group)
        if self.bias is not None and not self.skip_bias_add:
            output = output + self.bias
        return output, (self.bias if self.skip_bias_add else None)


class Int8ColumnParallelLinear(_Column):
    bits = 8


class Int4ColumnParallelLinear(_Column):
    bits = 4


class Int8RowParallelLinear(_Row):
    bits = 8


class Int4RowParallelLinear(_Row):
    bits = 4


QUANTIZED_LINEAR = {"int8": (Int8ColumnParallelLinear, Int8RowParallelLinear),
                    "int4": (Int4ColumnParallelLinear, Int4RowParallelLinear)}
"""quantization -> (column-parallel class, row-parallel class)."""

QuantizedParallelLinear = _QuantizedParallelLinear
