"""The repository stands on its own: no shipped file points at notes outside it."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_no_file_refers_outside_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    offenders = [name for name in tracked if name != "tests/test_repository.py" and (ROOT / name).is_file()
                 and any(marker in (ROOT / name).read_text(errors="ignore") for marker in ("../shared", "GLM130B.md"))]
    assert offenders == []
    assert (ROOT / "docs" / "glm130b.md").is_file()


def test_metrics_are_a_library_the_trainer_uses_without_the_monitor():
    """megatron_glm.metrics imports neither the monitor nor torch; the trainer, launcher and
    runtime import nothing from megatron_glm.monitor (the monitor is a front end)."""
    code = ("import sys, megatron_glm.metrics.schema, megatron_glm.metrics.spikes; "
            "bad = [m for m in sys.modules if m.startswith('megatron_glm.monitor') or m == 'torch']; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
    root = Path(__file__).resolve().parents[1]
    importers = [str(path.relative_to(root)) for folder in ("megatron_glm/training", "megatron_glm/runtime",
                                                            "megatron_glm/config", "launch")
                 for path in (root / folder).rglob("*.py") if "megatron_glm.monitor" in path.read_text()]
    assert not importers, f"these import the monitor front end: {importers}"


def test_checkpoint_tools_use_public_apis():
    """glm-ckpt reads and writes through torch's, DCP's, safetensors' and the C library's public
    interfaces: no torch internals (torch._C, _rebuild_*), no private DCP classes, no C calls."""
    private = ("torch._C", "_rebuild_", "import ctypes", "from ctypes", "_StorageInfo", "mallopt", "vmsplice")
    offenders = [f"{path.relative_to(ROOT)}: {marker}" for path in (ROOT / "checkpoints").rglob("*.py")
                 for marker in private if marker in path.read_text()]
    assert offenders == []
