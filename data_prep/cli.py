"""glm-prep: raw corpora -> tokenizer and megatron-core indexed datasets for GLM pretraining.

    glm-prep train-tokenizer --input FILES... --model-prefix OUT [--vocab-size 32000]
    glm-prep tokenize --input FILES... --output-prefix OUT --tokenizer-model M.model [--workers N]
                      [--format pile|wudao|mip|jsonl] [--shard i/n] [--max-error-rate 0.05]
                      [--accept-damaged-files]
    glm-prep merge --input PREFIXES_OR_GLOBS... --output-prefix OUT
    glm-prep inspect --data-prefix P --tokenizer-model M.model [--kind mask|gmask|mip] [--samples 2]

Options shared with Megatron-LM's tools/preprocess_data.py keep their names (--input,
--output-prefix, --tokenizer-model, --workers, --append-eod, --json-key). Each input file's format
is guessed from its name unless --format is given; the guess is logged. --verbose and --quiet go
before or after the subcommand.

Exit codes: 0 done; 2 bad usage or input: arguments, an unreadable input, an output that cannot be
written, datasets that do not go together (merge, inspect); 3 a failed job: a damaged input file
(one that cannot be read to its end; --accept-damaged-files keeps what was read) or too much input
lost to bad records. Whatever the failure, nothing is published.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import List, Optional

from data_prep.metadata import check_outputs, published_name
from megatron_glm.runtime.logs import HelpFormatter, add_flag_anywhere, add_verbose_option, configure_logging

log = logging.getLogger("glm-prep")


def _shard(text: str):
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: expected i/n, e.g. 0/8") from error
    if count < 1 or not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: need 0 <= i < n")
    return index, count


def _tokenizer(args):
    from megatron_glm.data.tokenizer import GLMTokenizer, parse_special_ids

    return GLMTokenizer(args.tokenizer_model, parse_special_ids(args.special_token_ids or ""))


def _reader_options(args) -> dict:
    return {"json_key": args.json_key, "mip_keys": tuple(args.mip_keys.split(","))}


def _train_tokenizer(args) -> int:
    from data_prep.tokenize import check_readable, expand_inputs
    from data_prep.tokenizer_training import train_tokenizer

    files = expand_inputs(args.input)
    check_readable(files)
    check_outputs([f"{args.model_prefix}.model"], "--model-prefix")
    summary = train_tokenizer(files, args.model_prefix, vocab_size=args.vocab_size,
                              sample_bytes=int(args.sample_mb * (1 << 20)), fmt=args.format,
                              character_coverage=args.character_coverage, threads=args.workers,
                              reader_options=_reader_options(args), verbose=args.verbose,
                              accept_damaged_files=args.accept_damaged_files)
    print(json.dumps(summary))
    return 0


def _tokenize(args) -> int:
    from data_prep.tokenize import TokenizeOptions, tokenize

    check_outputs([f"{args.output_prefix}{suffix}" for suffix in (".bin", ".idx", ".stats.json")], "--output-prefix")
    options = TokenizeOptions(
        inputs=args.input, output_prefix=args.output_prefix, fmt=args.format, json_key=args.json_key,
        mip_keys=tuple(args.mip_keys.split(",")), include_subsets=args.include_subsets,
        exclude_subsets=args.exclude_subsets, append_eod=args.append_eod, workers=args.workers,
        max_error_rate=args.max_error_rate, shard=args.shard, progress=not args.quiet,
        accept_damaged_files=args.accept_damaged_files,
    )
    stats = tokenize(options, _tokenizer(args))
    files = stats.pop("files")
    for path, report in files.items():
        for skip in report["skips"][:5]:
            log.warning("%s:%s skipped: %s", path, skip["location"], skip["reason"])
        if report["skipped"] > 5:
            log.warning("%s: %d records skipped in all (see %s.stats.json)", path, report["skipped"],
                        args.output_prefix)
    print(json.dumps(stats))
    return 0


def _merge(args) -> int:
    """Merge after checking that the inputs go together (kind, tokenizer, every shard present):
    the merged stats.json carries the kind and every damaged file the inputs accepted."""
    from data_prep.indexed_writer import list_shard_prefixes, merge_datasets, read_index_header
    from data_prep.metadata import check_mergeable, merged_stats, publish_stats, read_stats

    check_outputs([f"{args.output_prefix}{suffix}" for suffix in (".bin", ".idx", ".stats.json")], "--output-prefix")
    prefixes = [p for p in list_shard_prefixes(args.input) if os.path.abspath(p) != os.path.abspath(args.output_prefix)]
    for prefix in prefixes:
        if not (os.path.isfile(f"{prefix}.idx") and os.path.isfile(f"{prefix}.bin")):
            raise FileNotFoundError(f"{prefix}: no complete .bin/.idx pair to merge")
        read_index_header(prefix)  # a broken index fails before any other check
    records = {prefix: read_stats(prefix) for prefix in prefixes}
    for note in check_mergeable(prefixes, records):
        log.warning("note: %s", note)
    result = merge_datasets(prefixes, args.output_prefix)
    stats = merged_stats(args.output_prefix, prefixes, records, result,
                         str(read_index_header(args.output_prefix)[0]))
    publish_stats(args.output_prefix, stats)
    print(json.dumps({**result, "kind": stats["kind"], "damaged": len(stats["damaged"])}))
    return 0


def _inspect(args) -> int:
    from data_prep.inspect_samples import inspect

    print(inspect(args.data_prefix, _tokenizer(args), kind=args.kind, samples=args.samples, seed=args.seed,
                  seq_length=args.seq_length))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glm-prep", description=__doc__, formatter_class=HelpFormatter)
    add_verbose_option(parser, "debug logs, sentencepiece's own logs")
    add_flag_anywhere(parser, "--quiet", "no progress bar or per-file lines")
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub, tokenizer=True, reading=True):
        if tokenizer:
            sub.add_argument("--tokenizer-model", required=True,
                             help="sentencepiece .model file (e.g. from glm-prep train-tokenizer)")
            sub.add_argument("--special-token-ids", default="",
                             help="ids for a model without GLM's specials, e.g. mask=150000,gmask=150001,"
                                  "smask=150002,eod=150003,sop=150004,eop=150005,pad=0 (default: the model's "
                                  "own [MASK], [gMASK], ... pieces)")
        if reading:
            sub.add_argument("--input", nargs="+", required=True, help="input files or globs")
            sub.add_argument("--format", choices=("pile", "wudao", "mip", "jsonl"),
                             help="input format (default: guessed from each file name)")
            sub.add_argument("--json-key", default="text", help="text field of pile/jsonl records")
            sub.add_argument("--mip-keys", default="inputs,targets", help="text,target fields of mip records")
            sub.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                             help=f"encoding processes (train-tokenizer: threads) (default: one per CPU, "
                                  f"{os.cpu_count() or 1} here)")
            sub.add_argument("--accept-damaged-files", action="store_true",
                             help="keep what was read of a file that cannot be read to its end (truncated or "
                                  "corrupt, not a WuDao array, empty) instead of failing; stats.json records "
                                  "what was lost")

    train = commands.add_parser("train-tokenizer", help="train a bilingual sentencepiece model")
    common(train, tokenizer=False)
    train.add_argument("--model-prefix", required=True, help="writes PREFIX.model")
    train.add_argument("--vocab-size", type=int, default=32000,
                       help="pieces in the trained vocabulary, GLM's special tokens included")
    train.add_argument("--sample-mb", type=float, default=200.0, help="text sampled for training, MB")
    train.add_argument("--character-coverage", type=float, default=0.9995,
                       help="share of the sampled characters the vocabulary covers; rarer ones become byte pieces")
    train.set_defaults(handler=_train_tokenizer)

    tok = commands.add_parser("tokenize", help="write a megatron-core indexed dataset")
    common(tok)
    tok.add_argument("--output-prefix", required=True, help="writes PREFIX.bin, PREFIX.idx, PREFIX.stats.json")
    tok.add_argument("--append-eod", action=argparse.BooleanOptionalAction, default=True,
                     help="end every text document with eod (default: yes)")
    tok.add_argument("--include-subsets", nargs="+", help="pile: keep only these meta.pile_set_name values (default: every subset)")
    tok.add_argument("--exclude-subsets", nargs="+", help="pile: drop these meta.pile_set_name values (default: none)")
    tok.add_argument("--max-error-rate", type=float, default=0.05,
                     help="fail (publishing nothing) when more than this share of the input bytes is lost "
                          "to bad records or damaged files")
    tok.add_argument("--shard", type=_shard,
                     help="i/n: process every n-th input file from the i-th (default: every file)")
    tok.set_defaults(handler=_tokenize)

    merge = commands.add_parser("merge", help="concatenate indexed datasets (e.g. shards)")
    merge.add_argument("--input", nargs="+", required=True, help="prefixes or globs of prefixes")
    merge.add_argument("--output-prefix", required=True, help="writes PREFIX.bin, PREFIX.idx, PREFIX.stats.json")
    merge.set_defaults(handler=_merge)

    ins = commands.add_parser("inspect", help="print training samples as the model sees them")
    common(ins, reading=False)
    ins.add_argument("--data-prefix", required=True, help="the dataset PREFIX.bin/.idx (from tokenize or merge)")
    ins.add_argument("--kind", choices=("mask", "gmask", "mip"), default="mask",
                     help="sample kind: mask (short [MASK] spans) or gmask (one long [gMASK] span) of a text "
                          "dataset, mip (instruction examples) of a mip dataset")
    ins.add_argument("--samples", type=int, default=1, help="how many samples to print")
    ins.add_argument("--seq-length", type=int, default=2048, help="sample length in tokens")
    ins.add_argument("--seed", type=int, default=0, help="seed of the random choice of samples")
    ins.set_defaults(handler=_inspect)
    return parser


def _os_error_message(error: OSError, output: Optional[str] = None) -> str:
    """An OSError as the user can act on it: glm-prep writes each output under a temporary name
    (PREFIX.tmp<pid>.bin, PREFIX.stats.json.tmp<pid>, ...) and renames it at the end; the message
    names the output the user asked for (`output`: the subcommand's prefix), never that temporary
    name. Nothing is published when writing fails."""
    reason = error.strerror or str(error)
    paths = [p for p in (error.filename, error.filename2) if p is not None]
    staged = [published_name(str(p)) for p in paths if published_name(str(p)) != str(p)]
    if staged:
        return f"cannot write {staged[0]}: {reason}; nothing was published"
    if isinstance(error, FileExistsError) and paths:
        return f"cannot create the directory {paths[0]}: a file of that name is in the way"
    if paths:
        return f"{paths[0]}: {reason}"
    return f"{reason} (writing {output}; nothing was published)" if output else reason


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging("glm-prep", verbose=args.verbose, quiet=args.quiet)
    from data_prep.readers import UnreadableInput
    from data_prep.tokenize import PrepError
    from megatron_glm.data.tokenizer import TokenizerError

    from megatron_glm.cli.common import Failure, run_main

    def expected(error: BaseException) -> Optional[Failure]:
        if isinstance(error, PrepError):
            return Failure(str(error), error.exit_code)
        if isinstance(error, (TokenizerError, UnreadableInput, ValueError)):
            return Failure(str(error))
        if isinstance(error, OSError):
            output = getattr(args, "output_prefix", None) or getattr(args, "model_prefix", None)
            return Failure(_os_error_message(error, output))
        return None

    return run_main("glm-prep", args, args.handler, expected)


if __name__ == "__main__":
    sys.exit(main())
