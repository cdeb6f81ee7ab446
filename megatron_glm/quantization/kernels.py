"""The quantized matmul `y = x @ dequantize(weight, scale)^T` and where a fused kernel plugs in.

    quantized_matmul(x [..., in], weight int8 [out, in * bits / 8], scale [out], bits) -> [..., out]

The torch path (every device; the only one on CPU) dequantizes the weight into a scratch tensor of
x's dtype and runs one GEMM, which is GLM-130B's own scheme (`extract_weight_to_half` then `mm`,
docs/glm130b.md §5). An int8 (or int4) value times an fp16 scale is exact in fp32 (at most 7 + 11
significant bits) and rounded once in fp16 or bf16, as GLM-130B's half multiply does, so in fp32 the
result equals "dequantize the checkpoint, then multiply" bit for bit.

A fused dequantize-and-multiply kernel (a Triton kernel, torch's weight-only int8/int4 ops) is
registered with `register_kernel(name, fn)` and chosen with `set_kernel(name)` or the environment
variable GLM_QUANT_KERNEL. Registered: "int8pack" (torch's fused INT8 op) and "triton" (the
kernel of triton_kernel.py for INT8 and GLM-130B's packed INT4; GPU). `fn(x2d, weight, scale, bits)`
gets x as [tokens, in] and returns [tokens, out] in x's dtype, or None to fall back to the torch
path for this call (an unsupported shape, device or dtype). A kernel that is asked for by name but
not registered is an error.
"""

from __future__ import annotations

import os
from typing import Callable, Dict, Optional

import torch

Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], Optional[torch.Tensor]]
_KERNELS: Dict[str, Kernel] = {}
_selected: Optional[str] = None


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """int8 [..., n] of two int4 each (GLM-130B order: even column in the high nibble) -> int8 [..., 2n],
    sign-extended. Arithmetic shifts on int8 keep the sign: high = b >> 4, low = (b << 4) >> 4."""
    high = torch.bitwise_right_shift(packed, 4)
    low = torch.bitwise_right_shift(torch.bitwise_left_shift(packed, 4), 4)
    return torch.stack((high, low), dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def pack_int4(values: torch.Tensor) -> torch.Tensor:
    """Inverse of unpack_int4 for values in [-8, 7] (GLM-130B's cuda/quantization.cu order)."""
    if values.shape[-1] % 2:
        raise ValueError(f"INT4 packing needs an even number of columns, got {values.shape[-1]}")
    high, low = values[..., 0::2], values[..., 1::2]
    return torch.bitwise_or(torch.bitwise_left_shift(high, 4), torch.bitwise_and(low, 0xF)).to(torch.int8)


def quantize_rows(weight: torch.Tensor, bits: int):
    """GLM-130B's quantization of one TP shard (docs/glm130b.md §5), what glm-ckpt writes
    (checkpoints.quantize) and inference quantizes on load, as (int8 values, packed two per byte
    for INT4; fp16 scales [rows]):
    scale[r] = fp16(max_j |W[r, j]| / (2^(bits-1) - 1)), q = round-half-even(W / scale[r])."""
    if weight.dim() != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(weight.shape)}")
    levels = 2 ** (bits - 1) - 1
    w = weight.float()
    scale = (w.abs().amax(dim=1) / levels).half()
    divisor = scale.float().clamp_min(torch.finfo(torch.float16).tiny)[:, None]
    q = torch.round(w / divisor).clamp_(-levels, levels).to(torch.int8)
    return (pack_int4(q) if bits == 4 else q), scale


def dequantize(weight: torch.Tensor, scale: torch.Tensor, bits: int, dtype: torch.dtype = torch.float32
               ) -> torch.Tensor:
    """The full-precision [out, in] weight in `dtype` (a scratch tensor of one layer's shard)."""
    values = unpack_int4(weight) if bits == 4 else weight
    if dtype == torch.float32 or scale.dtype == dtype:
        # exact products, one rounding: q * s has at most 4 + 11 (8 + 11) significant bits
        return values.to(dtype) * scale.to(dtype)[:, None]
    return (values.to(torch.float32) * scale.to(torch.float32)[:, None]).to(dtype)


def torch_quantized_matmul(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Dequantize into scratch, then one GEMM (any device)."""
    return torch.matmul(x, dequantize(weight, scale, bits, x.dtype).t())


def register_kernel(name: str, fn: Kernel) -> None:
    _KERNELS[name] = fn


def set_kernel(name: Optional[str]) -> None:
    """Use the registered kernel `name` (None or "torch": the torch path)."""
    global _selected
    if name not in (None, "torch") and name not in _KERNELS:
        raise ValueError(f"no quantized matmul kernel {name!r} is registered (known: torch"
                         f"{''.join(', ' + k for k in sorted(_KERNELS))}); see megatron_glm/quantization/kernels.py")
    _selected = None if name == "torch" else name


def selected_kernel() -> str:
    name = _selected or os.environ.get("GLM_QUANT_KERNEL") or None
    if name not in (None, "torch") and name not in _KERNELS:
        raise ValueError(f"GLM_QUANT_KERNEL={name!r} is not a registered kernel (known: torch"
                         f"{''.join(', ' + k for k in sorted(_KERNELS))})")
    return name or "torch"


def quantized_matmul(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """x [..., in] @ dequantize(weight, scale)^T -> [..., out] in x's dtype."""
    name = selected_kernel()
    if name != "torch":
        out = _KERNELS[name](x.reshape(-1, x.shape[-1]), weight, scale, bits)
        if out is not None:
            return out.reshape(*x.shape[:-1], out.shape[-1])
    return torch_quantized_matmul(x, weight, scale, bits)


def _int8pack_mm(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bits: int) -> Optional[torch.Tensor]:
    """torch's weight-only INT8 op (`torch._weight_int8pack_mm`: fused dequantize-and-multiply where
    torch implements it: CPU and, in recent releases, CUDA). INT4 falls back (torch's int4 ops want
    their own tiled layout, not GLM-130B's nibble order)."""
    op = getattr(torch.ops.aten, "_weight_int8pack_mm", None)
    if bits != 8 or op is None or x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return None
    if x.shape[-1] % 32:  # torch 2.13's CPU op returns garbage for bf16 x [1, 24] (bench/quantized_matmul.py)
        return None
    try:
        return op(x.contiguous(), weight, scale.to(x.dtype))
    except (RuntimeError, NotImplementedError):
        return None


def _triton(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bits: int) -> Optional[torch.Tensor]:
    """triton_kernel.py: fused INT8 / packed-INT4 GEMM on GPU (None: the torch path runs)."""
    from megatron_glm.quantization import triton_kernel

    return triton_kernel.quantized_matmul(x, weight, scale, bits)


register_kernel("int8pack", _int8pack_mm)
register_kernel("triton", _triton)
