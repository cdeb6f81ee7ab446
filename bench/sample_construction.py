"""CPU benchmark: GLM sample construction at sequence length 2048, one core.

Times `glm_sequence` (the 30/70 [MASK]/[gMASK] draw on a 2000-token row), `instruction_sequence`
(4 MIP examples), the compact mask layout the dataset adds per sample, and, for reference, the dense
[s, s] boolean mask that collation builds per micro-batch.
Goal: >= 500 sequences/s per core.

    OMP_NUM_THREADS=1 python bench/sample_construction.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from megatron_glm.data.glm_sample import SpecialTokens, attention_mask, mask_layout
from megatron_glm.data.sampling import GLMObjectiveConfig, glm_sequence, instruction_sequence

SPECIAL = SpecialTokens(mask=3, gmask=4, sop=7, eop=8, pad=0)


def rate(build, seconds: float) -> float:
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        build()
        count += 1
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = GLMObjectiveConfig()
    rng = np.random.default_rng(0)
    row = lambda: rng.integers(10, 30000, config.row_length)  # noqa: E731
    examples = lambda: [(rng.integers(10, 30000, rng.integers(50, 600)), rng.integers(10, 30000, rng.integers(1, 60)))
                        for _ in range(4)]  # noqa: E731
    results = {
        "glm_sequence_per_s": rate(lambda: glm_sequence(rng, row(), config, SPECIAL), args.seconds),
        "instruction_sequence_per_s": rate(lambda: instruction_sequence(examples(), config, SPECIAL), args.seconds),
        "glm_sequence_with_layout_per_s": rate(
            lambda: mask_layout(glm_sequence(rng, row(), config, SPECIAL)[1].windows, config.seq_length),
            args.seconds),
        "dense_mask_per_s": rate(lambda: attention_mask([(0, 2048, 700)], config.seq_length), args.seconds),
    }
    print(json.dumps({k: round(v, 1) for k, v in results.items()}))


if __name__ == "__main__":
    main()
