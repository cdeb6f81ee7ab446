"""glm-eval: GLM-130B's zero-shot evaluation (multiple choice, generation, language modelling) on
any checkpoint glm-ckpt reads (docs/evaluation.md).

    glm-eval run CKPT --tasks TASK.yaml|DIR [--tasks ...] [--data-path P] [--output results.json]
                 [--predictions preds.jsonl] [--tokenizer-model M] [--special-token-ids mask=..,eos=..] [--prefer-text]
                 [--tp N] [--pp N] [--dtype fp32|fp16|bf16] [--num-attention-heads H] [--rope-precision fp32|fp16]
                 [--quiet] [--verbose]

Under torchrun / srun / glm-launch (WORLD_SIZE > 1) the ranks form TP x PP model groups (--tp, --pp)
and split the examples over the data-parallel ranks; rank 0 prints and writes. docs/evaluation.md
describes the task files, the scoring and the outputs.
Exit codes: 0 done; 2 bad input or usage (task file, data line, checkpoint, tokenizer: one line on
stderr, --verbose adds the traceback).
"""

from __future__ import annotations

import argparse
import sys
from typing import Dict, List, Optional

from megatron_glm.cli.common import add_model_loading_options
from megatron_glm.evaluation.errors import EvalError


def _parser() -> argparse.ArgumentParser:
    from megatron_glm.runtime.logs import HelpFormatter, add_verbose_option

    parser = argparse.ArgumentParser(prog="glm-eval", description=__doc__, formatter_class=HelpFormatter)
    add_verbose_option(parser, "tracebacks on errors, third-party warnings")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="evaluate a checkpoint on task files", description=__doc__)
    run.add_argument("checkpoint", help="a run directory, its checkpoints/ (or one iter_N), SAT or safetensors")
    run.add_argument("--tasks", action="append", required=True,
                     help="a task YAML or a folder searched recursively for *.yaml (repeatable)")
    run.add_argument("--data-path", help="folder the tasks' relative `path`s are taken from (default: each YAML's "
                                         "folder)")
    run.add_argument("--output", help="write every number and the exact settings as JSON here (default: table "
                                      "on stdout only)")
    run.add_argument("--predictions", help="write one JSON line per example (file order) here (default: none)")
    run.add_argument("--tokenizer-model", help="sentencepiece model for *_pretokenized text and decoding "
                                               "(default: the one the checkpoint's run config records, if any)")
    run.add_argument("--prefer-text", action="store_true",
                     help="tokenize *_pretokenized text even where ids are present (data tokenized for another model)")
    run.add_argument("--special-token-ids", default="",
                     help="e.g. mask=150000,gmask=150001,sop=150004,eop=150005,eos=20002 (default: the tokenizer's, "
                          "the run config's, or icetk's for a SAT checkpoint of GLM-130B's vocabulary)")
    add_model_loading_options(run)
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _init_distributed(tp: int, pp: int):
    """(rank, dp_rank, dp_world, dp_group) after creating the groups of a multi-rank run."""
    import datetime

    import torch
    import torch.distributed as dist

    from megatron_glm.runtime.distributed import collective_timeout_s, discover_world

    world = discover_world()
    if world.world_size == 1:
        if tp * pp != 1:
            raise EvalError(f"--tp {tp} --pp {pp} needs {tp * pp} ranks (run under torchrun or glm-launch)")
        return 0, 0, 1, None
    if world.world_size % (tp * pp):
        raise EvalError(f"{world.world_size} ranks do not split into TP{tp} x PP{pp} groups")
    import warnings

    with warnings.catch_warnings():  # megatron-core warns at import that apex/TE are absent
        warnings.simplefilter("ignore")
        from megatron.core import parallel_state

    from megatron_glm.runtime.cpu_backend import install_cpu_backend

    on_gpu = torch.cuda.is_available()
    if on_gpu:
        torch.cuda.set_device(world.local_rank % torch.cuda.device_count())
    else:
        install_cpu_backend()
    timeout = collective_timeout_s()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if on_gpu else "gloo",
                                init_method=f"tcp://{world.master_addr}:{world.master_port}",
                                rank=world.rank, world_size=world.world_size,
                                timeout=datetime.timedelta(seconds=timeout))
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                                             distributed_timeout_minutes=max(1, round(timeout / 60)))
    # Results are gathered as pickled objects over megatron-core's gloo copy of the DP group (CPU
    # memory, also in NCCL jobs).
    group = parallel_state.get_data_parallel_group_gloo()
    return world.rank, parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size(), group


