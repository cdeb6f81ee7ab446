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
