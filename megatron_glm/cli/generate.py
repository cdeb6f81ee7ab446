"""glm-generate: [gMASK] continuation and [MASK]/[sMASK] blank infilling with GLM-130B's semantics.

    glm-generate CKPT --prompt "The city of [MASK] is large." [--tokenizer-model tok.model]
    glm-generate CKPT --input-ids "5 6 7 3 8"  --special-token-ids mask=3,gmask=4,...,eos=2
    glm-generate CKPT --input-file prompts.jsonl --json

CKPT is any checkpoint glm-ckpt reads: a run directory or its checkpoints/ (ours), GLM-130B's SAT
layout, a safetensors export. Prompts with no mask get [gMASK] appended (continuation); a prompt
that does not end with a mask gets eos; every [MASK] (else [sMASK], else [gMASK]) is filled left to
right (docs/generation.md). Text is tokenised piece by piece between the masks, as GLM-130B does;
the tokenizer is --tokenizer-model or the one the run was trained with (its config.yaml).
--input-file: one JSON object per line, {"prompt": TEXT} or {"input_ids": [ids]}; prompts are
generated in right-padded batches of --batch-size (beam search: one at a time).
--json prints one object per prompt: input_ids (as fed for the first blank, <sop> included),
blanks (each blank's ids, end token excluded), output_ids, and text when a tokenizer is known.
Under torchrun or srun with TP x PP ranks (--tp, --pp) the model is sharded; every rank runs the
same loop and rank 0 prints.
Exit codes: 0 done, 2 bad input (one line on stderr; --verbose adds the traceback).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from typing import List, Optional

from megatron_glm.cli.common import add_model_loading_options

MASK_PATTERN = re.compile(r"\[[sg]?MASK\]")
_MASK_NAMES = {"[MASK]": "mask", "[sMASK]": "smask", "[gMASK]": "gmask"}


class UsageError(ValueError):
    pass


def _parser() -> argparse.ArgumentParser:
    from megatron_glm.runtime.logs import HelpFormatter

    parser = argparse.ArgumentParser(prog="glm-generate", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("checkpoint", help="run directory, checkpoints/ or iter_N (dist), SAT or safetensors")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="text; [MASK] [sMASK] [gMASK] mark blanks (needs a tokenizer; this, --input-ids or --input-file "
                             "is required: no default)")
    source.add_argument("--input-ids", help='token ids separated by spaces or commas, e.g. "5 6 7 3 8" (no default)')
    source.add_argument("--input-file", help='JSONL: {"prompt": TEXT} or {"input_ids": [ids]} per line (no default)')
    parser.add_argument("--tokenizer-model", help="sentencepiece model (default: the run's, from its config.yaml)")
    parser.add_argument("--special-token-ids", default="",
                        help="NAME=ID,... for pad mask gmask smask eod sop eop eos (default: from the tokenizer "
                             "or the run config; GLM-130B's icetk ids for a SAT checkpoint of its vocabulary)")
    gen = parser.add_argument_group("generation")
    gen.add_argument("--max-new-tokens", type=int, default=128, help="per blank; also bounded by the sequence length")
    gen.add_argument("--strategy", choices=["greedy", "sample", "beam"], default="greedy",
                     help="greedy decoding, sampling, or beam search")
    gen.add_argument("--temperature", type=float, default=1.0, help="sample")
    gen.add_argument("--top-k", type=int, default=0, help="sample; 0 = off")
    gen.add_argument("--top-p", type=float, default=0.0, help="sample; 0 = off")
    gen.add_argument("--num-beams", type=int, default=4, help="beam")
    gen.add_argument("--length-penalty", type=float, default=1.0, help="beam: score / ((5 + length) / 6) ** this")
    gen.add_argument("--no-repeat-ngram-size", type=int, default=0, help="beam; 0 = off")
    gen.add_argument("--min-new-tokens", type=int, default=0, help="end tokens banned until this many were generated")
    gen.add_argument("--stochastic-beams", action="store_true",
                     help="beam: sample the candidates (GLM-130B's generate.py) instead of taking the top ones")
    gen.add_argument("--seed", type=int, default=1234, help="sample, --stochastic-beams")
    gen.add_argument("--banned-token-ids", default="", help="ids never generated, e.g. \"5 9\" (default: none)")
    gen.add_argument("--end-token-ids", default="",
                     help="ids that end a blank (default: the model's eop and eos, as GLM-130B)")
    model = parser.add_argument_group("model")
    model.add_argument("--max-sequence-length", type=int,
                       help="positions available (default: the run's model.seq_length, else 2048)")
    add_model_loading_options(model)
    parser.add_argument("--batch-size", type=int, default=8, help="--input-file prompts per batch")
    parser.add_argument("--json", action="store_true", help="one JSON object per prompt")
    parser.add_argument("--verbose", action="store_true", help="timings on stderr, tracebacks on errors")
    return parser


def _parse_ids(text: str, where: str) -> List[int]:
    parts = [p for p in re.split(r"[\s,]+", text.strip()) if p]
    if not parts or not all(p.lstrip("-").isdigit() for p in parts):
        raise UsageError(f"{where}: expected token ids separated by spaces or commas, got {text!r}")
    return [int(p) for p in parts]


def encode_prompt(text: str, tokenizer, special) -> List[int]:
    """GLM-130B's generate.py: the text between masks is tokenised piece by piece."""
    pieces = MASK_PATTERN.split(text)
    masks = MASK_PATTERN.findall(text)
    ids: List[int] = []
    for piece, mask in zip(pieces, masks):
        ids.extend(tokenizer.encode(piece) if piece else [])
        ids.append(special[_MASK_NAMES[mask]])
    if pieces[-1]:
        ids.extend(tokenizer.encode(pieces[-1]))
    return ids


