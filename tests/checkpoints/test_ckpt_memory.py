"""Must-be-true 4: converting a model of >= 500 MB streams -- the converter process's peak anonymous
memory (RssAnon, what an OOM kill counts, sampled in the child) stays below 3x its largest tensor +
300 MB, which a converter holding the whole model (506 MiB here, largest tensor 64 MiB: limit
492 MiB) could not meet. File pages are not counted: readers memory-map the source (torch.load
mmap=True, safe_open), and the pages they touch are page cache the kernel can drop, not memory the
converter holds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from checkpoints.shapes import GLMShape
from ckpt_helpers import write_random_safetensors

GLM = GLMShape(num_layers=9, hidden_size=1024, num_attention_heads=8, ffn_hidden_size=2816, padded_vocab_size=16384)
MB = 2 ** 20

# Linux keeps no peak of RssAnon (VmHWM counts file pages too, and ru_maxrss is carried across
# fork + exec): a thread of the child samples it every millisecond while the conversion runs (a
# tensor-sized buffer lives for at least the time it takes to fill it, far longer than that).
_MEASURE = """
import sys, threading
def anon_kb():
    with open("/proc/self/status") as status:
        return int(next(line.split()[1] for line in status if line.startswith("RssAnon:")))
peak, done = [anon_kb()], threading.Event()
def sample():
    while not done.wait(0.001):
        peak[0] = max(peak[0], anon_kb())
thread = threading.Thread(target=sample, daemon=True)
thread.start()
from checkpoints.cli import main
code = main(sys.argv[1:])
done.set()
thread.join()
print("PEAK_KB", max(peak[0], anon_kb()))
sys.exit(code)
"""


@pytest.fixture(scope="module")
def big_source(tmp_path_factory) -> Path:
    """A 506 MiB fp32 safetensors export of random weights, written one tensor at a time."""
    return write_random_safetensors(tmp_path_factory.mktemp("big") / "st", GLM, step=3)


def _largest_bytes() -> int:
    return max(torch.Size(spec.shape(GLM)).numel() * 4 for _, spec, _ in GLM.entries())


# sat: a torch.save skeleton filled in place; dist: one streaming dcp.save that takes each chunk as
# it writes it; safetensors --dtype bf16: every tensor computed (cast) before it is written.
@pytest.mark.parametrize("target", [["--to", "sat", "--tp", "2"], ["--to", "dist", "--tp", "2", "--pp", "3"],
                                    ["--to", "safetensors", "--dtype", "bf16"]])
def test_conversion_peak_memory(tmp_path, big_source, target):
    model_bytes = GLM.parameter_count() * 4
    assert model_bytes >= 500 * MB
    result = subprocess.run([sys.executable, "-c", _MEASURE, "convert", str(big_source), str(tmp_path / "out"),
                             "--quiet", *target], capture_output=True, text=True, timeout=300,
                            env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    peak = int(result.stdout.split("PEAK_KB")[1]) * 1024
    limit = 3 * _largest_bytes() + 300 * MB
    print(f"model {model_bytes / MB:.0f} MB, largest tensor {_largest_bytes() / MB:.0f} MB, "
          f"peak anonymous RSS {peak / MB:.0f} MB, limit {limit / MB:.0f} MB")
    assert peak < limit
    written = sum(f.stat().st_size for f in (tmp_path / "out").rglob("*") if f.is_file())
    assert written >= (model_bytes // 2 if "bf16" in target else model_bytes)
