"""The bundled demo corpus (data_prep/demo_corpus/): it is exactly what the generator writes, each
file parses in its native format, sizes are as documented, both scripts are there, and the
instruction targets are correct for their inputs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import zstandard

from data_prep import demo_corpus
from data_prep.demo_corpus import MIP_FILE, PILE_FILE, WUDAO_FILE

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "data_prep" / "demo_corpus"
FILES = (PILE_FILE, WUDAO_FILE, MIP_FILE)
MB = 1_000_000


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_corpus")
    return out, demo_corpus.generate(out, seed=0)


def _pile_lines(path: Path) -> list[str]:
    raw = zstandard.ZstdDecompressor().decompress(path.read_bytes())
    return raw.decode("utf-8").splitlines()


@pytest.fixture(scope="module")
def pile():
    return [json.loads(line) for line in _pile_lines(BUNDLED / PILE_FILE)]


@pytest.fixture(scope="module")
def wudao():
    with open(BUNDLED / WUDAO_FILE, encoding="utf-8") as fh:
        return json.load(fh)


@pytest.fixture(scope="module")
def mip():
    with open(BUNDLED / MIP_FILE, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def test_bundled_copy_is_what_the_generator_writes(regenerated):
    out, stats = regenerated
    # the text first (a clearer failure), then the exact bytes of every file
    assert _pile_lines(out / PILE_FILE) == _pile_lines(BUNDLED / PILE_FILE)
    for name in FILES:
        assert (out / name).read_bytes() == (BUNDLED / name).read_bytes(), (
            "%s differs from the generator's output; regenerate with "
            "`python -m data_prep.demo_corpus data_prep/demo_corpus`" % name)
        assert stats[name]["bytes"] == (BUNDLED / name).stat().st_size
    assert {p.name for p in BUNDLED.iterdir()} >= set(FILES) | {"README.md"}
    assert sum(p.stat().st_size for p in BUNDLED.iterdir()) < 5 * MB


def test_independent_of_hash_seed_and_process(tmp_path):
    """Another interpreter with another hash seed writes the same bytes (small scale, fast)."""
    demo_corpus.generate(tmp_path / "here", seed=3, scale=0.05)
    env = dict(os.environ, PYTHONHASHSEED="12345")
    subprocess.run([sys.executable, "-m", "data_prep.demo_corpus", str(tmp_path / "there"), "--seed", "3",
                    "--scale", "0.05"], cwd=ROOT, env=env, check=True, capture_output=True, timeout=60)
    for name in FILES:
        assert (tmp_path / "here" / name).read_bytes() == (tmp_path / "there" / name).read_bytes()


def test_seed_and_scale_change_the_output(tmp_path):
    a = demo_corpus.generate(tmp_path / "a", seed=1, scale=0.1)
    b = demo_corpus.generate(tmp_path / "b", seed=2, scale=0.1)
    assert a[PILE_FILE]["documents"] == round(demo_corpus.PILE_DOCS * 0.1)
    assert a[WUDAO_FILE]["documents"] == round(demo_corpus.WUDAO_DOCS * 0.1)
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "b" / name).read_bytes()


def test_cli_prints_stats(tmp_path, capsys):
    assert demo_corpus.main([str(tmp_path), "--scale", "0.01"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert set(stats) == set(FILES)
    assert all(stats[name]["bytes"] == (tmp_path / name).stat().st_size for name in FILES)


def test_pile_format_and_sizes(pile, regenerated):
    _, stats = regenerated
    assert len(pile) == stats[PILE_FILE]["documents"] == 2500
    assert 1.5 * MB <= stats[PILE_FILE]["uncompressed_bytes"] <= 2.0 * MB
    subsets = Counter()
    for doc in pile:
        assert set(doc) == {"text", "meta"} and set(doc["meta"]) == {"pile_set_name"}
        assert isinstance(doc["text"], str) and doc["text"].strip()
        subsets[doc["meta"]["pile_set_name"]] += 1
    assert set(subsets) == {"Pile-CC", "Wikipedia (en)", "Github", "ArXiv", "StackExchange"}
    assert min(subsets.values()) >= 100
    lengths = sorted(len(doc["text"]) for doc in pile)
    assert lengths[0] < 300 and lengths[-1] > 1500  # a few sentences .. a few paragraphs
    assert sum("\n\n" in doc["text"] for doc in pile) > len(pile) / 2
    assert any("def " in d["text"] and "return" in d["text"] for d in pile if d["meta"]["pile_set_name"] == "Github")
    text = "".join(doc["text"] for doc in pile)
    letters = [c for c in text if c.isalpha()]
    assert sum(c.isascii() for c in letters) / len(letters) > 0.99


def test_wudao_format_and_scripts(wudao):
    raw = (BUNDLED / WUDAO_FILE).read_bytes()
    assert 1.5 * MB <= len(raw) <= 2.0 * MB
    assert raw.startswith(b'[\n {\n  "id": 0,')  # pretty-printed with indent=1, like the real files
    assert len(wudao) == 2000
    keys = ["id", "uniqueKey", "titleUkey", "dataType", "title", "content"]
    for i, rec in enumerate(wudao):
        assert list(rec) == keys and rec["id"] == i
        assert rec["dataType"] in ("百科", "新闻", "问答") and rec["title"] and rec["content"]
    assert len({rec["uniqueKey"] for rec in wudao}) == len(wudao)
    assert set(Counter(rec["dataType"] for rec in wudao)) == {"百科", "新闻", "问答"}
    text = "".join(rec["title"] + rec["content"] for rec in wudao)
    letters = [c for c in text if c.isalpha()]
    cjk = sum("\u4e00" <= c <= "\u9fff" for c in letters)
    assert cjk / len(letters) > 0.95


def test_wudao_facts_are_consistent(wudao):
    for rec in wudao:
        m = re.search(r"（(\d+)年—(\d+)年）.*终年(\d+)岁", rec["content"], re.S)
        if m:
            assert int(m.group(2)) - int(m.group(1)) == int(m.group(3))
        m = re.search(r"最高气温(-?\d+)℃，最低气温(-?\d+)℃", rec["content"])
        if m:
            assert int(m.group(1)) > int(m.group(2))


def test_pile_facts_are_consistent(pile):
    for doc in pile:
        m = re.search(r"United beat \w+ Rovers (\d+)-(\d+)", doc["text"])
        if m:
            assert int(m.group(1)) > int(m.group(2))
        m = re.search(r"^(\w+) \w+ \((\d+)\u2013(\d+)\) was a", doc["text"], re.M)
        if m:
            assert int(m.group(2)) < int(m.group(3))
        m = re.search(r"assert total_\w+\((\[[\d, ]+\])\) == (\d+)|print\(total_\w+\((\[[\d, ]+\])\)\)  # (\d+)",
                      doc["text"])
        if m:
            values, total = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
            assert sum(json.loads(values)) == int(total)


def test_mip_format_and_sizes(mip):
    assert 0.2 * MB <= (BUNDLED / MIP_FILE).stat().st_size <= 1.0 * MB
    assert len(mip) == 1200
    for ex in mip:
        assert set(ex) == {"inputs", "targets", "task"}
        assert all(isinstance(ex[k], str) and ex[k] for k in ex)
    tasks = Counter(ex["task"] for ex in mip)
    assert set(tasks) == set(demo_corpus.MIP_TASKS) and min(tasks.values()) >= 100


def _by_task(mip, task):
    examples = [ex for ex in mip if ex["task"] == task]
    assert examples
    return examples


def test_mip_arithmetic_and_comparison_are_correct(mip):
    for ex in _by_task(mip, "arithmetic_word_problem"):
        add = re.search(r"has (\d+) \w+\. \w+ buys (\d+) more and gives away (\d+)\.", ex["inputs"])
        mul = re.search(r"packs (\d+) boxes with (\d+) \w+ in each box\.", ex["inputs"])
        assert bool(add) != bool(mul), ex
        a, b, c = (int(x) for x in add.groups()) if add else (*(int(x) for x in mul.groups()), None)
        assert int(ex["targets"]) == (a + b - c if add else a * b), ex
    for ex in _by_task(mip, "number_comparison"):
        x, y = (int(v) for v in re.findall(r"\d+", ex["inputs"]))
        assert int(ex["targets"]) == max(x, y)


def test_mip_text_tasks_are_correct(mip):
    for ex in _by_task(mip, "extractive_qa"):
        paragraph = ex["inputs"].split("\n\nQuestion:")[0]
        assert ex["targets"] in paragraph, ex
    for ex in _by_task(mip, "nli_yes_no"):
        premise = re.search(r"^Premise: (.*)$", ex["inputs"], re.M).group(1)
        hypothesis = re.search(r"^Hypothesis: (.*)$", ex["inputs"], re.M).group(1)
        assert ex["targets"] == ("yes" if hypothesis in premise else "no"), ex
    for ex in _by_task(mip, "sentiment_review"):
        pos = any(p in ex["inputs"] for p in demo_corpus.POSITIVE)
        neg = any(p in ex["inputs"] for p in demo_corpus.NEGATIVE)
        assert pos != neg and ex["targets"] == ("positive" if pos else "negative"), ex
    for ex in _by_task(mip, "topic_classification"):
        options = re.search(r"Options: (.*)\.\n", ex["inputs"]).group(1).split(", ")
        assert ex["targets"] in options, ex
    for ex in _by_task(mip, "summarization_lead"):
        assert ex["targets"].endswith(".") and ex["targets"].count(". ") == 0
        start = ex["inputs"].index(ex["targets"])
        assert start == 0 or ex["inputs"][start - 1] == "\n", ex  # the article's first sentence
        assert len(ex["inputs"]) > len(ex["targets"]) + 10
    labels = Counter(ex["targets"] for ex in _by_task(mip, "sentiment_review") + _by_task(mip, "nli_yes_no"))
    assert min(labels.values()) >= 50  # both answers of each binary task occur
