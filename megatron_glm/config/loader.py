"""YAML -> typed RunConfig, with dotted overrides and errors that point at file:line.

Accepted inputs (every CLI resolves them the same way):
- a model preset name (`glm-130b`) or a run preset name (added by later issues);
- a YAML file holding a run config (`model:`, `parallel:`, ...); `model:` may be a preset name or a
  mapping with `preset: NAME` plus fields that override it.
Overrides are `dotted.key=value` strings; the value is parsed as YAML (`parallel.tensor=2`,
`model.embedding_grad_shrink.schedule=[[0,0.1],[6000,1.0]]`).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from megatron_glm.config.schema import ModelConfig, RunConfig

PRESET_DIR = Path(__file__).parent / "presets"
MODEL_PRESET_DIR = PRESET_DIR / "models"
RUN_PRESET_DIR = PRESET_DIR / "runs"


class ConfigError(ValueError):
    """A configuration problem; the message says where it is and what to change."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("\n".join(f"- {p}" for p in self.problems))


def model_preset_names() -> List[str]:
    return sorted(p.stem for p in MODEL_PRESET_DIR.glob("*.yaml"))


def run_preset_names() -> List[str]:
    return sorted(p.stem for p in RUN_PRESET_DIR.glob("*.yaml"))


class _Source:
    """Raw mapping from one YAML document plus the line of every dotted key, for error messages."""

    def __init__(self, data: Any, lines: Dict[str, int], name: str):
        self.data = data
        self.lines = lines
        self.name = name
        self.overrides: Dict[str, str] = {}
        """dotted key -> the command-line override that set it (errors blame the override)."""

    def where(self, dotted: str) -> str:
        for key in _self_and_parents(dotted):
            if key in self.overrides:
                return f"override '{self.overrides[key]}'"
        line = self.lines.get(dotted)
        return f"{self.name}:{line}" if line else self.name

    @classmethod
    def from_file(cls, path: Path) -> "_Source":
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read config file ({exc.strerror})"]) from exc
        return cls.from_text(text, str(path))

    @classmethod
    def from_text(cls, text: str, name: str) -> "_Source":
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{name}:{mark.line + 1}" if mark else name
            raise ConfigError([f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})"]) from exc
        lines: Dict[str, int] = {}
        _collect_lines(node, "", lines)
        return cls(data if data is not None else {}, lines, name)


def _self_and_parents(dotted: str) -> List[str]:
    """"a.b.c" -> ["a.b.c", "a.b", "a"]: an override of a section covers its fields."""
    parts = dotted.split(".")
    return [".".join(parts[:n]) for n in range(len(parts), 0, -1)]


