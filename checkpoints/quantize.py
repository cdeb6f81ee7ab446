"""Weight-only INT8/INT4 quantisation exactly as GLM-130B (docs/glm130b.md §5).

Per output row of the local TP shard, symmetric absmax, round to nearest:
    scale[r] = max_j |W[r, j]| / (2^(bits-1) - 1)      (fp16, stored as "<key>_scale")
    Wq = round(W / scale[r])                            (int8)
INT4 packs two values per int8 byte, even column in the high nibble: (w[2i] << 4) | (w[2i+1] & 0xF);
unpacking sign-extends. Row-parallel weights therefore get different scales at different TP degrees,
which is why quantisation happens per shard, after the split.
"""

from __future__ import annotations

# One implementation, shared with the quantized inference layers: what glm-ckpt writes is what
# megatron_glm.quantization computes on load, bit for bit.
from megatron_glm.quantization.kernels import dequantize, pack_int4, unpack_int4
from megatron_glm.quantization.kernels import quantize_rows as quantize

__all__ = ["BITS", "dequantize", "pack_int4", "quantize", "unpack_int4"]

BITS = {"int8": 8, "int4": 4}
