"""glm-launch: run the trainer locally, plan a layout, submit and keep alive a run on Slurm.

    glm-launch run RUN.yaml --nproc N --run-dir DIR [dotted.key=value ...]
        N ranks of glm-train on this machine (no Slurm, no torchrun). Exit codes pass through:
        0 done, 75 stopped by a signal (checkpoint saved: run the same command again to resume),
        2 bad configuration.

    glm-launch plan --model MODEL_OR_RUN_YAML --cluster NAME [--tp --pp --dp --vpp --mbs --gbs
                    --recompute --precision --grad-dtype] [--json]
        per-GPU memory by component for every pipeline stage and the predicted step time, tokens/s,
        TFLOP/s per GPU and MFU. Without --tp/--pp (and a bare model preset): search the layouts of
        the cluster and rank those that fit. Exit 0 fits, 1 does not fit, 2 bad input.

    glm-launch submit RUN.yaml --cluster NAME --run-dir DIR [--time T] [--signal-seconds S]
                      [--set cluster.key=value] [--dry-run] [dotted.key=value ...]
        validate (config at the cluster's world size, data readable, run dir writable, the plan
        fits), render RUN_DIR/slurm/job.sbatch and `sbatch --parsable` it; prints the job id.
        --dry-run prints the script and writes nothing. Exit 0 submitted (or printed), 2 refused
        (nothing written), otherwise sbatch's exit code.

    glm-launch status RUN_DIR [--json]
        job state, last step and its time, last checkpoint, restarts so far, and the nodes the job
        hooks excluded after a hang, a failed pre-flight check or a crash (with why). Exit 0, or 2
        when RUN_DIR is no run directory.

    glm-launch prep --cluster NAME --input FILES... --output-prefix P --tokenizer-model M
                    [--shards N] [--dry-run] [-- glm-prep tokenize arguments]
        a Slurm job array of `glm-prep tokenize --shard i/N` plus a merge job that runs after
        every shard succeeded; prints the two job ids. Exit 0 submitted, 2 refused, otherwise
        sbatch's exit code.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import List, Optional, get_args

from megatron_glm.config.loader import ConfigError
from megatron_glm.config.schema import Precision, RecomputeGranularity
from megatron_glm.runtime.logs import add_verbose_option, configure_logging


def _run(args: argparse.Namespace) -> int:
    from launch.local import LocalRunConfig, run_local

    return run_local(LocalRunConfig(config=args.config, run_dir=args.run_dir, nproc=args.nproc,
                                    overrides=list(args.overrides), master_port=args.master_port,
                                    verbose=args.verbose))


GLM130B_RECIPE = ("train.global_batch_size=4224", "train.micro_batch_size=1", "recompute.granularity=full",
                  "precision=fp16", "train.grad_reduce_in_fp32=false")
"""What `plan` assumes for a bare model preset: GLM-130B's training recipe (docs/glm130b.md §3) as
run-config settings, so a run config with the same settings is sized (and submitted) the same."""


def _layout_flag_overrides(args: argparse.Namespace, run) -> List[str]:
    """plan's layout flags (--tp, --pp, ...) as the run-config settings they stand for. --pp
    brings lighter first/last stages when the layers do not divide evenly (GLM-130B's 8/9x6/8)."""
    from megatron_glm.config.validate import uneven_pipeline_split

    settings = []
    if args.tp:
        settings.append(f"parallel.tensor={args.tp}")
    if args.pp and (args.pp != run.parallel.pipeline or run.parallel.first_stage_layers is None):
        settings.append(f"parallel.pipeline={args.pp}")
        split = uneven_pipeline_split(run.model.num_layers, args.pp) or (None, None)
        settings += [f"parallel.first_stage_layers={'null' if split[0] is None else split[0]}",
                     f"parallel.last_stage_layers={'null' if split[1] is None else split[1]}"]
    for flag, key in (("dp", "parallel.data"), ("vpp", "parallel.virtual_pipeline"), ("mbs", "train.micro_batch_size"),
                      ("gbs", "train.global_batch_size"), ("recompute", "recompute.granularity"),
                      ("precision", "precision")):
        if getattr(args, flag):
            settings.append(f"{key}={getattr(args, flag)}")
    if args.grad_dtype:
        settings.append(f"train.grad_reduce_in_fp32={'true' if args.grad_dtype == 'fp32' else 'false'}")
    return settings


def _plan(args: argparse.Namespace) -> int:
    """Sizes the run config that `submit` would train (the same layout, the same checks)."""
    from launch.clusters import load_cluster
    from launch.fixes import fixes
    from launch.planner import (format_plan, layout_problems, make_plan, run_layout, search,
                                valid_choices)
    from megatron_glm.config.loader import load_run_config, model_preset_names
    from megatron_glm.config.validate import config_problems

    if args.inference:  # launch/inference_plan.py
        from launch.inference_plan import run as plan_inference

        return plan_inference(args)
    if not args.cluster:
        raise ConfigError(["plan needs --cluster (all but plan --inference)"])
    bare_model = args.model in model_preset_names()
    settings = (list(GLM130B_RECIPE) if bare_model else []) + list(args.overrides)
    cluster = load_cluster(args.cluster, args.set)
    run = load_run_config(args.model, settings)
    settings += _layout_flag_overrides(args, run)
    run = load_run_config(args.model, settings)
    if args.grad_dtype and args.grad_dtype != "fp32" and args.grad_dtype != run.precision:
        raise ConfigError([f"--grad-dtype {args.grad_dtype}: half-precision gradient buffers are in the "
                           f"training precision ({run.precision}); use --grad-dtype {run.precision} or fp32"])
    if bare_model and not (args.tp and args.pp):
        base = dataclasses.replace(run_layout(run, cluster), tp=args.tp or 0, pp=args.pp or 0, dp=0,
                                   mbs=args.mbs or 0, recompute=args.recompute or "")
        plans, tried = search(run, cluster, base)
        if args.json:
            print(json.dumps({"searched": tried, "fit": len(plans), "fitting": [p.to_json() for p in plans[:args.top]]}))
            return 0 if plans else 1
        shown = f" (best {args.top} shown)" if len(plans) > args.top else ""
        print(f"{len(plans)} of {tried} layouts of {cluster.world_size} ranks fit{shown}, best first:")
        for rank, plan in enumerate(plans[:args.top], 1):
            lay, t = plan.layout, plan.throughput
            print(f"  {rank:>2}. TP {lay.tp} x PP {lay.pp} x DP {lay.dp}, mbs {lay.mbs}, recompute {lay.recompute}: "
                  f"{plan.peak.total_gb:.1f} GB, {t.step_time_s:.1f} s/step, {t.tokens_per_s:,.0f} tokens/s, "
                  f"{t.tflops_per_gpu_hardware:.0f} TFLOP/s hw, MFU {100 * t.mfu:.1f}%")
        return 0 if plans else 1
    layout = run_layout(run, cluster)
    invalid = config_problems(run, world_size=cluster.world_size) or layout_problems(run, layout, cluster)
    if invalid:
        print(f"glm-launch plan: invalid layout for {cluster.name} ({cluster.world_size} GPUs):\n"
              + "\n".join(f"- {p}" for p in invalid) + "\nvalid choices:\n"
              + "\n".join(f"  {line}" for line in valid_choices(run, layout, cluster)), file=sys.stderr)
        return 2
    plan = make_plan(run, layout, cluster)
    found = [] if plan.fits else fixes(run, layout, cluster)
    if args.json:
        print(json.dumps({**plan.to_json(), "settings": settings,
                          "fixes": [{"overrides": f.overrides, "peak_gb": round(f.plan.peak.total_gb, 3),
                                     "tokens_per_s": f.plan.throughput.tokens_per_s} for f in found]}))
        return 0 if plan.fits else 1
    print(format_plan(plan, run, cluster))
    if bare_model:
        print(f"\nwhere no flag says otherwise, GLM-130B's recipe: {' '.join(GLM130B_RECIPE)}")
    if not plan.fits:
        print("\nto fit, " + ("change one of:\n" + "\n".join(f"  {f.describe()}" for f in found)
                              if found else "no change of one or two settings is enough; leave out --tp/--pp to search"))
    return 0 if plan.fits else 1


def _submit(args: argparse.Namespace) -> int:
    from launch.submit import SubmitRequest, submit

    return submit(SubmitRequest(config=args.config, cluster=args.cluster, run_dir=args.run_dir,
                                overrides=list(args.overrides), cluster_overrides=args.set, time_limit=args.time,
                                signal_seconds=args.signal_seconds, name=args.job_name, dry_run=args.dry_run))


def _status(args: argparse.Namespace) -> int:
    from pathlib import Path

    from launch.status import format_status, run_status

    from megatron_glm.rundir import CONFIG_FILE, EVENTS_FILE, METRICS_FILE, SLURM_DIR

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        print(f"glm-launch status: {run_dir}: no such run directory", file=sys.stderr)
        return 2
    if not any((run_dir / name).exists() for name in (CONFIG_FILE, EVENTS_FILE, METRICS_FILE, SLURM_DIR)):
        print(f"glm-launch status: {run_dir}: not a run directory (no {CONFIG_FILE}, {EVENTS_FILE}, "
              f"{METRICS_FILE} or {SLURM_DIR}/); give the --run-dir of a run", file=sys.stderr)
        return 2
    status = run_status(run_dir)
    print(json.dumps(status) if args.json else format_status(status))
    return 0


def _prep(args: argparse.Namespace) -> int:
    from launch.prep import PrepRequest, submit_prep

    return submit_prep(PrepRequest(cluster=args.cluster, inputs=args.input, output_prefix=args.output_prefix,
                                   tokenizer_model=args.tokenizer_model, shards=args.shards, log_dir=args.log_dir,
                                   prep_args=args.overrides, cluster_overrides=args.set, time_limit=args.time,
                                   dry_run=args.dry_run))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glm-launch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_verbose_option(parser, "debug logs from the launcher and the ranks")  # before or after the subcommand
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="train on this machine with N local ranks (no Slurm)")
    run.add_argument("config", help="run preset (tiny-cpu) or run YAML")
    run.add_argument("--nproc", type=int, required=True, help="number of ranks (= world size)")
    run.add_argument("--run-dir", required=True, help="the run directory (resumes from its latest checkpoint)")
    run.add_argument("--master-port", type=int, default=None, help="rendezvous port (default: a free one)")
    run.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. train.steps=20")
    run.set_defaults(handler=_run)

    plan = commands.add_parser("plan", help="memory and speed of a layout; or the layouts that fit")
    plan.add_argument("--model", required=True, help="model preset (glm-130b) or run YAML")
    plan.add_argument("--cluster", help="cluster profile (dgx-a100-96, local-slurm, local) or YAML (no default: "
                                        "required but with --inference)")
    plan.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a cluster profile field, e.g. --set device.memory_gb=80")
    for name, help_text in (
            ("tp", "tensor parallel (default: the run's; with a bare model preset and no --pp: searched)"),
            ("pp", "pipeline parallel, lighter first/last stages where the layers do not divide (default: the "
                   "run's; with a bare model preset and no --tp: searched)"),
            ("dp", "data parallel (default: the GPUs TP x PP leaves)"),
            ("vpp", "virtual pipeline chunks per rank (default: the run's, else 1)"),
            ("mbs", "micro-batch size (default: the run's; GLM-130B recipe: 1; searched when searching)"),
            ("gbs", "global batch size (default: the run's; GLM-130B recipe: 4224)")):
        plan.add_argument(f"--{name}", type=int, default=None, help=help_text)
    plan.add_argument("--recompute", choices=get_args(RecomputeGranularity), default=None,
                      help="activation recompute (default: the run's; GLM-130B recipe: full)")
    plan.add_argument("--precision", choices=get_args(Precision), default=None,
                      help="training precision (default: the run's; GLM-130B recipe: fp16)")
    plan.add_argument("--grad-dtype", choices=("fp32", "fp16", "bf16"), default=None,
                      help="gradient buffers (default: the run's; GLM-130B recipe: the precision's)")
    plan.add_argument("--top", type=int, default=10, help="layouts to list when searching")
    plan.add_argument("--json", action="store_true", help="one JSON object")
    plan.add_argument("--inference", action="store_true", help="inference memory per GPU instead of a training "
                      "layout: weights at the TP, KV cache, activations, headroom (launch/inference_plan.py)")
    plan.add_argument("--gpus", help="--inference: COUNTxCARD, e.g. 4xrtx3090, 8xrtx2080ti, 8xa100-40gb, 1xh200 "
                                     "(no default: required with --inference)")
    plan.add_argument("--quantize", choices=("int8", "int4", "none"), default="none",
                      help="--inference: weight-only quantization of the linear layers")
    plan.add_argument("--batch", type=int, default=1, help="--inference: sequences decoded together")
    plan.add_argument("--seq", type=int, default=2048, help="--inference: tokens per sequence (context + generated)")
    plan.add_argument("overrides", nargs="*", help="dotted.key=value overrides of the model/run config")
    plan.set_defaults(handler=_plan)

    sub = commands.add_parser("submit", help="validate, render the sbatch script, submit it")
    sub.add_argument("config", help="run preset or run YAML")
    sub.add_argument("--cluster", required=True, help="cluster profile (dgx-a100-96, local-slurm) or YAML")
    sub.add_argument("--run-dir", required=True, help="run directory (shared filesystem)")
    sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a cluster profile field, e.g. --set slurm.partition=batch")
    sub.add_argument("--time", default=None, help="time limit per allocation (Slurm format, e.g. 04:00:00; "
                                                    "default: the cluster profile's slurm.time_limit)")
    sub.add_argument("--signal-seconds", type=int, default=None,
                     help="USR1 this many seconds before the time limit, to checkpoint and requeue (default: the "
                          "cluster profile's slurm.signal_seconds)")
    sub.add_argument("--job-name", default=None, help="Slurm job name (default: glm-<run dir name>)")
    sub.add_argument("--dry-run", action="store_true", help="print the sbatch script; write and submit nothing")
    sub.add_argument("overrides", nargs="*", help="dotted.key=value overrides of the run config")
    sub.set_defaults(handler=_submit)

    prep = commands.add_parser("prep", help="glm-prep tokenize as a Slurm job array plus a merge job")
    prep.add_argument("--cluster", required=True, help="cluster profile (dgx-a100-96, local-slurm) or YAML")
    prep.add_argument("--input", nargs="+", required=True, help="input files or globs (one shard per file by default)")
    prep.add_argument("--output-prefix", required=True, help="the merged dataset PREFIX.bin/.idx")
    prep.add_argument("--tokenizer-model", required=True, help="the sentencepiece .model every shard tokenises with")
    prep.add_argument("--shards", type=int, default=None, help="array size (default: one per input file)")
    prep.add_argument("--log-dir", default=None, help="scripts and job logs (default PREFIX.slurm/)")
    prep.add_argument("--time", default="04:00:00", help="time limit of each task")
    prep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a cluster profile field, e.g. --set slurm.partition=cpu")
    prep.add_argument("--dry-run", action="store_true", help="print the two scripts; write and submit nothing")
    prep.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    prep.set_defaults(handler=_prep)

    status = commands.add_parser("status", help="job state, last step, last checkpoint, restarts, excluded nodes")
    status.add_argument("run_dir", help="the --run-dir of a run (local or submitted)")
    status.add_argument("--json", action="store_true", help="one JSON object")
    status.set_defaults(handler=_status)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    # Overrides may come before or after the options (argparse stops a `nargs="*"` positional at
    # the first option), so the leftovers that look like dotted.key=value are overrides too.
    argv = sys.argv[1:] if argv is None else argv
    passthrough = []
    if argv[:1] == ["prep"] and "--" in argv:  # everything after -- goes to glm-prep tokenize
        argv, passthrough = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    args, extra = parser.parse_known_args(argv)
    if args.command == "prep":
        args.overrides = passthrough
    stray = [item for item in extra if item.startswith("-") or "=" not in item or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    configure_logging("glm-launch", verbose=args.verbose)
    from megatron_glm.cli.common import Failure, run_main

    return run_main(f"glm-launch {args.command}", args, args.handler, lambda error: Failure(
        f"invalid configuration:\n{error}") if isinstance(error, ConfigError) else None)


if __name__ == "__main__":
    sys.exit(main())
