"""glm-ckpt: inspect, convert (reshard, SAT import/export, safetensors, INT8/INT4), forward, compare.

    glm-ckpt inspect CKPT [--json]
    glm-ckpt convert SRC DST --to {dist,sat,safetensors} [--tp N] [--pp M] [--dtype fp16|bf16|fp32]
                     [--quantize int8|int4] [--model-only] [--max-shard-size 5GB] [--force]
    glm-ckpt forward CKPT --inputs IN.pt --out OUT.pt      (prints what it wrote: path, batches, shapes)
    glm-ckpt compare A B --inputs IN.pt [--max-abs-diff X]
    glm-ckpt verify PATH            (exit 0: intact, 1: a file differs from its manifest)

Formats are detected from the directory. What a format does not record (SAT: the head count) is
given with --num-attention-heads / --layernorm-epsilon / --rotary-base, or --model PRESET.
Exit codes: 0 ok; 2 bad input or usage (errors name the file and key; nothing is left behind in DST);
1 a check that failed (compare above --max-abs-diff, verify found damage). --verbose (tracebacks)
goes before or after the subcommand; `glm-ckpt forward --help` describes the input file.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import List, Optional

from checkpoints.errors import CheckpointError
from megatron_glm.config.loader import ConfigError
from megatron_glm.runtime.logs import HelpFormatter, add_verbose_option

_STAGING = re.compile(r"(?P<dir>^|[\s/(])\.(?P<name>[^/\s]+)\.(?:tmp|old)-\d+")
"""convert builds DST in a hidden sibling `.<DST name>.tmp-<pid>` (see checkpoints/convert.py)."""


def _user_paths(message: str) -> str:
    """A message with convert's hidden staging directory named as the DST the user asked for."""
    return _STAGING.sub(lambda m: m.group("dir") + m.group("name"), message)


def _size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)I?B?\s*", text.upper())
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 500MB, 5GB)")
    return int(float(match.group(1)) * 1024 ** " KMGT".index(match.group(2) or " "))


FORWARD_HELP = """Logits of CKPT for the inputs in IN.pt, through the trainer's own GLM model (TP1, fp32, on CPU).

IN.pt is a torch file (torch.save) holding one dict, or a list of dicts (one per batch), each with
    tokens          integer tensor [b, s]
    position_ids    integer tensor [b, s]       (RoPE positions, docs/glm130b.md §1.3)
    attention_mask  bool tensor [b, 1, s, s]    True = masked (may not be attended to)
OUT.pt gets the fp32 logits [b, s, padded vocab]: one tensor for a dict, a list for a list.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glm-ckpt", description=__doc__, formatter_class=HelpFormatter)
    add_verbose_option(parser, "tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True)

    def model_options(sub):
        group = sub.add_argument_group("model numbers a format may not record")
        group.add_argument("--model", help="take them from a model preset or YAML, e.g. glm-130b (default: none: "
                                           "the options below, else the format's record)")
        group.add_argument("--num-attention-heads", type=int,
                           help="attention heads, needed where not recorded (SAT) (default: --model's)")
        group.add_argument("--layernorm-epsilon", type=float,
                           help="layernorm epsilon where not recorded (default: --model's, else 1e-5)")
        group.add_argument("--rotary-base", type=int,
                           help="rotary embedding base where not recorded (default: --model's, else 10000)")

    sub = commands.add_parser("inspect", help="format, step, layout, the model's parameters, the values stored "
                                              "(by dtype), bytes, optimizer")
    sub.add_argument("checkpoint", help="checkpoint directory (dist, SAT or safetensors)")
    sub.add_argument("--json", action="store_true", help="one JSON object")
    model_options(sub)

    sub = commands.add_parser("convert", help="write SRC in another format and/or layout")
    sub.add_argument("src", help="checkpoint directory to read (dist, SAT or safetensors)")
    sub.add_argument("dst", help="directory to write (built aside and renamed into place when complete)")
    sub.add_argument("--to", required=True, choices=["dist", "sat", "safetensors"], help="format of DST")
    sub.add_argument("--tp", type=int, default=1, help="tensor-parallel degree of DST (dist, sat)")
    sub.add_argument("--pp", type=int, default=1, help="pipeline-parallel degree of DST (dist)")
    sub.add_argument("--dtype", choices=["fp32", "fp16", "bf16"],
                     help="cast the weights (default: keep each tensor's; fp16 with --quantize)")
    sub.add_argument("--quantize", choices=["int8", "int4"],
                     help="weight-only, per row (sat, safetensors) (default: none)")
    sub.add_argument("--model-only", action="store_true", help="drop optimizer state (dist -> dist)")
    sub.add_argument("--max-shard-size", type=_size,
                     help="safetensors: split into files of this size, e.g. 5GB (default: one file)")
    sub.add_argument("--force", action="store_true", help="replace an existing DST")
    sub.add_argument("--quiet", action="store_true", help="no progress bar")
    model_options(sub)

    sub = commands.add_parser("forward", help="logits of CKPT for the inputs in IN.pt",
                              description=FORWARD_HELP)
    sub.add_argument("checkpoint", help="checkpoint directory (dist, SAT or safetensors)")
    sub.add_argument("--inputs", required=True, metavar="IN.pt", help="torch file of input batches (see above)")
    sub.add_argument("--out", required=True, metavar="OUT.pt", help="torch file to write the logits to")
    model_options(sub)

    sub = commands.add_parser("compare", help="max abs / relative logit difference of two checkpoints",
                              description="Max abs and relative logit difference of checkpoints A and B on "
                                          "the inputs in IN.pt (the format of glm-ckpt forward --help).")
    sub.add_argument("a", help="first checkpoint directory")
    sub.add_argument("b", help="second checkpoint directory")
    sub.add_argument("--inputs", required=True, metavar="IN.pt", help="torch file of input batches (see forward)")
    sub.add_argument("--max-abs-diff", type=float,
                     help="exit 1 if the difference is larger (default: report only)")
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
    if args.command == "verify":  # before the imports below: verify needs no torch (fast in a cron job)
        from checkpoints.verify import NotACheckpoint, verify

        try:
            lines, intact = verify(args.path)
        except NotACheckpoint as error:
            print(f"glm-ckpt: error: {error}", file=sys.stderr)
            return 2
        print("\n".join(lines))
        return 0 if intact else 1
    from checkpoints import convert as conversion
    from checkpoints import forward, inspect_ckpt
    from checkpoints.formats.base import WriteOptions

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
        shapes = ", ".join(f"[{', '.join(map(str, t.shape))}]" for t in logits)
        print(f"wrote {args.out}: logits of {len(logits)} batch(es), float32 [b, s, padded vocab]: {shapes}"
              + ("" if single else " (a list, one tensor per input batch)"))
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
    from megatron_glm.cli.common import Failure, run_main

    args = _parser().parse_args(argv)

    def expected(error: BaseException) -> Optional[Failure]:
        if isinstance(error, ConfigError):
            message = f"invalid --model:\n{error}"
        elif isinstance(error, FileExistsError) and error.filename is not None:  # mkdir of DST's parents
            message = f"cannot create the directory {error.filename}: a file of that name is in the way"
        elif isinstance(error, OSError):
            where = [str(p) for p in (error.filename, error.filename2) if p is not None]
            message = (f"{where[0]}: " if where else "") + (error.strerror or str(error))
        elif isinstance(error, CheckpointError):
            message = str(error)
        else:
            return None
        return Failure(f"error: {_user_paths(message)}")

    return run_main("glm-ckpt", args, _run, expected)


if __name__ == "__main__":
    sys.exit(main())
