"""Every pipeline stage and tensor-parallel rank of a data-parallel rank reads the same samples;
data-parallel ranks read disjoint ones (GLM-130B lost weeks to stages reading different data)."""

import json

import pytest
import yaml

from multirank.harness import run_ranks

pytestmark = pytest.mark.multirank


def test_stages_agree_and_data_parallel_ranks_are_disjoint(tmp_path, demo_tokenizer, demo_data_section):
    run = {
        "model": {"preset": "glm-tiny", "vocab_size": demo_tokenizer.vocab_size, "seq_length": 256},
        "parallel": {"tensor": 1, "pipeline": 2},
        "data": demo_data_section(tmp_path / "cache"),
    }
    (tmp_path / "data_run.yaml").write_text(yaml.safe_dump(run))
    run_ranks("data_consistency", 4, tmp_path, timeout_s=300)
    records = [json.loads((tmp_path / f"data_consistency.rank{r}.json").read_text()) for r in range(4)]
    by_dp = {}
    for record in records:
        assert len(record["samples"]) == 3 * 4  # 3 steps x (8 / DP2) samples
        by_dp.setdefault(record["dp"], []).append(record["samples"])
    assert sorted(by_dp) == [0, 1]
    for stages in by_dp.values():
        assert len(stages) == 2 and stages[0] == stages[1]
    assert not set(by_dp[0][0]) & set(by_dp[1][0])
