"""glm-train: what every rank runs, plus `describe` for sizing a model without building it for real.

    glm-train --config RUN.yaml --run-dir DIR [dotted.key=value ...]        (under torchrun / srun)
        train: metrics.jsonl, events.jsonl, checkpoints/ in DIR; resumes from DIR's latest
        checkpoint. Exit codes (megatron_glm.rundir.ExitCode): 0 done (DONE written), 2 bad
        configuration or run directory (nothing trained), 75 stopped by a signal (checkpoint
        saved: please requeue), 74 a checkpoint could not be written (the previous one is intact),
        76 ended by the hang watchdog, 77 the pre-flight check (first thing after joining the job)
        found a broken node (megatron_glm.runtime.preflight), 1 an unexpected error (traceback).

    glm-train describe PRESET_OR_YAML [dotted.key=value ...]
        one JSON object: shapes and the exact parameter count of the model megatron-core builds.
    glm-train smoke PRESET_OR_YAML [--steps N] [dotted.key=value ...]     (under torchrun)
        a few optimizer steps of the GLM objective at the configured layout, on the run's glm-prep
        datasets (validation loss before/after) or, without a data section, on synthetic data:
        a quick check of the parallel engine without a run directory.

    describe and smoke exit 0 when done, 2 for a bad configuration or usage. --verbose goes before
    or after the subcommand.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from megatron_glm.config.loader import ConfigError, load_run_config
from megatron_glm.runtime.logs import HelpFormatter, add_verbose_option, configure_logging


def _describe(args: argparse.Namespace) -> int:
    run = load_run_config(args.config, args.overrides)  # a bad config fails before torch is imported
    from megatron_glm.model.describe import describe

    print(json.dumps(describe(run), indent=None if args.compact else 2))
    return 0


def _distributed(args: argparse.Namespace, body, training: bool = False):
    """Load and validate the config (before any process group exists), join the job, run body."""
    from megatron_glm.config.validate import validate
    from megatron_glm.runtime.distributed import destroy_distributed, discover_world, initialize_distributed

    run = load_run_config(args.config, args.overrides)
    world = discover_world()
    validate(run, world_size=world.world_size, training=training)
    if training:  # train.eval_tasks: the task files and their data, read with the run's tokenizer
        from megatron_glm.config.loader import ConfigError
        from megatron_glm.training.downstream import eval_task_file_problems

        problems = eval_task_file_problems(run)
        if problems:
            raise ConfigError(problems)
    initialize_distributed(run, world)
    try:
        return body(run, world)
    finally:
        destroy_distributed()


def _smoke(args: argparse.Namespace) -> int:
    from megatron_glm.training.smoke import run_smoke

    def body(run, world):
        summary = run_smoke(run, steps=args.steps, global_batch=args.global_batch,
                            micro_batch=args.micro_batch, seq_length=args.seq_length, lr=args.lr)
        if world.rank == 0:
            print(json.dumps(summary))
        return 0

    return _distributed(args, body)


def _train(args: argparse.Namespace) -> int:
    from megatron_glm.config.loader import ConfigError
    from megatron_glm.config.validate import run_dir_problems
    from megatron_glm.training.loop import finished_step, run_training

    problems = run_dir_problems(args.run_dir)
    if problems:
        raise ConfigError(problems)

    def body(run, world):
        from megatron_glm.rundir import ExitCode
        from megatron_glm.runtime.preflight import PreflightFailed, preflight

        if finished_step(run, args.run_dir) is not None:  # nothing to do, nothing to touch
            return 0
        try:  # before the model is built: a broken node fails in seconds, named
            preflight(args.run_dir)
        except PreflightFailed as failure:
            print(f"glm-train: {failure}", file=sys.stderr)
            return int(ExitCode.PREFLIGHT)
        return run_training(run, args.run_dir)

    return _distributed(args, body, training=True)


def build_train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glm-train", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--config", required=True, help="run preset (tiny-cpu) or run YAML")
    parser.add_argument("--run-dir", required=True, help="config.yaml, metrics.jsonl, events.jsonl, checkpoints/")
    add_verbose_option(parser, "show third-party warnings and debug logs")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. train.steps=20")
    parser.set_defaults(handler=_train)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glm-train", description=__doc__, formatter_class=HelpFormatter)
    add_verbose_option(parser, "show third-party warnings and debug logs")
    commands = parser.add_subparsers(dest="command", required=True)

    describe = commands.add_parser("describe", help="print a model's shapes and parameter count as JSON")
    describe.add_argument("config", help="model preset (glm-130b, glm-tiny, ...) or run YAML file")
    describe.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    describe.add_argument("--compact", action="store_true", help="one line of JSON")
    describe.set_defaults(handler=_describe)

    smoke = commands.add_parser("smoke", help="a few GLM training steps on synthetic data (run under torchrun)")
    smoke.add_argument("config", help="model preset or run YAML file")
    smoke.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. parallel.tensor=2")
    smoke.add_argument("--steps", type=int, default=30, help="optimizer steps")
    smoke.add_argument("--global-batch", type=int, default=8, help="sequences per optimizer step")
    smoke.add_argument("--micro-batch", type=int, default=1, help="sequences per forward/backward")
    smoke.add_argument("--seq-length", type=int, default=64,
                       help="tokens per synthetic sequence (with a data section: the model's seq_length)")
    smoke.add_argument("--lr", type=float, default=1e-2, help="learning rate (no schedule)")
    smoke.set_defaults(handler=_smoke)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    first = [arg for arg in argv if arg != "--verbose"][:1]  # --verbose may come before the subcommand
    subcommand = first in (["describe"], ["smoke"], ["-h"], ["--help"])
    parser = build_parser() if subcommand else build_train_parser()
    # Overrides may also follow options (argparse ends a `nargs="*"` positional at the first
    # option, e.g. `describe glm-tiny --verbose model.num_layers=4`): leftovers like key=value are overrides.
    args, extra = parser.parse_known_args(argv)
    stray = [item for item in extra if item.startswith("-") or "=" not in item]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    args.overrides = list(args.overrides) + extra
    configure_logging("glm-train", verbose=args.verbose)
    from megatron_glm.cli.common import Failure, run_main

    return run_main("glm-train", args, args.handler, lambda error: Failure(
        f"invalid configuration:\n{error}") if isinstance(error, ConfigError) else None)


if __name__ == "__main__":
    sys.exit(main())
