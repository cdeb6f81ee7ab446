"""What glm-prep records about a dataset next to its .bin/.idx (PREFIX.stats.json), and the checks
that read it back: `merge` and `inspect` must not combine or decode data as something it is not.

The record says what kind of dataset it is: "text" (pile/wudao/jsonl: one sequence per document)
or "mip" (instruction examples: two sequences, text and target, per document). The .idx cannot
tell them apart reliably, and mixing them fails silently: a merged text+MIP dataset trains the
[MASK]/[gMASK] objective on instruction pairs, and `inspect --kind mip` on text pairs unrelated
documents as input and target. Datasets written before the record existed (or by other tools)
have no stats.json, or one without "kind": they are accepted with a note, since nothing can be
checked. Shards of one `tokenize --shard i/n` job also record their place (`shard`, and
`inputs_fingerprint`, the job's whole input list), so a merge can tell that a shard is missing.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence

_LEGACY_KINDS = {"instruction": "mip"}  # what stats.json said before "mip"


def stats_path(prefix: str) -> str:
    return f"{prefix}.stats.json"


def read_stats(prefix: str) -> Optional[dict]:
    """PREFIX.stats.json, or None if there is none (an older dataset, or another tool's)."""
    path = stats_path(prefix)
    try:
        with open(path, encoding="utf-8") as handle:
            stats = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot read glm-prep's record of this dataset ({error}); "
                         "tokenize it again, or delete the file to use the dataset without checks") from None
    if not isinstance(stats, dict):
        raise ValueError(f"{path}: expected a JSON object (glm-prep's record of this dataset)")
    return stats


def recorded_kind(stats: Optional[dict]) -> Optional[str]:
    """"text" or "mip" as recorded, None if not recorded."""
    kind = (stats or {}).get("kind")
    return _LEGACY_KINDS.get(kind, kind) if kind is not None else None


def write_json_atomically(path: str, payload: dict) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=1, ensure_ascii=False)
        os.replace(tmp, path)
    except BaseException:
        if os.path.isfile(tmp):
            os.unlink(tmp)
        raise


def publish_stats(prefix: str, stats: dict) -> None:
    """Write PREFIX.stats.json after PREFIX.bin/.idx were published; if it cannot be written, the
    .bin/.idx go too (a dataset without its record would pass for an older one)."""
    try:
        write_json_atomically(stats_path(prefix), stats)
    except BaseException:
        for suffix in (".bin", ".idx"):
            if os.path.isfile(f"{prefix}{suffix}"):
                os.unlink(f"{prefix}{suffix}")
        raise


def published_name(path: str) -> str:
    """The output that a temporary file of this process stands for: glm-prep writes every output
    under a temporary name and renames it when complete (PREFIX.tmp<pid>.bin -> PREFIX.bin, its
    .lengths/.documents parts -> PREFIX.idx, PREFIX.stats.json.tmp<pid> -> PREFIX.stats.json,
    M.model.tmp<pid> -> M.model). Any other path is returned as it is."""
    marker = f".tmp{os.getpid()}"
    head, found, tail = path.rpartition(marker)
    if not found or (tail and not tail.startswith(".")):
        return path
    return head + {".lengths": ".idx", ".documents": ".idx"}.get(tail, tail)


def check_outputs(paths: Sequence[str], option: str) -> None:
    """Fail before any work (ValueError naming the path and `option`) if an output cannot be
    written where it is asked for: it is a directory, or a file stands where its folder must be."""
    for path in paths:
        if os.path.isdir(path):
            raise ValueError(f"{path} is a directory, so glm-prep cannot write it; choose another {option}")
        folder = os.path.dirname(os.path.abspath(path))
        while folder and not os.path.exists(folder):
            folder = os.path.dirname(folder)
        if folder and not os.path.isdir(folder):
            raise ValueError(f"cannot write {path}: {folder} is a file, not a directory; choose another {option}")


# --- merge ---------------------------------------------------------------------------------------


