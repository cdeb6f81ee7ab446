"""GLM-130B's initialisation (docs/glm130b.md §1.5): DeepNorm's beta-scaled Xavier normal.

Xavier normal uses the *full* (un-partitioned) shapes, so every std below is a constant of the
model, and the same function initialises a whole weight (CPU init) or one TP shard (GPU init).
- q, k: gain 1, std = sqrt(2 / (h + h));
- v and the attention output projection: gain beta = (2N)^-1/2;
- fc1 (both GeGLU halves) and fc2: gain beta with fans h + ffn;
- word embedding: N(0, embedding_init_std); LayerNorm 1/0; every bias 0.
The paper's intent is implemented per head (v rows of every head get beta). LargeScale's code
chunked the per-head-interleaved QKV weight into thirds instead, so there the last third of the heads
got beta on q, k and v; we do not reproduce that accident (it only affects initial values).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch


def deepnorm_alpha(num_layers: int) -> float:
    """Residual scale of DeepNorm for a decoder of N layers: sqrt(2N) (11.83 for GLM-130B)."""
    return math.sqrt(2.0 * num_layers)


def deepnorm_beta(num_layers: int) -> float:
    """Init gain of DeepNorm: (2N)^-1/2 (0.0845 for GLM-130B)."""
    return (2.0 * num_layers) ** -0.5


def _normal(std: float) -> Callable[[torch.Tensor], None]:
    def init(weight: torch.Tensor) -> None:
        torch.nn.init.normal_(weight, mean=0.0, std=std)

    return init


@dataclass(frozen=True)
class DeepNormInit:
    """The init functions of one model; hand them to megatron-core through TransformerConfig."""

    hidden_size: int
    ffn_hidden_size: int
    num_layers: int
    head_dim: int
    embedding_std: float

    @property
    def beta(self) -> float:
        return deepnorm_beta(self.num_layers)

    @property
    def qk_std(self) -> float:
        return math.sqrt(2.0 / (self.hidden_size + self.hidden_size))

    @property
    def v_and_proj_std(self) -> float:
        return self.beta * self.qk_std

    @property
    def ffn_std(self) -> float:
        return self.beta * math.sqrt(2.0 / (self.hidden_size + self.ffn_hidden_size))

    def qkv(self, weight: torch.Tensor) -> None:
        """Fused QKV, rows per head as [q(d), k(d), v(d)]: N(0, qk_std), v rows scaled by beta."""
        with torch.no_grad():
            torch.nn.init.normal_(weight, mean=0.0, std=self.qk_std)
            weight.view(-1, 3, self.head_dim, weight.shape[-1])[:, 2].mul_(self.beta)

    def attention_output(self) -> Callable[[torch.Tensor], None]:
        return _normal(self.v_and_proj_std)

    def ffn(self) -> Callable[[torch.Tensor], None]:
        return _normal(self.ffn_std)

    def embedding(self) -> Callable[[torch.Tensor], None]:
        return _normal(self.embedding_std)
