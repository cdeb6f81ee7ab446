"""Quiet by default, verbose on request: one place that sets up logging for every CLI.

Our own logger speaks at INFO (one line per meaningful event); third-party libraries (megatron-core,
torch, sentencepiece) are held at ERROR and their non-actionable warnings (absent apex/TE,
deprecations, advice that only applies to GPUs) are hidden unless --verbose.
"""

from __future__ import annotations

import logging
import warnings

_NOISE = (
    r".*(Apex|Transformer Engine).*",
    r".*cuda_graph_scope.*|.*full scope is deprecated.*",
    # megatron's pipeline schedules read .grad of non-leaf activations by design.
    r".*\.grad attribute of a Tensor that is not a leaf.*",
    # The launcher sets CUDA_DEVICE_MAX_CONNECTIONS where it matters (GPUs); on CPU it is noise.
    r".*CUDA_DEVICE_MAX_CONNECTIONS.*",
)


def configure_logging(name: str, verbose: bool = False, quiet: bool = False) -> logging.Logger:
    """Return the CLI's logger, printing `name: message` to stderr."""
    if not verbose:
        for pattern in _NOISE:
            warnings.filterwarnings("ignore", message=pattern)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        logging.getLogger().setLevel(logging.ERROR)
        logging.getLogger("megatron").setLevel(logging.ERROR)
    else:
        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG if verbose else (logging.WARNING if quiet else logging.INFO))
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(f"{name}: %(message)s"))
        logger.addHandler(handler)
    logger.propagate = False
    return logger
