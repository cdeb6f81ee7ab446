"""glm-ckpt: inspect, convert (reshard, SAT import/export, safetensors, INT8/INT4), forward, compare.

    glm-ckpt inspect CKPT [--json]
    glm-ckpt convert SRC DST --to {dist,sat,safetensors} [--tp N] [--pp M] [--dtype fp16|bf16|fp32]
                     [--quantize int8|int4] [--model-only] [--max-shard-size 5GB] [--force]
    glm-ckpt forward CKPT --inputs IN.pt --out OUT.pt
    glm-ckpt compare A B --inputs IN.pt [--max-abs-diff X]
    glm-ckpt verify PATH            (exit 0: intact, 1: a file differs from its manifest)

Formats are detected from the directory. What a format does not record (SAT: the head count) is
given with --num-attention-heads / --layernorm-epsilon / --rotary-base, or --model PRESET.
Exit codes: 0 ok; 2 bad input (errors name the file and key; nothing is left behind in DST);
1 a check that failed (compare above --max-abs-diff, verify found damage).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import traceback
from typing import List, Optional

from checkpoints.errors import CheckpointError
from megatron_glm.config.loader import ConfigError


def _size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)I?B?\s*", text.upper())
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 500MB, 5GB)")
    return int(float(match.group(1)) * 1024 ** " KMGT".index(match.group(2) or " "))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glm-ckpt", description=__doc__.split("\n")[0])
    parser.add_argument("--verbose", action="store_true", help="tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True)

    def model_options(sub):
        group = sub.add_argument_group("model numbers a format may not record")
        group.add_argument("--model", help="take them from a model preset or YAML (e.g. glm-130b)")
        group.add_argument("--num-attention-heads", type=int)
        group.add_argument("--layernorm-epsilon", type=float)
        group.add_argument("--rotary-base", type=int)

    sub = commands.add_parser("inspect", help="format, step, layout, parameters, dtypes, bytes, optimizer")
    sub.add_argument("checkpoint")
    sub.add_argument("--json", action="store_true")
    model_options(sub)

    sub = commands.add_parser("convert", help="write SRC in another format and/or layout")
    sub.add_argument("src")
    sub.add_argument("dst")
    sub.add_argument("--to", required=True, choices=["dist", "sat", "safetensors"])
    sub.add_argument("--tp", type=int, default=1, help="tensor-parallel degree of DST (dist, sat)")
    sub.add_argument("--pp", type=int, default=1, help="pipeline-parallel degree of DST (dist)")
    sub.add_argument("--dtype", choices=["fp32", "fp16", "bf16"])
    sub.add_argument("--quantize", choices=["int8", "int4"], help="weight-only, per row (sat, safetensors)")
    sub.add_argument("--model-only", action="store_true", help="drop optimizer state (dist -> dist)")
    sub.add_argument("--max-shard-size", type=_size, help="safetensors: split into files of this size")
    sub.add_argument("--force", action="store_true", help="replace an existing DST")
    sub.add_argument("--quiet", action="store_true", help="no progress bar")
    model_options(sub)

    sub = commands.add_parser("forward", help="logits of CKPT for the inputs in IN.pt")
    sub.add_argument("checkpoint")
    sub.add_argument("--inputs", required=True)
    sub.add_argument("--out", required=True)
    model_options(sub)

    sub = commands.add_parser("compare", help="max abs / relative logit difference of two checkpoints")
    sub.add_argument("a")
    sub.add_argument("b")
    sub.add_argument("--inputs", required=True)
    sub.add_argument("--max-abs-diff", type=float, help="exit 1 if the difference is larger")
    model_options(sub)

    sub = commands.add_parser("verify", help="check checkpoints against their manifests (sizes, CRC-32)")
    sub.add_argument("path", help="a checkpoint directory, a checkpoints/ root, or a run directory")
    return parser


def _read_options(args):
    from checkpoints.convert import ReadOptions

    options = ReadOptions()
    if args.model:
        from megatron_glm.config.loader import load_run_config

        model = load_run_config(args.model).model
        options = ReadOptions(model.num_attention_heads, model.layernorm_epsilon, model.rotary_base)
    if args.num_attention_heads is not None:
        options.num_attention_heads = args.num_attention_heads
    if args.layernorm_epsilon is not None:
        options.layernorm_epsilon = args.layernorm_epsilon
    if args.rotary_base is not None:
        options.rotary_base = args.rotary_base
    return options


def _run(args) -> int:
    from checkpoints import convert as conversion
    from checkpoints import forward, inspect_ckpt
    from checkpoints.formats.base import WriteOptions

    if args.command == "verify":
        from checkpoints.verify import NotACheckpoint, verify

        try:
            lines, intact = verify(args.path)
        except NotACheckpoint as error:
            print(f"glm-ckpt: error: {error}", file=sys.stderr)
            return 2
        print("\n".join(lines))
        return 0 if intact else 1
    if args.command == "inspect":
        reader = conversion.open_checkpoint(args.checkpoint, _read_options(args))
        summary = inspect_ckpt.describe(reader)
        print(json.dumps(summary, indent=2) if args.json else inspect_ckpt.render(summary))
        return 0
    if args.command == "convert":
        options = WriteOptions(tp=args.tp, pp=args.pp, dtype=args.dtype, quantize=args.quantize,
                               model_only=args.model_only, max_shard_bytes=args.max_shard_size)
        summary = conversion.convert(args.src, args.dst, args.to, options, _read_options(args), force=args.force,
                                     progress=not args.quiet)
        note = " (optimizer state not carried)" if summary["optimizer_dropped"] else ""
        print(f"wrote {summary['destination']}: {summary['tensors']} tensors, "
              f"{summary['optimizer_tensors']} optimizer tensors{note}")
        return 0
    batches, single = forward.load_inputs(args.inputs)
    if args.command == "forward":
        logits = forward.model_logits(conversion.open_checkpoint(args.checkpoint, _read_options(args)), batches)
        forward.save_logits(logits, single, args.out)
        return 0
    a = forward.model_logits(conversion.open_checkpoint(args.a, _read_options(args)), batches)
    b = forward.model_logits(conversion.open_checkpoint(args.b, _read_options(args)), batches)
    result = forward.compare(a, b)
    print(f"max abs logit diff {result['max_abs_diff']:.6g}  max relative diff {result['max_rel_diff']:.6g}")
    if args.max_abs_diff is not None and result["max_abs_diff"] > args.max_abs_diff:
        print(f"glm-ckpt: error: difference above --max-abs-diff {args.max_abs_diff}", file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except (CheckpointError, ConfigError) as error:
        if args.verbose:
            traceback.print_exc()
        message = f"invalid --model:\n{error}" if isinstance(error, ConfigError) else str(error)
        print(f"glm-ckpt: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
