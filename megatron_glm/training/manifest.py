"""Checkpoint manifests: every file of a checkpoint with its size and CRC-32, written last.

A checkpoint directory is *complete* when its `manifest.json` exists, and *intact* when every file
the manifest lists has the recorded size and checksum. The trainer writes the manifest after all
ranks finished writing and before publishing; it verifies it before loading, so a truncated or
bit-flipped file (a node that died mid-write, a file system that lost a block) is found before
training continues on it. `glm-ckpt verify DIR` runs the same check offline.

The work is shared out: `checksum_files` / `verify_files` take any subset of the files, so every
rank of a job hashes its share and a 1.5 TB GLM-130B checkpoint costs each of 768 ranks ~2 GB of
reading. CRC-32 (zlib) because it is in the standard library and reads at memory speed.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from megatron_glm.rundir import MANIFEST, write_atomically

FORMAT = 1
_BLOCK = 16 << 20


class ManifestError(ValueError):
    """A checkpoint's manifest is missing or unreadable, or a file differs from it."""

    def __init__(self, checkpoint: Path, problem: str, file: Optional[str] = None):
        self.checkpoint, self.problem, self.file = Path(checkpoint), problem, file
        super().__init__(f"{checkpoint}: {problem}")

    def __reduce__(self):  # ranks exchange problems with all_gather_object
        return type(self), (self.checkpoint, self.problem, self.file)


def list_files(checkpoint: Path) -> List[str]:
    """Every regular file under `checkpoint` (relative, sorted), the manifest itself excluded."""
    root = Path(checkpoint)
    found = []
    for directory, _, names in os.walk(root):
        for name in names:
            relative = os.path.relpath(os.path.join(directory, name), root)
            if relative != MANIFEST:
                found.append(relative)
    return sorted(found)


def crc32_of(path: Path) -> str:
    checksum = 0
    with open(path, "rb", buffering=0) as stream:
        while True:
            block = stream.read(_BLOCK)
            if not block:
                break
            checksum = zlib.crc32(block, checksum)
    return f"{checksum:08x}"


def checksum_files(checkpoint: Path, files: Iterable[str]) -> Dict[str, dict]:
    """{relative path: {"size", "crc32"}} of the given files."""
    root = Path(checkpoint)
    return {name: {"size": (root / name).stat().st_size, "crc32": crc32_of(root / name)} for name in files}


def write_manifest(checkpoint: Path, entries: Dict[str, dict], step: int) -> None:
    record = {"format": FORMAT, "step": step, "created": time.time(),
              "files": {name: entries[name] for name in sorted(entries)}}
    write_atomically(Path(checkpoint) / MANIFEST, json.dumps(record, indent=1) + "\n")


def read_manifest(checkpoint: Path) -> dict:
    path = Path(checkpoint) / MANIFEST
    if not path.is_file():
        raise ManifestError(checkpoint, f"no {MANIFEST}: the checkpoint was never completed (a save "
                                        "interrupted before publishing) or predates manifests", MANIFEST)
    try:
        record = json.loads(path.read_text())
        files = record["files"]
        if not isinstance(files, dict) or not all({"size", "crc32"} <= set(v) for v in files.values()):
            raise ValueError("'files' must map each file to its size and crc32")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ManifestError(checkpoint, f"{MANIFEST} is unreadable ({error})", MANIFEST) from None
    return record


def has_manifest(checkpoint: Path) -> bool:
    return (Path(checkpoint) / MANIFEST).is_file()


def verify_files(checkpoint: Path, manifest: dict, files: Iterable[str], checksums: bool = True) -> List[ManifestError]:
    """Problems with the given files of `manifest` (empty: they are intact). checksums=False
    checks presence and sizes only (no reading: catches truncation, not bit flips)."""
    problems = []
    for name in files:
        problem = _file_problem(Path(checkpoint) / name, manifest["files"][name], checksums)
        if problem:
            problems.append(ManifestError(checkpoint, f"{name} {problem}", name))
    return problems


def _file_problem(path: Path, expected: dict, checksums: bool) -> Optional[str]:
    """What is wrong with one file ("is missing (...)", "has N bytes, ..."), None if nothing."""
    try:
        size = path.stat().st_size
        if size != expected["size"]:
            return f"has {size} bytes, the manifest says {expected['size']} (truncated or rewritten)"
        actual = crc32_of(path) if checksums else expected["crc32"]
    except FileNotFoundError as error:
        return f"is missing ({error.strerror})"
    except OSError as error:
        return f"cannot be read ({error})"
    if actual != expected["crc32"]:
        return f"has CRC-32 {actual}, the manifest says {expected['crc32']} (corrupted)"
    return None


def verify_checkpoint(checkpoint: Path) -> List[ManifestError]:
    """Every problem of one checkpoint, checked in this process (glm-ckpt verify, tests)."""
    try:
        manifest = read_manifest(checkpoint)
    except ManifestError as error:
        return [error]
    problems = verify_files(checkpoint, manifest, manifest["files"])
    unlisted = sorted(set(list_files(checkpoint)) - set(manifest["files"]))
    problems.extend(ManifestError(checkpoint, f"{name} is not in the manifest (written after the "
                                              "checkpoint was completed?)", name) for name in unlisted)
    return problems
