"""The one error type of glm-eval: a one-line message for the user (exit code 2, no traceback)."""

from __future__ import annotations


class EvalError(ValueError):
    """Bad input to the evaluation: a task file, a data line, a checkpoint/tokenizer mismatch.

    The message names the file (and line or key) it is about and, where there is one, the fix.
    """
