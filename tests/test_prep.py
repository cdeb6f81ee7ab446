"""glm-prep end to end: tokenizer, tokenisation read back by megatron-core, bad input, shards."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zstandard
from megatron.core.datasets.indexed_dataset import IndexedDataset

from data_prep.indexed_writer import IndexedDatasetWriter, token_dtype
from data_prep.readers import Document, read_documents
from data_prep.tokenize import TokenizeOptions, TooManyBadRecords, tokenize
from megatron_glm.data.tokenizer import GLMTokenizer, TokenizerError

DEMO_CORPUS = Path(__file__).resolve().parent.parent / "data_prep" / "demo_corpus"

GLM_PREP = str(Path(sys.executable).parent / "glm-prep")


def _documents(path, fmt):
    return [d for d in read_documents(str(path), fmt) if isinstance(d, Document)]


def test_special_tokens_have_stable_ids_and_cannot_be_injected(demo_tokenizer):
    assert demo_tokenizer.special.as_dict() == {"pad": 0, "mask": 3, "gmask": 4, "smask": 5, "eod": 6,
                                                "sop": 7, "eop": 8}
    ids = demo_tokenizer.encode("a literal [MASK] and <eod> in text")
    assert not set(ids) & {3, 4, 5, 6, 7, 8}


@pytest.mark.parametrize("text", ["The city of Avalon has 3 parks.\n\nNew paragraph\tcode()",
                                  "北京是中国的首都，天气很好。", "mixed 中文 and English 123"])
def test_round_trip(demo_tokenizer, text):
    assert demo_tokenizer.decode(demo_tokenizer.encode(text)) == text


def test_foreign_model_needs_explicit_special_ids(tmp_path):
    import sentencepiece as spm

    lines = [f"plain text line {i} with words" for i in range(300)]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(tmp_path / "plain"),
                                   vocab_size=60, minloglevel=2)
    with pytest.raises(TokenizerError, match="--special-token-ids"):
        GLMTokenizer(str(tmp_path / "plain.model"))
    icetk_like = {"pad": 0, "mask": 150000, "gmask": 150001, "smask": 150002, "eod": 150003, "sop": 150004,
                  "eop": 150005}
    tokenizer = GLMTokenizer(str(tmp_path / "plain.model"), icetk_like)
    assert tokenizer.vocab_size == 150006
    assert token_dtype(tokenizer.vocab_size) == np.int32
    assert tokenizer.decode([150000]) == "[MASK]"


def test_token_dtype_threshold():
    assert token_dtype(65499) == np.uint16 and token_dtype(65500) == np.int32


@pytest.mark.parametrize("name, file, fmt", [("pile", "pile-demo.jsonl.zst", "pile"),
                                             ("wudao", "wudao-demo.json", "wudao")])
def test_every_document_reads_back_through_megatron_core(demo_tokenizer, demo_datasets, name, file, fmt):
    documents = _documents(DEMO_CORPUS / file, fmt)
    dataset = IndexedDataset(demo_datasets[name])
    assert len(dataset) == len(documents) and len(dataset.document_indices) == len(documents) + 1
    encoded = demo_tokenizer.encode_batch([d.text for d in documents], num_threads=2)
    for index, ids in enumerate(encoded):
        assert dataset[index].tolist() == ids + [demo_tokenizer.special.eod], (file, index)
    stats = json.loads(Path(f"{demo_datasets[name]}.stats.json").read_text())
    assert stats["documents"] == len(documents) and stats["skipped"] == 0 and stats["kind"] == "text"


def test_instruction_examples_keep_text_and_target_apart(demo_tokenizer, demo_datasets):
    documents = _documents(DEMO_CORPUS / "mip-demo.jsonl", "mip")
    dataset = IndexedDataset(demo_datasets["mip"])
    assert len(dataset.document_indices) == len(documents) + 1
    for index, document in enumerate(documents):
        first = dataset.document_indices[index]
        assert dataset.document_indices[index + 1] - first == 2
        assert dataset[first].tolist() == demo_tokenizer.encode(document.text)
        assert dataset[first + 1].tolist() == demo_tokenizer.encode(document.target)


def _write_lines(path, lines):
    with open(path, "wb") as handle:
        for line in lines:
            handle.write(line + b"\n")


def test_bad_records_are_skipped_counted_and_located(tmp_path, demo_tokenizer):
    source = tmp_path / "bad.jsonl"
    good = [json.dumps({"text": f"good document {i}"}).encode() for i in range(20)]
    _write_lines(source, good[:5] + [b'{"text": "broken'] + good[5:10] + [b'{"text": "\xff\xfe bad utf8"}']
                 + good[10:15] + [b'{"other": "no text"}', b'{"text": "   "}'] + good[15:])
    stats = tokenize(TokenizeOptions([str(source)], str(tmp_path / "out"), progress=False, max_error_rate=0.5),
                     demo_tokenizer)
    assert stats["documents"] == 20 and stats["skipped"] == 4
    skips = stats["files"][str(source)]["skips"]
    assert [s["location"] for s in skips] == [6, 12, 18, 19]
    assert "invalid JSON" in skips[0]["reason"] and "UTF-8" in skips[1]["reason"]
    assert "missing key" in skips[2]["reason"] and "empty" in skips[3]["reason"]
    dataset = IndexedDataset(str(tmp_path / "out"))
    assert [demo_tokenizer.decode(dataset[i][:-1]) for i in range(20)] == [f"good document {i}" for i in range(20)]


def test_truncated_zst_keeps_the_documents_before_the_damage(tmp_path, demo_tokenizer):
    lines = [json.dumps({"text": f"document number {i} " * 20}).encode() for i in range(2000)]
    data = zstandard.ZstdCompressor().compress(b"\n".join(lines) + b"\n")
    source = tmp_path / "cut.jsonl.zst"
    source.write_bytes(data[: len(data) // 2])
    stats = tokenize(TokenizeOptions([str(source)], str(tmp_path / "out"), progress=False), demo_tokenizer)
    report = stats["files"][str(source)]
    assert 0 < stats["documents"] < 2000 and report["skipped"] >= 1
    assert "truncated zstd" in report["skips"][-1]["reason"]


def test_too_many_errors_fail_and_publish_nothing(tmp_path, demo_tokenizer):
    source = tmp_path / "mostly_bad.jsonl"
    _write_lines(source, [b"not json"] * 30 + [json.dumps({"text": "fine"}).encode()] * 10)
    with pytest.raises(TooManyBadRecords, match="max-error-rate"):
        tokenize(TokenizeOptions([str(source)], str(tmp_path / "out"), progress=False, max_error_rate=0.1),
                 demo_tokenizer)
    assert not list(tmp_path.glob("out*"))


def test_cli_exit_codes_and_messages(tmp_path, demo_tokenizer):
    source = tmp_path / "mostly_bad.jsonl"
    _write_lines(source, [b"not json"] * 30 + [json.dumps({"text": "fine"}).encode()] * 10)
    common = ["--tokenizer-model", demo_tokenizer.model_file, "--quiet"]
    bad = subprocess.run([GLM_PREP, "tokenize", "--input", str(source), "--output-prefix", str(tmp_path / "o"),
                          "--max-error-rate", "0.1", *common], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 3 and "mostly_bad.jsonl" in bad.stderr
    missing = tmp_path / "nowhere.jsonl"
    gone = subprocess.run([GLM_PREP, "tokenize", "--input", str(missing), "--output-prefix", str(tmp_path / "o"),
                           *common], capture_output=True, text=True, timeout=120)
    assert gone.returncode == 2 and str(missing) in gone.stderr
    assert not list(tmp_path.glob("o.*"))


def test_unfinished_writer_never_leaves_a_loadable_index(tmp_path):
    writer = IndexedDatasetWriter(str(tmp_path / "partial"), np.uint16)
    writer.add_documents(np.arange(10), np.array([4, 6]), np.array([1, 1]))
    assert not (tmp_path / "partial.idx").exists() and not (tmp_path / "partial.bin").exists()
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_shards_merge_into_the_full_dataset(tmp_path, demo_tokenizer):
    documents = _documents(DEMO_CORPUS / "pile-demo.jsonl.zst", "pile")[:300]
    files = []
    for part in range(3):
        path = tmp_path / f"part{part}.jsonl.gz"
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            for document in documents[part * 100:(part + 1) * 100]:
                handle.write(json.dumps({"text": document.text}) + "\n")
        files.append(str(path))
    for shard in range(2):
        tokenize(TokenizeOptions(files, str(tmp_path / f"shard{shard}"), shard=(shard, 2), progress=False),
                 demo_tokenizer)
    result = subprocess.run([GLM_PREP, "merge", "--input", str(tmp_path / "shard*"), "--output-prefix",
                             str(tmp_path / "merged")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    tokenize(TokenizeOptions(files, str(tmp_path / "full"), progress=False), demo_tokenizer)
    merged, full = IndexedDataset(str(tmp_path / "merged")), IndexedDataset(str(tmp_path / "full"))
    assert len(merged) == len(full) == 300
    # Shard 0 holds files 0 and 2, shard 1 file 1: the same documents, merged in shard order.
    order = list(range(0, 100)) + list(range(200, 300)) + list(range(100, 200))
    assert all(merged[i].tolist() == full[j].tolist() for i, j in enumerate(order))


def test_inspect_shows_parts_positions_and_loss(demo_tokenizer, demo_datasets):
    out = subprocess.run([GLM_PREP, "inspect", "--data-prefix", demo_datasets["pile"], "--tokenizer-model",
                          demo_tokenizer.model_file, "--kind", "mask", "--seq-length", "512"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Part A" in out.stdout and "[MASK]" in out.stdout and "Part B span" in out.stdout
    assert "position ids" in out.stdout and "loss tokens" in out.stdout
    assert out.stderr.strip() == ""
