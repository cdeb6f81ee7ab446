"""Task files in GLM-130B's YAML schema (docs/evaluation.md; THUDM/GLM-130B evaluation/configs.py).

A task file is one YAML mapping:

    name: LAMBADA                  # required
    type: gen                      # mul | gen | lm (required)
    path: lambada/lambada          # relative to --data-path (default: the YAML's folder), or absolute
    file-pattern:                  # one glob (group "all") or {group: glob}; default "**/*.json*"
      test: "**/test.jsonl"
    use_task_mask: true            # [gMASK] instead of [MASK]
    unidirectional: false          # causal context (needs use_task_mask; mul tasks ignore it)
    max_seq_length: 2048
    micro_batch_size: 1
    metrics: [Accuracy]            # defaults: mul [Accuracy], gen [EM, F1], lm [PPL]
    # gen: sampling_strategy (BaseStrategy | BeamSearchStrategy), num_beams, length_penalty,
    #      no_repeat_ngram_size, min_gen_length, max_gen_length,
    #      banned_ids / banned_prefixes (LAMBADA's punctuation bans; this project's option)
    # lm:  generation_length
    # mul: score (sum | mean: per-token mean of a choice's log-probs; this project's option)

Keys may be written kebab-case or snake_case. `module:` names one of GLM-130B's task classes; the
ones whose behaviour this project implements are accepted (LAMBADA, MMLU, Pile), any other is an
error, as is any unknown key or type.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import yaml

from megatron_glm.evaluation.errors import EvalError

TASK_TYPES = ("mul", "gen", "lm")
DEFAULT_METRICS = {"mul": ["Accuracy"], "gen": ["EM", "F1"], "lm": ["PPL"]}
KNOWN_METRICS = {"mul": {"Accuracy"}, "gen": {"EM", "F1", "Accuracy"}, "lm": {"PPL", "BPB"}}
KNOWN_MODULES = {
    "tasks.lambada.task.LAMBADA": "lambada",
    "tasks.mmlu.task.MMLU": "mmlu",
    "tasks.language-modeling.pile.Pile": "pile",
    "evaluation.MultiChoiceTask": None,
    "evaluation.GenerationTask": None,
    "evaluation.LanguageModelTask": None,
}
STRATEGIES = ("BaseStrategy", "BeamSearchStrategy", "BeamSearchStrategyForLAMBADA")


@dataclass
class TaskConfig:
    name: str
    type: str
    path: str
    source: str = ""
    """The YAML file this came from (for messages)."""
    module: Optional[str] = None
    metrics: List[str] = field(default_factory=list)
    use_task_mask: bool = False
    use_multitask_encoding: bool = False
    unidirectional: bool = False
    max_seq_length: int = 2048
    file_pattern: Union[str, Dict[str, str]] = "**/*.json*"
    micro_batch_size: int = 1
    # mul
    score: str = "sum"
    # gen
    sampling_strategy: str = "BaseStrategy"
    num_beams: int = 4
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 3
    min_gen_length: int = 0
    max_gen_length: int = 128
    banned_ids: Optional[List[int]] = None
    banned_prefixes: Optional[List[List[int]]] = None
    # lm
    generation_length: int = 256

    @property
    def kind(self) -> Optional[str]:
        """lambada / mmlu / pile when `module` names one of GLM-130B's special task classes."""
        return KNOWN_MODULES.get(self.module) if self.module else None

    def groups(self) -> Dict[str, str]:
        return {"all": self.file_pattern} if isinstance(self.file_pattern, str) else dict(self.file_pattern)

    def as_dict(self) -> Dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_TYPE_ONLY = {
    "mul": {"score"},
    "gen": {"sampling_strategy", "num_beams", "length_penalty", "no_repeat_ngram_size", "min_gen_length",
            "max_gen_length", "banned_ids", "banned_prefixes"},
    "lm": {"generation_length"},
}
_FIELDS = {f.name: f for f in fields(TaskConfig) if f.name != "source"}
_INTS = {"max_seq_length", "micro_batch_size", "num_beams", "no_repeat_ngram_size", "min_gen_length",
         "max_gen_length", "generation_length"}