def check_mergeable(prefixes: Sequence[str], records: Dict[str, Optional[dict]]) -> List[str]:
    """Raise ValueError if the datasets must not be merged (kinds, tokenizers, a shard missing);
    return notes for what could not be checked (datasets without a record)."""
    recorded = {prefix: records[prefix] for prefix in prefixes if records[prefix] is not None}
    _check_same(recorded, recorded_kind, "kind", "text and instruction (mip) datasets are trained differently: "
                "merge each kind on its own")
    _check_same(recorded, _vocabulary, "tokenizer vocabulary",
                "their token ids mean different things: tokenize every input with one tokenizer")
    _check_shards_complete(recorded)
    return [f"{prefix}: no {os.path.basename(stats_path(prefix))} (made before glm-prep recorded dataset kinds, "
            "or by another tool): its kind cannot be checked" for prefix in prefixes if records[prefix] is None]


def _vocabulary(stats: dict):
    tokenizer = stats.get("tokenizer")
    return (tokenizer.get("vocab_size"), tokenizer.get("special_ids")) if tokenizer else None


def _check_same(records: Dict[str, dict], key, what: str, why: str) -> None:
    """Every recorded key(stats) equal to the first one (None: not recorded, not compared)."""
    reference = None
    for prefix, stats in records.items():
        value = key(stats)
        if value is None:
            continue
        if reference is None:
            reference = prefix, value
        elif value != reference[1]:
            raise ValueError(f"cannot merge {stats_path(reference[0])} ({what} {_show(reference[1])}) with "
                             f"{stats_path(prefix)} ({what} {_show(value)}): {why}")


def _show(value) -> str:
    return f"{value[0]} with special ids {value[1]}" if isinstance(value, tuple) else repr(value)


def _check_shards_complete(records: Dict[str, dict]) -> None:
    """Shards of one job (same count and input fingerprint) must all be there, once each: a
    shard whose tokenize job failed publishes nothing, and merging the rest would quietly lose
    its files."""
    jobs: Dict[tuple, Dict[int, str]] = {}
    for prefix, stats in records.items():
        shard, fingerprint = stats.get("shard"), stats.get("inputs_fingerprint")
        if not shard or fingerprint is None:
            continue
        index, count = shard
        seen = jobs.setdefault((count, fingerprint), {})
        if index in seen:
            raise ValueError(f"{prefix} and {seen[index]} are both shard {index}/{count} of one job: "
                             "give each shard once")
        seen[index] = prefix
    for (count, _), seen in jobs.items():
        missing = sorted(set(range(count)) - set(seen))
        if missing:
            example = next(iter(seen.values()))
            raise ValueError(f"shard(s) {', '.join(f'{i}/{count}' for i in missing)} of the job that wrote {example} "
                             f"missing from the merge ({len(seen)} of {count} given): did its glm-prep tokenize "
                             "--shard fail? Run it again, then merge all shards")


def merged_stats(output_prefix: str, prefixes: Sequence[str], records: Dict[str, Optional[dict]],
                 merged: dict, dtype: str) -> dict:
    """The record of a merged dataset: its counts, and what its inputs recorded in common (the kind
    only if every input recorded it; every damaged file any of them accepted)."""
    known = [records[prefix] for prefix in prefixes if records[prefix] is not None]
    kinds = {recorded_kind(stats) for stats in known}
    complete = len(known) == len(prefixes)
    return {
        "output_prefix": output_prefix,
        "kind": kinds.pop() if complete and len(kinds) == 1 else None,
        "documents": merged["documents"],
        "sequences": merged["sequences"],
        "dtype": dtype,
        "merged_from": list(prefixes),
        "tokenizer": known[0].get("tokenizer") if known else None,
        "damaged": {path: damage for stats in known for path, damage in (stats.get("damaged") or {}).items()},
    }


# --- inspect -------------------------------------------------------------------------------------


def check_kind_for_inspect(prefix: str, sample_kind: str) -> Optional[str]:
    """Raise ValueError if `inspect --kind sample_kind` does not fit the recorded dataset kind;
    return a note when there is no record to check against."""
    wanted = "mip" if sample_kind == "mip" else "text"
    kind = recorded_kind(read_stats(prefix))
    if kind is None:
        return (f"{prefix}: its kind (text or mip) is not recorded ({os.path.basename(stats_path(prefix))} missing "
                f"or older): showing --kind {sample_kind} samples unchecked")
    if kind != wanted:
        fitting = "--kind mip" if kind == "mip" else "--kind mask or --kind gmask"
        raise ValueError(f"{prefix} is a {kind} dataset (recorded in {stats_path(prefix)}), but --kind "
                         f"{sample_kind} builds samples from {wanted} data: use {fitting}")
    return None
