"""An independent float64 GLM-130B forward pass written from docs/glm130b.md §1.2-1.6 in plain PyTorch.

It shares nothing with megatron_glm but the parameter names of the state dict it reads. Formulas:
    h = E[ids]
    per layer:  x = LN(h);  qkv = x Wqkv^T + b, rows per head [q(d), k(d), v(d)]
                q, k rotated by RoPE at the token's position id (rotate_half, base 10000, full d)
                scores = q k^T / sqrt(d), masked (True) -> -10000, softmax in float
                h = alpha * x + (softmax(scores) v) Wo^T + bo,            alpha = sqrt(2N)
                y = LN(h);  [x1 | x2] = y W1^T + b1;  h = alpha * y + (x1 * gelu_erf(x2)) W2^T + b2
    logits = LN_final(h) E^T
"""

from __future__ import annotations

import math
from typing import Dict

import torch


def _layer_norm(x, weight, bias, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def _gelu_erf(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _rope(x, position_ids, base=10000.0):
    """x [b, s, heads, d]; angles gathered per token from its position id."""
    d = x.shape[-1]
    inv_freq = 1.0 / base ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    angles = position_ids.double()[..., None] * inv_freq  # [b, s, d/2]
    cos = torch.cat([angles.cos(), angles.cos()], -1)[:, :, None, :]
    sin = torch.cat([angles.sin(), angles.sin()], -1)[:, :, None, :]
    rotated = torch.cat([-x[..., d // 2:], x[..., : d // 2]], -1)
    return x * cos + rotated * sin


def reference_logits(weights: Dict[str, torch.Tensor], tokens, position_ids, mask, *, num_layers,
                     num_heads, eps=1e-5) -> torch.Tensor:
    w = {k: v.double() for k, v in weights.items()}
    alpha = math.sqrt(2.0 * num_layers)
    embedding = w["embedding.word_embeddings.weight"]
    h = embedding[tokens]
    b, s, hidden = h.shape
    d = hidden // num_heads
    for layer in range(num_layers):
        p = f"decoder.layers.{layer}."
        x = _layer_norm(h, w[p + "input_layernorm.weight"], w[p + "input_layernorm.bias"], eps)
        qkv = x @ w[p + "self_attention.linear_qkv.weight"].T + w[p + "self_attention.linear_qkv.bias"]
        qkv = qkv.view(b, s, num_heads, 3, d)
        q, k, v = qkv[..., 0, :], qkv[..., 1, :], qkv[..., 2, :]
        q, k = _rope(q, position_ids), _rope(k, position_ids)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
        scores = scores.masked_fill(mask, -10000.0)
        context = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(b, s, hidden)
        attention = context @ w[p + "self_attention.linear_proj.weight"].T + w[p + "self_attention.linear_proj.bias"]
        h = alpha * x + attention
        y = _layer_norm(h, w[p + "pre_mlp_layernorm.weight"], w[p + "pre_mlp_layernorm.bias"], eps)
        fc1 = y @ w[p + "mlp.linear_fc1.weight"].T + w[p + "mlp.linear_fc1.bias"]
        x1, x2 = fc1.chunk(2, dim=-1)
        mlp = (x1 * _gelu_erf(x2)) @ w[p + "mlp.linear_fc2.weight"].T + w[p + "mlp.linear_fc2.bias"]
        h = alpha * y + mlp
    out = _layer_norm(h, w["decoder.final_layernorm.weight"], w["decoder.final_layernorm.bias"], eps)
    return out @ embedding.T
