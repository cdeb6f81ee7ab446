"""Adapters that let third-party tools drive this project's models.

- `megatron_glm.integrations.lm_eval`: an EleutherAI lm-evaluation-harness model type,
  `megatron-glm` (install the `lm-eval` extra; docs/lm_eval.md). Importing it registers the model
  type; `python -m megatron_glm.integrations.lm_eval ...` is the harness's command line with it.

Nothing is imported here, so the package costs nothing when the optional extras are absent.
"""