_BOOLS = {"use_task_mask", "use_multitask_encoding", "unidirectional"}


def _key_lines(node) -> Dict[str, int]:
    lines = {}
    if isinstance(node, yaml.MappingNode):
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode):
                lines[str(key.value)] = key.start_mark.line + 1
    return lines


def _check_int_list(value, where, key, nested=False):
    items = value if isinstance(value, list) else None
    if items is None:
        raise EvalError(f"{where}: '{key}' must be a list")
    for item in items:
        if nested:
            _check_int_list(item, where, key)
        elif not isinstance(item, int) or isinstance(item, bool):
            raise EvalError(f"{where}: '{key}' must hold integer token ids, got {item!r}")
    return [list(i) for i in items] if nested else [int(i) for i in items]


def parse_task(data: Any, source: str, lines: Optional[Dict[str, int]] = None) -> TaskConfig:
    """One task mapping -> TaskConfig; every problem is an EvalError naming `source` and the key."""
    lines = lines or {}

    def where(key: Optional[str] = None) -> str:
        line = lines.get(key) if key else None
        return f"{source}:{line}" if line else source

    if not isinstance(data, dict):
        raise EvalError(f"{source}: a task file must be one YAML mapping (name, type, path, ...)")
    values: Dict[str, Any] = {}
    raw_keys: Dict[str, str] = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key not in _FIELDS:
            close = difflib.get_close_matches(key, list(_FIELDS), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise EvalError(f"{where(str(raw_key))}: unknown key '{raw_key}'{hint}")
        if key in values:
            raise EvalError(f"{where(str(raw_key))}: '{raw_key}' given twice (as '{raw_keys[key]}' too)")
        values[key], raw_keys[key] = value, str(raw_key)
    for required in ("name", "type", "path"):
        if required not in values or values[required] in (None, ""):
            raise EvalError(f"{source}: missing required key '{required}'")
    task_type = str(values["type"])
    if task_type not in TASK_TYPES:
        raise EvalError(f"{where(raw_keys['type'])}: unknown task type '{task_type}' (expected one of "
                        f"{', '.join(TASK_TYPES)})")
    for key, value in values.items():
        at = where(raw_keys[key])
        other = [t for t, keys in _TYPE_ONLY.items() if key in keys and t != task_type]
        if other:
            raise EvalError(f"{at}: '{raw_keys[key]}' is a {other[0]}-task key; this task has type {task_type}")
        if key in _INTS and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise EvalError(f"{at}: '{raw_keys[key]}' must be a non-negative integer, got {value!r}")
        if key in _BOOLS and not isinstance(value, bool):
            raise EvalError(f"{at}: '{raw_keys[key]}' must be true or false, got {value!r}")
        if key in ("name", "path") and not isinstance(value, str):
            raise EvalError(f"{at}: '{raw_keys[key]}' must be a string, got {value!r}")
        if key == "length_penalty" and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise EvalError(f"{at}: 'length_penalty' must be a number, got {value!r}")
    cfg = TaskConfig(**{k: v for k, v in values.items() if k != "type"}, type=task_type, source=source)
    cfg.length_penalty = float(cfg.length_penalty)

    if cfg.module is not None and cfg.module not in KNOWN_MODULES:
        raise EvalError(f"{where(raw_keys['module'])}: module '{cfg.module}' is not supported (supported: "
                        f"{', '.join(KNOWN_MODULES)}); remove it to use the default {task_type} task")
    pattern = cfg.file_pattern
    if isinstance(pattern, dict):
        if not pattern or not all(isinstance(k, str) and isinstance(v, str) for k, v in pattern.items()):
            raise EvalError(f"{where(raw_keys.get('file_pattern'))}: 'file-pattern' must be a glob or a mapping "
                            f"{{group: glob}}")
    elif not isinstance(pattern, str):
        raise EvalError(f"{where(raw_keys.get('file_pattern'))}: 'file-pattern' must be a glob or a mapping "
                        f"{{group: glob}}, got {pattern!r}")
    if not isinstance(cfg.metrics, list) or not all(isinstance(m, str) for m in cfg.metrics):
        raise EvalError(f"{where(raw_keys.get('metrics'))}: 'metrics' must be a list of names")
    if not cfg.metrics:
        cfg.metrics = ["Accuracy"] if cfg.kind == "lambada" else ["BPB"] if cfg.kind == "pile" \
            else list(DEFAULT_METRICS[task_type])
    unknown = [m for m in cfg.metrics if m not in KNOWN_METRICS[task_type]]
    if unknown:
        raise EvalError(f"{where(raw_keys.get('metrics'))}: unknown metric {unknown[0]!r} for a {task_type} task "
                        f"(known: {', '.join(sorted(KNOWN_METRICS[task_type]))})")
    if cfg.unidirectional and not cfg.use_task_mask:
        raise EvalError(f"{where(raw_keys.get('unidirectional'))}: 'unidirectional: true' needs "
                        f"'use_task_mask: true' ([MASK] does not support unidirectional attention)")
    if cfg.micro_batch_size < 1 or cfg.max_seq_length < 4:
        raise EvalError(f"{source}: micro_batch_size must be >= 1 and max_seq_length >= 4")
    if cfg.score not in ("sum", "mean"):
        raise EvalError(f"{where(raw_keys.get('score'))}: 'score' must be sum or mean, got {cfg.score!r}")
    if cfg.sampling_strategy not in STRATEGIES:
        raise EvalError(f"{where(raw_keys.get('sampling_strategy'))}: unknown sampling_strategy "
                        f"'{cfg.sampling_strategy}' (expected one of {', '.join(STRATEGIES)})")
    if cfg.type == "gen" and cfg.num_beams < 1:
        raise EvalError(f"{where(raw_keys.get('num_beams'))}: 'num_beams' must be >= 1")
    if cfg.type == "lm" and not 0 < cfg.generation_length < cfg.max_seq_length:
        raise EvalError(f"{where(raw_keys.get('generation_length'))}: 'generation_length' must be in "
                        f"[1, max_seq_length)")
    if cfg.banned_ids is not None:
        cfg.banned_ids = _check_int_list(cfg.banned_ids, where(raw_keys.get("banned_ids")), "banned_ids")
    if cfg.banned_prefixes is not None:
        cfg.banned_prefixes = _check_int_list(cfg.banned_prefixes, where(raw_keys.get("banned_prefixes")),
                                              "banned_prefixes", nested=True)
    return cfg


def load_task_file(path: Union[str, Path]) -> TaskConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise EvalError(f"{path}: cannot read the task file ({error.__class__.__name__})") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise EvalError(f"{at}: malformed YAML ({problem})") from None
    return parse_task(data, str(path), _key_lines(node))


def find_task_files(target: Union[str, Path]) -> List[Path]:
    """A YAML file, or every *.yaml / *.yml under a folder (recursively, sorted)."""
    target = Path(target)
    if target.is_dir():
        files = sorted(p for p in target.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
        if not files:
            raise EvalError(f"{target}: no *.yaml task files in this folder")
        return files
    if not target.is_file():
        raise EvalError(f"{target}: no such task file or folder")
    return [target]


def task_data_root(cfg: TaskConfig, data_path: Optional[str]) -> Path:
    """The folder the task's file patterns are matched in."""
    path = Path(cfg.path).expanduser()
    if path.is_absolute():
        return path
    base = Path(data_path) if data_path else Path(cfg.source).parent
    return base / path