def _read_prompts(args, model) -> List[List[int]]:
    def from_text(text, where):
        if model.tokenizer is None:
            raise UsageError(f"{where}: text prompts need a tokenizer: pass --tokenizer-model "
                             "(or give token ids)")
        if not text.strip():
            raise UsageError(f"{where}: empty prompt")
        return encode_prompt(text, model.tokenizer, model.special)

    if args.prompt is not None:
        prompts = [from_text(args.prompt, "--prompt")]
    elif args.input_ids is not None:
        prompts = [_parse_ids(args.input_ids, "--input-ids")]
    else:
        prompts = []
        try:
            lines = open(args.input_file, encoding="utf-8").read().splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise UsageError(f"{args.input_file}: cannot read ({error.__class__.__name__}: {error})") from None
        for number, line in enumerate(lines, 1):
            where = f"{args.input_file}:{number}"
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as error:
                raise UsageError(f"{where}: not JSON ({error})") from None
            if not isinstance(record, dict) or ("prompt" in record) == ("input_ids" in record):
                raise UsageError(f'{where}: expected an object with "prompt" (text) or "input_ids"')
            if "prompt" in record:
                if not isinstance(record["prompt"], str):
                    raise UsageError(f'{where}: "prompt" must be a string')
                prompts.append(from_text(record["prompt"], where))
            else:
                ids = record["input_ids"]
                if isinstance(ids, str):
                    ids = _parse_ids(ids, where)
                if not isinstance(ids, list) or not ids or not all(isinstance(i, int) for i in ids):
                    raise UsageError(f'{where}: "input_ids" must be a non-empty list of integers')
                prompts.append(ids)
        if not prompts:
            raise UsageError(f"{args.input_file}: no prompts")
    for index, ids in enumerate(prompts):
        bad = [i for i in ids if not 0 <= i < model.vocab_size]
        if bad:
            where = f"{args.input_file}: prompt {index + 1}" if args.input_file else "input"
            raise UsageError(f"{where}: token ids {bad[:5]} are outside the model's vocabulary [0, {model.vocab_size})")
    return prompts


