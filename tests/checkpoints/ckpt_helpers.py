"""Small helpers shared by the glm-ckpt tests: run the CLI in-process, get logits through it."""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import torch

from checkpoints.cli import main
from multirank.harness import run_ranks

SCENARIOS = Path(__file__).with_name("ckpt_scenarios.py")


def run_scenario(name: str, nproc: int, workdir: Path, *args: str, timeout_s: float = 240.0) -> None:
    """harness.run_ranks with this folder's scenario script."""
    run_ranks(name, nproc, workdir, *args, timeout_s=timeout_s, script=SCENARIOS)


HEADS_ARGS = ["--num-attention-heads", "4"]


def ckpt(capsys, *args: str) -> Tuple[int, str, str]:
    """(exit code, stdout, stderr) of `glm-ckpt args...` (capsys None: output not captured)."""
    if capsys is None:
        return main([str(a) for a in args]), "", ""
    capsys.readouterr()
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def convert(capsys, src: Path, dst: Path, *args: str) -> None:
    code, out, err = ckpt(capsys, "convert", src, dst, "--quiet", *args, *HEADS_ARGS)
    assert code == 0, err
    assert dst.is_dir() and "wrote" in out


def logits(capsys, checkpoint: Path, inputs: Path, out: Path) -> List[torch.Tensor]:
    code, _, err = ckpt(capsys, "forward", checkpoint, "--inputs", inputs, "--out", out, *HEADS_ARGS)
    assert code == 0, err
    return torch.load(out)


def write_random_safetensors(root: Path, glm, step: int) -> Path:
    """A safetensors export of seeded random fp32 weights of `glm` at `root`, written tensor by tensor."""
    from checkpoints.formats.base import WriteOptions
    from checkpoints.formats.safetensors_format import SafetensorsWriter

    root.mkdir(parents=True)
    entries = glm.entries()
    writer = SafetensorsWriter(root, glm, WriteOptions(), step=step, dtypes={k: torch.float32 for k, _, _ in entries})
    generator = torch.Generator().manual_seed(0)
    for key, spec, layer in entries:
        writer.write(key, spec, layer, torch.randn(spec.shape(glm), generator=generator))
    writer.close()
    return root


def max_abs_diff(a: List[torch.Tensor], b: List[torch.Tensor]) -> float:
    assert len(a) == len(b)
    return max(float((x.double() - y.double()).abs().max()) for x, y in zip(a, b))
