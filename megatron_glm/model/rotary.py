"""RoPE gathered by explicit position ids (docs/glm130b.md §1.3).

megatron-core's RotaryEmbedding produces angles for arange(seq_len). GLM needs the angle of each
token's *position id*: [MASK] Part-B tokens repeat the position of their [MASK], packed 512-token
windows restart at 0. We produce megatron's angle layout ([s, b, 1, d], the two halves equal, the
non-interleaved rotate-half convention) per token, so megatron's own apply_rotary_pos_emb rotates q
and k unchanged: cos/sin broadcast over heads instead of over the batch.
"""

from __future__ import annotations

import torch


class PositionIdRotaryEmbedding(torch.nn.Module):
    """1D rotary angles over the full head dim, base 10000 by default, indexed by position ids."""

    def __init__(self, head_dim: int, base: float = 10000.0, angle_dtype: torch.dtype = torch.float32):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head dim, got {head_dim}")
        self.head_dim = head_dim
        self.base = float(base)
        self.angle_dtype = angle_dtype
        """float32 (training, default) or float16: GLM-130B's released model (SAT) rounds inv_freq,
        the positions and their products to fp16 before cos/sin; inference on its checkpoints can
        reproduce those angles (docs/generation.md)."""

    def inverse_frequencies(self, device: torch.device) -> torch.Tensor:
        """inv_freq[i] = 1 / base^(2i / d), i = 0 .. d/2-1, in fp32."""
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device) / self.head_dim
        return 1.0 / (self.base ** exponents)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        """position_ids [b, s] (any integers) -> angles [s, b, 1, head_dim] in fp32.

        Angles are computed in fp32 for every precision (LargeScale computed them in fp16 under
        fp16 training; fp32 is the more accurate of the two and what bf16 needs).
        """
        positions = position_ids.transpose(0, 1).to(torch.float32)  # [s, b]
        inv_freq = self.inverse_frequencies(position_ids.device)
        if self.angle_dtype == torch.float16:  # SAT: fp16 inv_freq, fp16 t, fp16 product
            angles = (positions.half()[..., None] * inv_freq.half()).float()
        else:
            angles = positions[..., None] * inv_freq  # [s, b, d/2]
        return torch.cat((angles, angles), dim=-1)[:, :, None, :]
