"""A fused dequantize-and-multiply Triton kernel for GLM-130B's INT8 and packed-INT4 weights.

    out[m, n] = scale[n] * sum_k x[m, k] * q[n, k]

q is read as stored (int8 [N, K], or int8 [N, K/2] with the even column in the high nibble and the
odd column in the low one, docs/glm130b.md §5) and never written out at full precision: each
program loads a [BN, BK] tile of q (INT4: [BN, BK/2] bytes, split into the high and low nibbles by
arithmetic shifts), multiplies it with the matching even / odd columns of x on the tensor cores
(fp16/bf16 inputs, fp32 accumulation) and applies the per-row scale once at the end. INT4 moves a
quarter of fp16's weight bytes, which is what the memory-bound decode step needs.

Registered in megatron_glm.quantization.kernels as "triton" (GLM_QUANT_KERNEL=triton); returns
None (the torch path runs) where Triton is missing or the tensors are not on a GPU, unless
TRITON_INTERPRET=1 (Triton's CPU interpreter: how the tests check it without a GPU). Block sizes are
fixed starting points, not tuned: bench/quantized_matmul.py measures it on a GPU.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the torch path serves
    triton = tl = None


if triton is not None:

    @triton.jit
    def _w8_kernel(x_ptr, q_ptr, s_ptr, out_ptr, M, N, K, stride_xm, stride_qn, stride_om,
                   BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        pid_m, pid_n = tl.program_id(0), tl.program_id(1)
        rm = pid_m * BM + tl.arange(0, BM)
        rn = pid_n * BN + tl.arange(0, BN)
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, K, BK):
            rk = k0 + tl.arange(0, BK)
            x = tl.load(x_ptr + rm[:, None] * stride_xm + rk[None, :], mask=(rm[:, None] < M) & (rk[None, :] < K),
                        other=0.0)
            q = tl.load(q_ptr + rn[:, None] * stride_qn + rk[None, :], mask=(rn[:, None] < N) & (rk[None, :] < K),
                        other=0)
            acc += tl.dot(x, tl.trans(q.to(tl.float32).to(x.dtype)))
        scale = tl.load(s_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)
        acc = acc * scale[None, :]
        tl.store(out_ptr + rm[:, None] * stride_om + rn[None, :], acc.to(out_ptr.dtype.element_ty),
                 mask=(rm[:, None] < M) & (rn[None, :] < N))

    @triton.jit
    def _w4_kernel(x_ptr, q_ptr, s_ptr, out_ptr, M, N, K2, stride_xm, stride_qn, stride_om,
                   BM: tl.constexpr, BN: tl.constexpr, BK2: tl.constexpr):
        """K2 = K / 2 bytes per weight row; BK2 bytes (2 x BK2 columns) per step."""
        pid_m, pid_n = tl.program_id(0), tl.program_id(1)
        rm = pid_m * BM + tl.arange(0, BM)
        rn = pid_n * BN + tl.arange(0, BN)
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, K2, BK2):
            rb = k0 + tl.arange(0, BK2)  # byte index; columns 2 rb (high nibble) and 2 rb + 1 (low)
            xmask = (rm[:, None] < M) & (rb[None, :] < K2)
            x_even = tl.load(x_ptr + rm[:, None] * stride_xm + 2 * rb[None, :], mask=xmask, other=0.0)
            x_odd = tl.load(x_ptr + rm[:, None] * stride_xm + 2 * rb[None, :] + 1, mask=xmask, other=0.0)
            packed = tl.load(q_ptr + rn[:, None] * stride_qn + rb[None, :],
                             mask=(rn[:, None] < N) & (rb[None, :] < K2), other=0)
            high = packed >> 4  # arithmetic: sign-extends the high nibble
            low = (packed << 4).to(tl.int8) >> 4
            acc += tl.dot(x_even, tl.trans(high.to(tl.float32).to(x_even.dtype)))
            acc += tl.dot(x_odd, tl.trans(low.to(tl.float32).to(x_odd.dtype)))
        scale = tl.load(s_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)
        acc = acc * scale[None, :]
        tl.store(out_ptr + rm[:, None] * stride_om + rn[None, :], acc.to(out_ptr.dtype.element_ty),
                 mask=(rm[:, None] < M) & (rn[None, :] < N))


def available() -> bool:
    return triton is not None


def quantized_matmul(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bits: int) -> Optional[torch.Tensor]:
    """x [M, K] (fp16/bf16/fp32) -> [M, N] in x's dtype; None where this kernel does not apply."""
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if triton is None or (x.device.type != "cuda" and not interpret) or x.dim() != 2:
        return None
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32) or weight.dtype != torch.int8:
        return None
    x = x.contiguous()
    weight = weight.contiguous()
    m, k = x.shape
    n = weight.shape[0]
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    bm = 16 if m <= 16 else 64
    bn, bk = 64, 64
    grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))
    if bits == 8:
        if weight.shape[1] != k:
            return None
        _w8_kernel[grid](x, weight, scale, out, m, n, k, x.stride(0), weight.stride(0), out.stride(0),
                         BM=bm, BN=bn, BK=bk)
    elif bits == 4:
        if weight.shape[1] * 2 != k:
            return None
        _w4_kernel[grid](x, weight, scale, out, m, n, k // 2, x.stride(0), weight.stride(0), out.stride(0),
                         BM=bm, BN=bn, BK2=bk // 2)
    else:
        return None
    return out
