"""`glm-ckpt verify PATH`: check checkpoints against their manifests, offline, before trusting them.

PATH is one checkpoint directory, a checkpoints root (every published checkpoint, plus what
`latest` says), or a run directory (its checkpoints/). The same check the trainer makes before it
resumes (megatron_glm.training.manifest): every listed file present with its size and CRC-32, and
nothing unlisted.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

from megatron_glm.rundir import CHECKPOINTS_DIR, MANIFEST, published_checkpoints, read_latest
from megatron_glm.training.manifest import ManifestError, verify_checkpoint


class NotACheckpoint(ValueError):
    """PATH holds no checkpoint to verify."""


def checkpoints_under(path: Path) -> Tuple[List[Path], List[str]]:
    """(checkpoint directories to check, notes about `latest`)."""
    path = Path(path)
    if (path / MANIFEST).is_file() or (path / "metadata.json").is_file() or (path / "common.pt").is_file():
        return [path], []
    root = path / CHECKPOINTS_DIR if (path / CHECKPOINTS_DIR).is_dir() else path
    found = [directory for _, directory in published_checkpoints(root)]
    if not found:
        raise NotACheckpoint(f"{path}: no checkpoint here (expected a checkpoint directory with {MANIFEST}, "
                             f"a checkpoints/ root with iter_* directories, or a run directory)")
    name, problem = read_latest(root)
    notes = [f"latest: {problem}"] if problem else ([f"latest: {name}"] if name else ["latest: missing"])
    return found, notes


def verify(path: Path) -> Tuple[List[str], bool]:
    """(report lines, every checkpoint intact)."""
    directories, lines = checkpoints_under(path)
    intact = True
    for directory in directories:
        problems: List[ManifestError] = verify_checkpoint(directory)
        if problems:
            intact = False
            lines.append(f"CORRUPT {directory}")
            lines.extend(f"  - {problem.problem}" for problem in problems)
        else:
            lines.append(f"ok      {directory}")
    return lines, intact
