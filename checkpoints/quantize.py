"""Weight-only INT8/INT4 quantisation exactly as GLM-130B (docs/glm130b.md §5).

Per output row of the local TP shard, symmetric absmax, round to nearest:
    scale[r] = max_j |W[r, j]| / (2^(bits-1) - 1)      (fp16, stored as "<key>_scale")
    Wq = round(W / scale[r])                            (int8)
INT4 packs two values per int8 byte, even column in the high nibble: (w[2i] << 4) | (w[2i+1] & 0xF);
unpacking sign-extends. Row-parallel weights therefore get different scales at different TP degrees,
which is why quantisation happens per shard, after the split.
"""

from __future__ import annotations

from typing import Tuple

import torch

BITS = {"int8": 8, "int4": 4}


def quantize(weight: torch.Tensor, bits: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(int8 values, packed two per byte for INT4; fp16 scales [rows])."""
    if weight.dim() != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(weight.shape)}")
    levels = 2 ** (bits - 1) - 1
    w = weight.float()
    scale = (w.abs().amax(dim=1) / levels).half()
    divisor = scale.float().clamp_min(torch.finfo(torch.float16).tiny)[:, None]
    q = torch.round(w / divisor).clamp_(-levels, levels).to(torch.int8)
    return (pack_int4(q) if bits == 4 else q), scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """fp32 weights from int8 (or packed INT4) values and per-row fp16 scales."""
    values = unpack_int4(q) if bits == 4 else q
    return values.float() * scale.float()[:, None]


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    if q.shape[-1] % 2:
        raise ValueError(f"INT4 packing needs an even number of columns, got {q.shape[-1]}")
    high, low = q[..., 0::2].to(torch.int16), q[..., 1::2].to(torch.int16)
    packed = ((high << 4) | (low & 0xF)) & 0xFF
    return torch.where(packed > 127, packed - 256, packed).to(torch.int8)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    as_int = packed.to(torch.int16)
    high = as_int >> 4  # arithmetic shift sign-extends the high nibble
    low = ((as_int & 0xF) ^ 0x8) - 0x8  # sign-extend the low nibble
    out = torch.empty(*packed.shape[:-1], packed.shape[-1] * 2, dtype=torch.int8)
    out[..., 0::2] = high.to(torch.int8)
    out[..., 1::2] = low.to(torch.int8)
    return out
