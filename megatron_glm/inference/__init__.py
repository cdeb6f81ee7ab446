"""Inference on GLM checkpoints: the model with a KV cache (model.py) and GLM-130B's generation
(generation.py). docs/generation.md describes both."""

from megatron_glm.inference.generation import (Candidate, Context, GenerationConfig, GenerationResult, fill,
                                               generate, generate_batch)
from megatron_glm.inference.model import (InferenceError, InferenceModel, KVCache, load_inference_model,
                                          parse_special_token_ids)

__all__ = ["Candidate", "Context", "GenerationConfig", "GenerationResult", "InferenceError", "InferenceModel",
           "KVCache", "fill", "generate", "generate_batch", "load_inference_model", "parse_special_token_ids"]