def _versions() -> Dict[str, Optional[str]]:
    from importlib import metadata

    out: Dict[str, Optional[str]] = {}
    for name in ("megatron-glm", "megatron-core", "torch"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _run(args) -> int:
    from megatron_glm.evaluation.runner import check_writable, evaluate, format_table, load_tasks, write_results
    from megatron_glm.evaluation.tasks import gather_over
    from megatron_glm.evaluation.vocab import make_vocab, parse_special_ids

    from megatron_glm.evaluation.data import task_files

    configs = load_tasks(args.tasks)  # task files and data folders are checked before the model loads
    for cfg in configs:
        task_files(cfg, args.data_path)
    explicit = parse_special_ids(args.special_token_ids)
    rank, dp_rank, dp_world, dp_group = _init_distributed(args.tp, args.pp)
    if rank == 0:
        check_writable(args.output, "results")
        check_writable(args.predictions, "predictions")

    import torch

    from checkpoints.errors import CheckpointError
    from megatron_glm.inference.model import InferenceError, load_inference_model
    from megatron_glm.evaluation.samples import padded_length

    longest = max(padded_length([c.max_seq_length]) + (c.max_gen_length if c.type == "gen" else 0) for c in configs)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    try:
        model = load_inference_model(args.checkpoint, dtype=dtype, special_token_ids=explicit or None,
                                     tokenizer_model=args.tokenizer_model, max_sequence_length=longest,
                                     num_attention_heads=args.num_attention_heads,
                                     rope_precision=args.rope_precision, quantize=args.quantize)
    except (InferenceError, CheckpointError) as error:
        message = str(error)
        raise EvalError(message if str(args.checkpoint) in message else f"{args.checkpoint}: {message}") from None
    try:
        if model.tokenizer is not None:
            vocab = make_vocab(model.tokenizer.model_file, {**model.special, **explicit},
                               padded_vocab_size=model.vocab_size)
        else:
            vocab = make_vocab(None, {**model.special, **explicit}, padded_vocab_size=model.vocab_size)
        vocab.prefer_text = args.prefer_text
        settings = {
            "checkpoint": str(args.checkpoint), "tasks": [c.source for c in configs], "data_path": args.data_path,
            "tokenizer_model": vocab.source if vocab.has_tokenizer else None, "special_token_ids": vocab.special,
            "prefer_text": args.prefer_text, "dtype": args.dtype, "tp": args.tp, "pp": args.pp,
            "data_parallel": dp_world, "padded_vocab_size": model.vocab_size,
            "rope_precision": getattr(model, "rope_precision", None),
            "quantization": getattr(model, "quantization", None),
            "model": {k: getattr(model.shape, k) for k in ("num_layers", "hidden_size", "num_attention_heads",
                                                            "ffn_hidden_size", "padded_vocab_size")},
            "versions": _versions(),
        }
        results = evaluate(configs, model.logits, vocab, data_path=args.data_path, vocab_size=model.vocab_size,
                           rank=dp_rank, world=dp_world, gather=gather_over(dp_group) if dp_world > 1 else None,
                           predictions_path=args.predictions if rank == 0 else None,
                           progress=not args.quiet and rank == 0, settings=settings, model=model)
    finally:
        model.close()
    if rank == 0:
        if args.output:
            write_results(results, args.output)
        print(format_table(results))
        sys.stdout.flush()
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    from megatron_glm.runtime.logs import configure_logging

    configure_logging("glm-eval", verbose=args.verbose)
    from megatron_glm.cli.common import Failure, run_main

    return run_main("glm-eval", args, _run, lambda error: Failure(
        f"error: {error}") if isinstance(error, EvalError) else None)


if __name__ == "__main__":
    sys.exit(main())
