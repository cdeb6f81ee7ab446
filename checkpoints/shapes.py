"""GLMShape: the few numbers that define a GLM model's tensors, and every key/shape they imply.

The converter never builds a model to know what to expect: the canonical state dict (our TP1 x PP1
megatron-core names, layer keys "decoder.layers.<i>.") follows from these numbers, and each format
checks what it reads against it, so a shape or key mismatch is reported with the file and the key.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, List, Optional, Tuple

from checkpoints.errors import CheckpointError
from checkpoints.mappings import PARAMS, ParamSpec


@dataclass
class GLMShape:
    """Architecture numbers a checkpoint needs (docs/glm130b.md §1.1); the rest of GLM is fixed."""

    num_layers: int
    hidden_size: int
    num_attention_heads: int
    ffn_hidden_size: int
    """GeGLU inner size; fc1 has 2x this many rows."""
    padded_vocab_size: int
    """Rows of the word embedding (= the tied LM head)."""
    vocab_size: Optional[int] = None
    layernorm_epsilon: float = 1e-5
    rotary_base: int = 10000

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any], source: object = None) -> "GLMShape":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise CheckpointError(f"unknown model fields {sorted(unknown)}", source,
                                  hint=f"expected some of {sorted(known)}")
        try:
            return cls(**values)
        except TypeError as error:
            raise CheckpointError(f"incomplete model description: {error}", source) from None

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def validate(self, source: object = None) -> None:
        if self.num_attention_heads <= 0 or self.hidden_size % self.num_attention_heads:
            raise CheckpointError(f"hidden size {self.hidden_size} is not divisible by "
                                  f"{self.num_attention_heads} attention heads", source,
                                  hint="pass the right --num-attention-heads")

    def entries(self) -> List[Tuple[str, ParamSpec, Optional[int]]]:
        """(canonical key, spec, layer or None) for every parameter, in a fixed order."""
        out = [(spec.key(None), spec, None) for spec in PARAMS if spec.first]
        for layer in range(self.num_layers):
            out.extend((spec.key(layer), spec, layer) for spec in PARAMS if spec.per_layer)
        out.extend((spec.key(None), spec, None) for spec in PARAMS if not spec.per_layer and not spec.first)
        return out

    def parameter_count(self) -> int:
        total = 0
        for _, spec, _ in self.entries():
            count = 1
            for size in spec.shape(self):
                count *= size
            total += count
        return total
