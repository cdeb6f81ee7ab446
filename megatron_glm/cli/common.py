"""The one main() of the glm-* tools: what happens around a subcommand's handler.

Every tool parses its own arguments and knows its own errors; what surrounds the handler is the
same for all of them, so it is written once here:

* an expected error (bad input, a failed job: whatever the tool's `expected` maps to a Failure)
  prints `PROG: message` on stderr -- from global rank 0 only when the tool runs as many ranks
  (torchrun, srun) -- with the traceback under --verbose, and ends with its exit code (2 for bad
  input, as every tool documents);
* a closed stdout (`glm-launch plan ... | head`) ends quietly with 0;
* Ctrl-C ends with 130 and one line;
* process groups the handler left behind are torn down;
* anything else is a bug: the traceback and exit code 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from dataclasses import dataclass
from typing import Callable, Optional


@dataclass
class Failure:
    message: str
    exit_code: int = 2


def _global_rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def _teardown_process_groups() -> None:
    if "torch.distributed" not in sys.modules:  # never import torch for tools that did not
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        from megatron_glm.runtime.distributed import destroy_distributed

        destroy_distributed()


def run_main(prog: str, args: argparse.Namespace, handler: Callable[[argparse.Namespace], Optional[int]],
             expected: Callable[[BaseException], Optional[Failure]]) -> int:
    """`handler(args)`'s exit code, with the conventions of the module docstring."""
    try:
        code = int(handler(args) or 0)
        sys.stdout.flush()  # inside the try: a closed pipe shows here, not as a traceback at exit
        return code
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - mapped or re-raised
        failure = expected(error)
        if failure is None:
            raise
        if getattr(args, "verbose", False):
            traceback.print_exc()
        if _global_rank() == 0:
            print(f"{prog}: {failure.message}", file=sys.stderr)
        return failure.exit_code
    finally:
        _teardown_process_groups()


def add_model_loading_options(parser) -> None:
    """The options of glm-eval and glm-generate that say how a checkpoint becomes a model
    (megatron_glm.inference.load_inference_model's arguments)."""
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel degree (under torchrun/srun: TP x PP ranks)")
    parser.add_argument("--pp", type=int, default=1, help="pipeline-parallel degree")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32", help="weights and activations")
    parser.add_argument("--num-attention-heads", type=int,
                        help="SAT checkpoints do not record it (GLM-130B: 96; default: the checkpoint's record)")
    parser.add_argument("--rope-precision", choices=["fp32", "fp16"],
                        help="rotary angles: fp16 as GLM-130B's released model computes them (default for SAT "
                             "checkpoints), fp32 as our trainer (default otherwise)")
    parser.add_argument("--quantize", choices=["int8", "int4", "none"],
                        help="weight-only INT8/INT4 linear layers as GLM-130B (docs/quantization.md): quantize a "
                             "full-precision checkpoint on load; none: dequantize (default: as stored, a quantized "
                             "checkpoint stays quantized)")