def _collect_lines(node: Any, prefix: str, lines: Dict[str, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            dotted = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
            lines[dotted] = key_node.start_mark.line + 1
            _collect_lines(value_node, dotted, lines)


def _preset_path(directory: Path, name: str) -> Optional[Path]:
    path = directory / f"{name}.yaml"
    return path if path.is_file() else None


def _unknown_name_message(kind: str, name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return f"unknown {kind} '{name}'.{hint} Known: {', '.join(known)}"


def _load_source(spec: str) -> _Source:
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError([f"{spec}: no such config file"])
        return _Source.from_file(path)
    run_preset = _preset_path(RUN_PRESET_DIR, spec)
    if run_preset:
        return _Source.from_file(run_preset)
    model_preset = _preset_path(MODEL_PRESET_DIR, spec)
    if model_preset:
        return _Source.from_file(model_preset)
    known = run_preset_names() + model_preset_names()
    raise ConfigError([_unknown_name_message("preset or config file", spec, known)])


def _expand_model_preset(source: _Source, problems: List[str]) -> None:
    """Replace `model: NAME` / `model: {preset: NAME, ...}` by the preset's fields (+ overrides)."""
    if not isinstance(source.data, dict) or "model" not in source.data:
        return
    model = source.data["model"]
    name, own_fields = None, {}
    if isinstance(model, str):
        name = model
    elif isinstance(model, dict) and "preset" in model:
        own_fields = {k: v for k, v in model.items() if k != "preset"}
        name = model["preset"]
    if name is None:
        return
    path = _preset_path(MODEL_PRESET_DIR, str(name))
    if path is None:
        where = source.where("model")
        problems.append(f"{where}: model: {_unknown_name_message('model preset', str(name), model_preset_names())}")
        source.data["model"] = {}
        return
    preset = _Source.from_file(path)
    merged = dict(preset.data.get("model", {}))
    merged.update(own_fields)
    source.data["model"] = merged


def _apply_override(source: _Source, override: str, problems: List[str]) -> None:
    data = source.data
    if "=" not in override:
        problems.append(f"override '{override}': expected dotted.key=value, e.g. parallel.tensor=2")
        return
    dotted, raw_value = override.split("=", 1)
    try:
        value = yaml.safe_load(raw_value) if raw_value != "" else ""
    except yaml.YAMLError:
        value = raw_value
    keys = dotted.strip().split(".")
    source.overrides[".".join(keys)] = override
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            problems.append(f"override '{override}': '{key}' is not a section")
            return
        node = child
    node[keys[-1]] = value


def load_run_config(spec: str, overrides: Sequence[str] = ()) -> RunConfig:
    """Load a run config from a preset name or YAML file, apply overrides; raises ConfigError."""
    return _from_source(RunConfig, _load_source(spec), overrides)


def load_dataclass_file(cls: Any, path: Path, overrides: Sequence[str] = ()) -> Any:
    """An instance of dataclass `cls` from a YAML file plus dotted overrides (cluster profiles and
    other configs outside RunConfig), with the same errors: file:line, or the override as given.
    Problems of the built object (beyond types and names) are the caller's to check."""
    return _from_source(cls, _Source.from_file(Path(path)), overrides)


def _from_source(cls: Any, source: _Source, overrides: Sequence[str]) -> Any:
    if not isinstance(source.data, dict):
        raise ConfigError([f"{source.name}: expected a mapping at the top level"])
    problems: List[str] = []
    if cls is RunConfig:
        _expand_model_preset(source, problems)
    for override in overrides:
        _apply_override(source, override, problems)
    built = _build(cls, source.data, "", source, problems)
    if problems:
        raise ConfigError(problems)
    return built


def load_model_config(spec: str, overrides: Sequence[str] = ()) -> ModelConfig:
    """The model section of a preset or run config."""
    return load_run_config(spec, overrides).model


_YAML11_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _convert(value: Any, tp: Any, dotted: str, source: _Source, problems: List[str]) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    where = source.where(dotted)
    if origin is typing.Literal:
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(f"{where}: '{dotted}' must be one of {', '.join(map(str, args))}, got {value!r}{hint}")
        return value
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _convert(value, inner, dotted, source, problems)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(f"{where}: '{dotted}' must be a mapping of {tp.__name__} fields, got {value!r}")
            return tp()
        return _build(tp, value, dotted, source, problems)
    if origin in (list, List):
        if not isinstance(value, list):
            problems.append(f"{where}: '{dotted}' must be a list, got {value!r}")
            return []
        return [_convert(v, args[0], f"{dotted}", source, problems) for v in value]
    if origin in (tuple, Tuple):
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            problems.append(f"{where}: '{dotted}' entries must be [{', '.join(_type_name(a) for a in args)}], got {value!r}")
            return tuple()
        return tuple(_convert(v, a, dotted, source, problems) for v, a in zip(value, args))
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"{where}: '{dotted}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            problems.append(f"{where}: '{dotted}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _YAML11_EXPONENT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string; everybody writes it
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{where}: '{dotted}' must be a number, got {value!r}")
            return value
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            problems.append(f"{where}: '{dotted}' must be a string, got {value!r}")
        return value
    return value


def _build(cls: Any, data: Dict[str, Any], prefix: str, source: _Source, problems: List[str]) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in hints:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known fields: {', '.join(names)}"
            problems.append(f"{source.where(dotted)}: unknown field '{dotted}'{hint}")
            continue
        kwargs[key] = _convert(value, hints[key], dotted, source, problems)
    return cls(**kwargs)


def to_yaml(config: RunConfig) -> str:
    """The resolved config as YAML (written next to every run as config.yaml)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return yaml.safe_dump(plain(config), sort_keys=False)
