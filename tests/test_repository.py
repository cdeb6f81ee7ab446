"""The repository stands on its own: no shipped file points at notes outside it."""

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_no_file_refers_outside_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    offenders = [name for name in tracked if name != "tests/test_repository.py" and (ROOT / name).is_file()
                 and any(marker in (ROOT / name).read_text(errors="ignore") for marker in ("../shared", "GLM130B.md"))]
    assert offenders == []
    assert (ROOT / "docs" / "glm130b.md").is_file()