def _init_distributed(tp: int, pp: int) -> int:
    """This rank (0 alone); under torchrun/srun megatron-core's TP x PP groups over every rank."""
    from megatron_glm.runtime.distributed import discover_world

    world = discover_world()
    if tp < 1 or pp < 1:
        raise UsageError(f"--tp and --pp must be at least 1, got {tp} and {pp}")
    if world.world_size != tp * pp:
        raise UsageError(f"--tp {tp} --pp {pp} needs {tp * pp} ranks, the job has {world.world_size} "
                         "(run TP x PP ranks under torchrun or srun)")
    if world.world_size == 1:
        return 0
    from megatron_glm.config.schema import ModelConfig, ParallelConfig, RunConfig
    from megatron_glm.runtime.distributed import initialize_distributed

    initialize_distributed(RunConfig(model=ModelConfig(), parallel=ParallelConfig(tensor=tp, pipeline=pp)), world)
    return world.rank


def _run(args) -> int:
    import torch

    from megatron_glm.inference import GenerationConfig, generate_batch, load_inference_model, parse_special_token_ids

    started = time.monotonic()
    config = GenerationConfig(
        strategy=args.strategy, max_new_tokens=args.max_new_tokens, min_new_tokens=args.min_new_tokens,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed, num_beams=args.num_beams,
        length_penalty=args.length_penalty, no_repeat_ngram_size=args.no_repeat_ngram_size,
        deterministic=not args.stochastic_beams,
        banned_token_ids=_parse_ids(args.banned_token_ids, "--banned-token-ids") if args.banned_token_ids else (),
        end_tokens=_parse_ids(args.end_token_ids, "--end-token-ids") if args.end_token_ids else None)
    config.check()
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    rank = _init_distributed(args.tp, args.pp)
    special = parse_special_token_ids(args.special_token_ids) if args.special_token_ids else None
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    model = load_inference_model(args.checkpoint, dtype=dtype, special_token_ids=special,
                                 tokenizer_model=args.tokenizer_model, max_sequence_length=args.max_sequence_length,
                                 num_attention_heads=args.num_attention_heads, rope_precision=args.rope_precision,
                                 quantize=args.quantize)
    try:
        if args.verbose and rank == 0:
            print(f"glm-generate: loaded {model.source} in {time.monotonic() - started:.1f}s "
                  f"(vocab {model.vocab_size}, {model.max_sequence_length} positions, specials {model.special})",
                  file=sys.stderr)
        prompts = _read_prompts(args, model)
        tokenizer = model.tokenizer
        for start in range(0, len(prompts), args.batch_size):
            batch = prompts[start:start + args.batch_size]
            began = time.monotonic()
            results = generate_batch(model, batch, config)
            if rank != 0:  # every rank ran the same loop; one prints
                continue
            if args.verbose:
                count = sum(len(b) for r in results for b in r.blanks)
                seconds = time.monotonic() - began
                print(f"glm-generate: {len(batch)} prompt(s), {count} tokens in {seconds:.2f}s", file=sys.stderr)
            for result in results:
                if args.json:
                    record = {"input_ids": result.input_ids, "blanks": result.blanks, "output_ids": result.output_ids}
                    if tokenizer is not None:
                        record["text"] = tokenizer.decode(result.output_ids)
                        record["blank_texts"] = [tokenizer.decode(b) for b in result.blanks]
                    print(json.dumps(record, ensure_ascii=False), flush=True)
                elif tokenizer is not None:
                    print(tokenizer.decode(result.output_ids), flush=True)
                else:
                    print(" ".join(map(str, result.output_ids)), flush=True)
    finally:
        model.close()
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    from megatron_glm.runtime.logs import configure_logging

    configure_logging("glm-generate", verbose=args.verbose)
    from checkpoints.errors import CheckpointError
    from megatron_glm.data.tokenizer import TokenizerError
    from megatron_glm.inference.model import InferenceError

    from megatron_glm.cli.common import Failure, run_main

    return run_main("glm-generate", args, _run, lambda error: Failure(f"error: {error}") if isinstance(
        error, (CheckpointError, InferenceError, TokenizerError, UsageError)) else None)


if __name__ == "__main__":
    sys.exit(main())
