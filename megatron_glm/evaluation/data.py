"""Task data: the files a task's patterns match, and their examples checked line by line.

JSONL, one example per line, as GLM-130B's evaluation data: `inputs` (ids) or
`inputs_pretokenized` (text); mul: `choices` (list of id lists) or `choices_pretokenized` (list of
texts) and `label`; gen: `targets` (list of id lists, or one id list) or `targets_pretokenized`
(text or list of texts). The ids are preferred when both are present. lm: a JSONL of documents
(`text` ids or `text_pretokenized`, optional `meta.pile_set_name`) or any other file read as one raw
text document.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from glob import glob
from pathlib import Path
from typing import Any, Dict, List, Optional

from megatron_glm.evaluation.config import TaskConfig, task_data_root
from megatron_glm.evaluation.errors import EvalError
from megatron_glm.evaluation.vocab import Vocab


@dataclass
class TaskFile:
    group: str
    path: Path
    name: str
    """Path relative to the task's data folder (how results and predictions name it)."""
    examples: List[Dict[str, Any]] = field(default_factory=list)


def task_files(cfg: TaskConfig, data_path: Optional[str]) -> List[TaskFile]:
    root = task_data_root(cfg, data_path)
    if not root.is_dir():
        raise EvalError(f"{cfg.source}: the task's data folder {root} does not exist (path: {cfg.path!r}"
                        f"{'' if data_path else '; relative paths are taken from the YAML folder unless --data-path is given'})")
    out: List[TaskFile] = []
    for group, pattern in cfg.groups().items():
        matches = sorted(Path(p) for p in glob(str(root / pattern), recursive=True) if Path(p).is_file())
        for match in matches:
            out.append(TaskFile(group, match, str(match.relative_to(root))))
    if not out:
        raise EvalError(f"{cfg.source}: no data file in {root} matches {cfg.file_pattern!r}")
    return out


def _ids(value: Any, vocab_size: Optional[int], where: str, key: str) -> List[int]:
    if not isinstance(value, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        raise EvalError(f"{where}: '{key}' must be a list of token ids")
    if vocab_size is not None:
        bad = [t for t in value if t < 0 or t >= vocab_size]
        if bad:
            raise EvalError(f"{where}: '{key}' holds token id {bad[0]} outside the model's vocabulary "
                            f"[0, {vocab_size}): data and checkpoint do not match")
    return list(value)


def _field(item: Dict[str, Any], key: str, vocab: Vocab, vocab_size: Optional[int], where: str, nested: bool):
    """Ids of `key`, preferring the id field over the `*_pretokenized` text (GLM-130B's rule) unless
    the vocabulary says to prefer text."""
    if key in item and not (vocab.prefer_text and key + "_pretokenized" in item):
        value = item[key]
        if nested:
            if isinstance(value, list) and value and all(isinstance(t, int) for t in value) and key == "targets":
                value = [value]
            if not isinstance(value, list):
                raise EvalError(f"{where}: '{key}' must be a list of token-id lists")
            return [_ids(v, vocab_size, where, key) for v in value]
        return _ids(value, vocab_size, where, key)
    text_key = key + "_pretokenized"
    if text_key not in item:
        raise EvalError(f"{where}: missing '{key}' (or '{text_key}')")
    value = item[text_key]
    if nested:
        if isinstance(value, str) and key == "targets":
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise EvalError(f"{where}: '{text_key}' must be a list of strings")
        return [_ids(vocab.encode(v, where), vocab_size, where, text_key) for v in value]
    if not isinstance(value, str):
        raise EvalError(f"{where}: '{text_key}' must be a string")
    return _ids(vocab.encode(value, where), vocab_size, where, text_key)


def _read_jsonl(path: Path):
    try:
        handle = open(path, "r", encoding="utf-8")
    except OSError as error:
        raise EvalError(f"{path}: cannot read ({error.strerror or error.__class__.__name__})") from None
    with handle:
        try:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as error:
                    raise EvalError(f"{path}:{number}: malformed JSON ({error.msg} at column {error.colno})") from None
                if not isinstance(item, dict):
                    raise EvalError(f"{path}:{number}: expected a JSON object per line")
                yield number, item
        except UnicodeDecodeError:
            raise EvalError(f"{path}: not UTF-8 text") from None


def load_examples(cfg: TaskConfig, file: TaskFile, vocab: Vocab, vocab_size: Optional[int]) -> None:
    """Fill file.examples; every problem is an EvalError naming file and line."""
    if cfg.type == "lm" and not file.path.name.endswith((".jsonl", ".json")):
        try:
            raw = file.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise EvalError(f"{file.path}: cannot read as UTF-8 text ({error.__class__.__name__})") from None
        ids = _ids(vocab.encode(raw, str(file.path)), vocab_size, str(file.path), "text")
        file.examples.append({"line": 1, "tokens": ids, "words": len(raw.strip().split(" ")),
                              "bytes": len(raw.encode("utf-8")), "domain": "all"})
        return
    for number, item in _read_jsonl(file.path):
        where = f"{file.path}:{number}"
        if cfg.type == "mul":
            text = _field(item, "inputs", vocab, vocab_size, where, False)
            choices = _field(item, "choices", vocab, vocab_size, where, True)
            if not choices or any(len(c) == 0 for c in choices):
                raise EvalError(f"{where}: 'choices' must be a non-empty list of non-empty choices")
            label = item.get("label")
            if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(choices):
                raise EvalError(f"{where}: 'label' must be an integer in [0, {len(choices)}), got {label!r}")
            total = sum(len(c) for c in choices)
            if total == len(choices):
                total = 1
            if total + 1 > cfg.max_seq_length:
                raise EvalError(f"{where}: the choices take {total} tokens; with the mask they do not fit in "
                                f"max_seq_length {cfg.max_seq_length}")
            file.examples.append({"line": number, "inputs": text, "choices": choices, "label": label})
        elif cfg.type == "gen":
            text = _field(item, "inputs", vocab, vocab_size, where, False)
            targets = _field(item, "targets", vocab, vocab_size, where, True) \
                if ("targets" in item or "targets_pretokenized" in item) else []
            if cfg.max_gen_length + 2 > cfg.max_seq_length:
                raise EvalError(f"{cfg.source}: max_gen_length {cfg.max_gen_length} leaves no room for a context "
                                f"in max_seq_length {cfg.max_seq_length}")
            file.examples.append({"line": number, "inputs": text, "targets": targets})
        else:
            if "text" not in item and "text_pretokenized" not in item:
                raise EvalError(f"{where}: missing 'text' (or 'text_pretokenized')")
            ids = _field(item, "text", vocab, vocab_size, where, False)
            if not ids:
                continue  # GLM-130B skips empty documents
            raw = item.get("text_pretokenized")
            if raw is None and vocab.has_tokenizer:
                raw = vocab.decode(ids)
            meta = item.get("meta") if isinstance(item.get("meta"), dict) else {}
            file.examples.append({
                "line": number, "tokens": ids,
                "words": len(raw.strip().split(" ")) if isinstance(raw, str) else len(ids),
                "bytes": len(raw.encode("utf-8")) if isinstance(raw, str) else None,
                "domain": str(meta.get("pile_set_name", "all")),
            })
    if not file.examples:
        raise EvalError(f"{file.path}: no examples")
