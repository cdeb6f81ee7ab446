"""One validation pass over a RunConfig, run before any process group exists.

Every problem is collected (not just the first) and each message says what to change, e.g.
"num_attention_heads=96 is not divisible by parallel.tensor=5; choose 1, 2, 3, 4, 6, 8, ...".
"""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import List, Optional, Tuple

from megatron_glm.config.loader import ConfigError
from megatron_glm.config.schema import RunConfig
from megatron_glm.rundir import read_latest



def _divisors(n: int, limit: int = 12) -> str:
    found = [d for d in range(1, n + 1) if n % d == 0]
    shown = ", ".join(str(d) for d in found[:limit])
    return shown + (", ..." if len(found) > limit else "")


def uneven_pipeline_split(num_layers: int, pp: int) -> Optional[Tuple[Optional[int], Optional[int]]]:
    """(first, last) stage layers for `pp` stages: (None, None) when the layers divide evenly; else
    equal lighter first/last stages (they also hold the embedding and the LM head) with the middle
    stages even and as close to balanced as possible (GLM-130B: 8 + 6 x 9 + 8 = 70 over 8 stages);
    None when no such split exists."""
    if pp == 1 or num_layers % pp == 0:
        return None, None
    if pp == 2:
        return None
    best = None
    for ends in range(1, num_layers // pp + 1):
        rest = num_layers - 2 * ends
        if rest > 0 and rest % (pp - 2) == 0 and rest // (pp - 2) > ends:
            gap = rest // (pp - 2) - ends
            if best is None or gap < best[0]:
                best = (gap, ends)
    return (best[1], best[1]) if best else None


def _choice_problems(node, prefix: str = "") -> List[str]:
    """Fields typed Literal[...] in schema.py hold one of their choices (the loader checks what it
    reads; this also covers configs built in code)."""
    problems: List[str] = []
    hints = typing.get_type_hints(type(node))
    for field_ in dataclasses.fields(node):
        value, hint, dotted = getattr(node, field_.name), hints[field_.name], prefix + field_.name
        if typing.get_origin(hint) is typing.Literal and value not in typing.get_args(hint):
            problems.append(f"{dotted}={value!r}; choose one of {', '.join(typing.get_args(hint))}")
        elif dataclasses.is_dataclass(value):
            problems.extend(_choice_problems(value, dotted + "."))
    return problems


def _check_divisible(problems: List[str], what: str, value: int, by_name: str, by: int) -> None:
    if by > 0 and value % by != 0:
        problems.append(
            f"{what}={value} is not divisible by {by_name}={by}; choose {by_name} from {_divisors(value)}"
        )


def _pipeline_problems(config: RunConfig) -> List[str]:
    model, par = config.model, config.parallel
    problems: List[str] = []
    pp, vpp = par.pipeline, par.virtual_pipeline
    if vpp is not None:
        if vpp < 1:
            problems.append(f"parallel.virtual_pipeline={vpp} must be >= 1 or null")
        elif pp < 2 and vpp > 1:
            problems.append("parallel.virtual_pipeline needs parallel.pipeline >= 2; set it to null")
    first, last = par.first_stage_layers, par.last_stage_layers
    if (first is not None or last is not None) and vpp not in (None, 1):
        problems.append(
            "uneven first/last pipeline stages cannot be combined with parallel.virtual_pipeline; "
            "drop one of them"
        )
    if first is not None or last is not None:
        middle_stages = pp - (first is not None) - (last is not None)
        middle_layers = model.num_layers - (first or 0) - (last or 0)
        if pp < 2:
            problems.append("parallel.first_stage_layers/last_stage_layers need parallel.pipeline >= 2")
        elif middle_layers < 0:
            problems.append(
                f"first_stage_layers + last_stage_layers exceed model.num_layers={model.num_layers}"
            )
        elif middle_stages > 0 and middle_layers % middle_stages != 0:
            problems.append(
                f"after first/last stages, {middle_layers} layers do not divide over the "
                f"{middle_stages} middle stages; adjust parallel.first_stage_layers/last_stage_layers"
            )
        elif middle_stages == 0 and middle_layers != 0:
            problems.append(
                f"with pipeline={pp}, first_stage_layers + last_stage_layers must equal "
                f"model.num_layers={model.num_layers}"
            )
    else:
        chunks = pp * (vpp or 1)
        what = "parallel.pipeline x parallel.virtual_pipeline" if vpp else "parallel.pipeline"
        if model.num_layers % chunks != 0:
            split = uneven_pipeline_split(model.num_layers, pp) if not vpp else None
            uneven = (f"set parallel.first_stage_layers={split[0]} parallel.last_stage_layers={split[1]} "
                      f"(lighter first and last stages)" if split and split[0] else
                      "set parallel.first_stage_layers/last_stage_layers for an uneven split")
            problems.append(
                f"model.num_layers={model.num_layers} is not divisible by {what}={chunks}; "
                f"choose a pipeline size from {_divisors(model.num_layers)} or {uneven}"
            )
    return problems


def config_problems(config: RunConfig, world_size: Optional[int] = None, training: bool = False) -> List[str]:
    """All problems of a run config (empty list: valid). world_size checks the layout divides it;
    training: the config is about to train (glm-train, glm-launch run/submit), so it needs data."""
    model, par = config.model, config.parallel
    problems: List[str] = []
    for name in ("num_layers", "hidden_size", "num_attention_heads", "vocab_size", "seq_length"):
        if getattr(model, name) < 1:
            problems.append(f"model.{name}={getattr(model, name)} must be >= 1")
    for name in ("tensor", "pipeline"):
        if getattr(par, name) < 1:
            problems.append(f"parallel.{name}={getattr(par, name)} must be >= 1")
    if problems:
        return problems

    _check_divisible(problems, "model.hidden_size", model.hidden_size, "model.num_attention_heads",
                     model.num_attention_heads)
    if model.hidden_size % model.num_attention_heads == 0 and model.head_dim % 2 != 0:
        problems.append(f"head dim {model.head_dim} must be even for rotary embeddings")
    _check_divisible(problems, "model.num_attention_heads", model.num_attention_heads,
                     "parallel.tensor", par.tensor)
    _check_divisible(problems, "model.ffn_hidden_size", model.resolved_ffn_hidden_size,
                     "parallel.tensor", par.tensor)
    _check_divisible(problems, "padded vocab size", model.resolved_padded_vocab_size,
                     "parallel.tensor", par.tensor)
    if model.resolved_padded_vocab_size < model.vocab_size:
        problems.append(
            f"model.padded_vocab_size={model.padded_vocab_size} is smaller than "
            f"model.vocab_size={model.vocab_size}"
        )
    for name in ("hidden_dropout", "attention_dropout"):
        value = getattr(model, name)
        if not 0.0 <= value < 1.0:
            problems.append(f"model.{name}={value} must be in [0, 1)")
    problems.extend(_embedding_grad_shrink_problems(config))
    problems.extend(_pipeline_problems(config))
    problems.extend(_data_problems(config))
    if training:
        problems.extend(_training_data_problems(config))
        problems.extend(_init_from_problems(config.train.init_from))
    problems.extend(_train_problems(config, world_size))
    problems.extend(_eval_task_problems(config))
    problems.extend(_choice_problems(config))
    if world_size is not None:
        model_parallel = par.tensor * par.pipeline
        if world_size % model_parallel != 0:
            problems.append(
                f"world size {world_size} is not divisible by parallel.tensor x parallel.pipeline "
                f"= {model_parallel}; use a multiple of {model_parallel} processes"
            )
        elif par.data is not None and par.data * model_parallel != world_size:
            problems.append(
                f"parallel.data={par.data} x tensor={par.tensor} x pipeline={par.pipeline} = "
                f"{par.data * model_parallel}, but the world size is {world_size}; "
                f"set parallel.data={world_size // model_parallel} or null"
            )
    return problems


def _data_problems(config: RunConfig) -> List[str]:
    """Data paths must exist before any process starts (checked on the launching machine)."""
    data = config.data
    problems: List[str] = []
    if not data.sources and not data.instruction_prefix:
        return problems
    if not data.tokenizer_model:
        problems.append("data.tokenizer_model is empty; point it at the .model glm-prep trained or used")
    elif not os.path.isfile(data.tokenizer_model):
        problems.append(f"data.tokenizer_model={data.tokenizer_model}: no such file")
    named = [(f"data.sources[{i}].prefix", s.prefix) for i, s in enumerate(data.sources)]
    if data.instruction_prefix:
        named.append(("data.instruction_prefix", data.instruction_prefix))
    for field_name, prefix in named:
        missing = [ext for ext in (".bin", ".idx") if not os.path.isfile(prefix + ext)]
        if missing:
            problems.append(f"{field_name}={prefix}: missing {' and '.join(prefix + e for e in missing)}; "
                            "write it with glm-prep tokenize --output-prefix")
    if any(s.weight <= 0 for s in data.sources):
        problems.append("data.sources weights must be > 0")
    if not 0.0 <= data.instruction_ratio < 1.0:
        problems.append(f"data.instruction_ratio={data.instruction_ratio} must be in [0, 1)")
    return problems


def _training_data_problems(config: RunConfig) -> List[str]:
    """Training needs data, and synthetic data only when asked for by name."""
    data = config.data
    has_corpus = bool(data.sources or data.instruction_prefix)
    if data.synthetic and has_corpus:
        return ["data.synthetic=true together with data.sources/instruction_prefix: choose one "
                "(remove the sources to benchmark on synthetic data, or set data.synthetic=false)"]
    if not data.synthetic and not has_corpus:
        return ["no training data: the config has no data.sources or data.instruction_prefix. Point them "
                "at glm-prep datasets (see the tiny-cpu run preset), or set data.synthetic=true to train on "
                "synthetic sequences (benchmarks, tests)"]
    return []


def _init_from_problems(init_from: str) -> List[str]:
    """train.init_from must be a dist checkpoint (what the trainer loads, resharded); other formats
    are named with the conversion that makes one."""
    if not init_from:
        return []
    path = Path(init_from)
    if not path.exists():
        return [f"train.init_from={init_from}: no such directory"]
    name, problem = read_latest(path)
    target = path / name if name and not problem else path
    if (target / ".metadata").is_file() and (target / "metadata.json").is_file():
        return []
    if list(path.glob("*.safetensors")):
        kind = "a safetensors export"
    elif (path / "latest").is_file() and not name:
        kind = "a SAT (GLM-130B release) checkpoint"
    else:
        kind = problem or "not a dist checkpoint (no .metadata and metadata.json)"
    return [f"train.init_from={init_from}: {kind}; the trainer starts from dist checkpoints: convert it with "
            f"`glm-ckpt convert {init_from} DIR --to dist --tp T --pp P` and set train.init_from=DIR"]


def _train_problems(config: RunConfig, world_size: Optional[int]) -> List[str]:
    """Batch sizes that megatron-core's schedule and ramp-up calculator would reject mid-run."""
    train, par = config.train, config.parallel
    problems: List[str] = []
    if train.steps < 1 or train.global_batch_size < 1 or train.micro_batch_size < 1:
        return ["train.steps, train.global_batch_size and train.micro_batch_size must be >= 1"]
    data_parallel = None
    if world_size is not None and world_size % (par.tensor * par.pipeline) == 0:
        data_parallel = world_size // (par.tensor * par.pipeline)
    unit = train.micro_batch_size * (data_parallel or 1)
    unit_name = (f"train.micro_batch_size {train.micro_batch_size} x data-parallel size {data_parallel} = {unit}"
                 if data_parallel else f"train.micro_batch_size = {unit}")

    def multiple_of_unit(what: str, value: int) -> None:
        if value % unit:
            empty = " (it leaves 0 micro-batches per data-parallel rank)" if value < unit else ""
            problems.append(f"{what}={value} must be a multiple of {unit_name}{empty}; "
                            f"e.g. {max(unit, value - value % unit)}")

    multiple_of_unit("train.global_batch_size", train.global_batch_size)
    if train.rampup_batch_size:
        if len(train.rampup_batch_size) != 3:
            return problems + [f"train.rampup_batch_size={train.rampup_batch_size} must be [start, increment, "
                               "ramp_samples], e.g. [192, 24, 5493164], or empty"]
        start, increment, ramp_samples = train.rampup_batch_size
        if not 0 < start <= train.global_batch_size or increment < 1 or ramp_samples < 0:
            problems.append(f"train.rampup_batch_size={train.rampup_batch_size}: need 0 < start <= "
                            f"train.global_batch_size ({train.global_batch_size}), increment >= 1, ramp_samples >= 0")
        else:
            if (train.global_batch_size - start) % increment:
                problems.append(f"train.rampup_batch_size: global batch {train.global_batch_size} - start {start} "
                                f"is not a multiple of the increment {increment}")
            multiple_of_unit("train.rampup_batch_size start", start)
            multiple_of_unit("train.rampup_batch_size increment", increment)
    for name in ("skip_sample_ranges", "skip_step_ranges"):
        lowest = 1 if name == "skip_step_ranges" else 0
        for entry in getattr(train, name):
            if len(entry) != 2 or not lowest <= entry[0] <= entry[1]:
                problems.append(f"train.{name} entry {list(entry)} must be [first, last] with "
                                f"{lowest} <= first <= last")
    if train.init_from and not os.path.isdir(train.init_from):
        problems.append(f"train.init_from={train.init_from}: no such checkpoint directory")
    if train.hang_timeout_s < 0:
        problems.append(f"train.hang_timeout_s={train.hang_timeout_s} must be >= 0 (0: 10 x the median step time, "
                        "at least 15 min)")
    if train.hang_first_step_timeout_s <= 0:
        problems.append(f"train.hang_first_step_timeout_s={train.hang_first_step_timeout_s} must be > 0")
    if train.eval_batches < 1:
        problems.append(f"train.eval_batches={train.eval_batches} must be >= 1 (global batches per validation)")
    return problems


def _eval_task_problems(config: RunConfig) -> List[str]:
    """train.eval_tasks / downstream_eval_interval as far as the core can tell (paths, layout); the
    task files themselves are read by megatron_glm.training.downstream.eval_task_file_problems,
    which the tools (glm-train, glm-launch) run next."""
    train, vpp = config.train, config.parallel.virtual_pipeline
    problems: List[str] = []
    if train.downstream_eval_interval < 0:
        problems.append(f"train.downstream_eval_interval={train.downstream_eval_interval} must be >= 0 "
                        "(0: only at the end)")
    if not train.eval_tasks:
        return problems
    if vpp is not None and vpp > 1:
        problems.append(f"train.eval_tasks with parallel.virtual_pipeline={vpp}: downstream evaluation runs on one "
                        "model chunk per pipeline rank (the inference module's layout), an interleaved pipeline has "
                        f"{vpp}; remove parallel.virtual_pipeline, or drop train.eval_tasks and run glm-eval on "
                        "the checkpoints")
    for target in train.eval_tasks:
        if not os.path.exists(target):
            problems.append(f"train.eval_tasks: {target}: no such task file or folder")
    return problems


def run_dir_problems(run_dir: str) -> List[str]:
    """The run directory must be creatable and writable before any rank starts working."""
    path = os.path.abspath(run_dir)
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return [f"run dir {run_dir}: {existing} is a file, not a directory; choose another --run-dir"]
    if not os.access(existing, os.W_OK | os.X_OK):
        return [f"run dir {run_dir}: {existing} is not writable by this user; choose another --run-dir "
                "or fix its permissions"]
    return []


def _embedding_grad_shrink_problems(config: RunConfig) -> List[str]:
    egs = config.model.embedding_grad_shrink
    problems = []
    alphas = [egs.alpha] + [alpha for _, alpha in egs.schedule]
    if any(not 0.0 < a <= 1.0 for a in alphas):
        problems.append("model.embedding_grad_shrink alphas must be in (0, 1]")
    steps = [step for step, _ in egs.schedule]
    if steps != sorted(steps):
        problems.append("model.embedding_grad_shrink.schedule steps must be non-decreasing")
    return problems


def validate(config: RunConfig, world_size: Optional[int] = None, training: bool = False) -> RunConfig:
    """Raise ConfigError listing every problem; return the config unchanged when valid."""
    problems = config_problems(config, world_size, training)
    if problems:
        raise ConfigError(problems)
    return config
