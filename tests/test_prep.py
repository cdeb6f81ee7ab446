"""glm-prep end to end: tokenizer, tokenisation read back by megatron-core, bad input, damaged
files, shards, the recorded dataset kind, and every subcommand on missing or empty input."""

import gzip
import json
import shutil
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


# --- damaged input files (through the console script) ---------------------------------------------


def _run(*args):
    return subprocess.run([GLM_PREP, *map(str, args)], capture_output=True, text=True, timeout=300)


def _published(folder):
    """Dataset files glm-prep left in `folder` (its outputs, and any temporary file)."""
    return sorted(p.name for p in Path(folder).iterdir() if p.suffix in (".bin", ".idx", ".json")
                  or ".tmp" in p.name)


@pytest.fixture
def damaged(tmp_path):
    """The demo corpus, damaged two ways: the WuDao records wrapped in an object instead of a
    top-level array, and the Pile file cut to half its bytes (1,007 whole documents of 2,500)."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    records = json.loads((DEMO_CORPUS / "wudao-demo.json").read_text(encoding="utf-8"))
    wrapped = inputs / "wudao-wrapped.json"
    wrapped.write_text(json.dumps({"data": records}, ensure_ascii=False), encoding="utf-8")
    pile = (DEMO_CORPUS / "pile-demo.jsonl.zst").read_bytes()
    cut = inputs / "trunc.jsonl.zst"
    cut.write_bytes(pile[: len(pile) // 2])
    lines = zstandard.ZstdDecompressor().decompressobj().decompress(pile).split(b"\n")
    return {"wrapped": wrapped, "cut": cut, "cut_offset": sum(len(line) + 1 for line in lines[:1007])}


def test_a_damaged_file_fails_the_job_naming_where_and_how_much_was_read(tmp_path, demo_tokenizer, damaged):
    out = tmp_path / "out"
    common = ["--output-prefix", out / "corpus", "--tokenizer-model", demo_tokenizer.model_file, "--quiet"]
    both = _run("tokenize", "--input", damaged["wrapped"], damaged["cut"], *common)
    assert both.returncode == 3, both.stderr
    assert (f"glm-prep: {damaged['cut']}: damaged file: truncated zstd stream, at decompressed byte "
            f"{damaged['cut_offset']:,} (line 1,008); read 1,007 documents") in both.stderr
    assert "Nothing was published" in both.stderr and "--accept-damaged-files" in both.stderr
    assert _published(out) == []
    wrapped = _run("tokenize", "--input", damaged["wrapped"], *common)
    assert wrapped.returncode == 3
    assert (f"{damaged['wrapped']}: damaged file: not a JSON array (WuDao files hold one array of records); it "
            f"starts with '{{', at byte 0 (record 0); read 0 documents (0 bytes) before it, "
            f"{damaged['wrapped'].stat().st_size:,} bytes after it not read") in wrapped.stderr
    assert _published(out) == []


def test_an_accepted_damaged_file_is_recorded_with_what_was_lost(tmp_path, demo_tokenizer, damaged):
    prefix = tmp_path / "cut"
    r = _run("tokenize", "--input", damaged["cut"], "--output-prefix", prefix,
             "--tokenizer-model", demo_tokenizer.model_file, "--quiet", "--accept-damaged-files")
    assert r.returncode == 0, r.stderr
    assert "truncated zstd stream" in r.stderr and "accepted (--accept-damaged-files)" in r.stderr
    stats = json.loads(Path(f"{prefix}.stats.json").read_text())
    damage = stats["damaged"][str(damaged["cut"])]
    assert damage["reason"] == "truncated zstd stream" and damage["cut_short"] is True
    assert (damage["documents_read"], damage["offset"], damage["location"]) == (1007, damaged["cut_offset"], 1008)
    assert stats["files"][str(damaged["cut"])]["damage"] == damage
    assert stats["documents"] == len(IndexedDataset(str(prefix))) == 1007
    assert stats["lost_bytes"] == damage["lost_bytes"] > 0  # the cut last line


def test_the_error_rate_counts_lost_bytes_not_records(tmp_path, demo_tokenizer, damaged):
    """The wrapped WuDao file is one "bad record" among 1,009 but 71 % of the input bytes."""
    out = tmp_path / "out"
    r = _run("tokenize", "--input", damaged["wrapped"], damaged["cut"], "--output-prefix", out / "corpus",
             "--tokenizer-model", demo_tokenizer.model_file, "--quiet", "--accept-damaged-files")
    assert r.returncode == 3, r.stderr
    assert "input bytes lost (71.4% > --max-error-rate 5.0%)" in r.stderr
    assert f"most in {damaged['wrapped']}" in r.stderr and "2 damaged file(s)" in r.stderr
    assert _published(out) == []


def _parts(tmp_path, count=3, per_part=100):
    documents = _documents(DEMO_CORPUS / "pile-demo.jsonl.zst", "pile")[: count * per_part]
    files = []
    for part in range(count):
        path = tmp_path / f"part{part}.jsonl.gz"
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            for document in documents[part * per_part:(part + 1) * per_part]:
                handle.write(json.dumps({"text": document.text}) + "\n")
        files.append(path)
    return files


def test_a_failed_shard_cannot_be_merged_away(tmp_path, demo_tokenizer):
    """Shard 1/2 holds a truncated file: it fails and publishes nothing, and merging the shards
    that exist is refused instead of quietly dropping its files. Accepted, it merges, and the
    merged record keeps the damage."""
    files = _parts(tmp_path)
    data = files[1].read_bytes()
    files[1].write_bytes(data[: len(data) // 2])
    common = ["--input", *files, "--tokenizer-model", demo_tokenizer.model_file, "--quiet"]
    assert _run("tokenize", *common, "--shard", "0/2", "--output-prefix", tmp_path / "s.shard0").returncode == 0
    failed = _run("tokenize", *common, "--shard", "1/2", "--output-prefix", tmp_path / "s.shard1")
    assert failed.returncode == 3 and f"{files[1]}: damaged file: truncated gzip stream" in failed.stderr
    assert not list(tmp_path.glob("s.shard1*"))
    merge = _run("merge", "--input", tmp_path / "s.shard*", "--output-prefix", tmp_path / "merged")
    assert merge.returncode == 2
    assert "shard(s) 1/2 of the job that wrote" in merge.stderr and "missing from the merge (1 of 2 given)" in merge.stderr
    assert not list(tmp_path.glob("merged*"))

    accepted = _run("tokenize", *common, "--shard", "1/2", "--output-prefix", tmp_path / "s.shard1",
                    "--accept-damaged-files")
    assert accepted.returncode == 0, accepted.stderr
    merge = _run("merge", "--input", tmp_path / "s.shard*", "--output-prefix", tmp_path / "merged")
    assert merge.returncode == 0, merge.stderr
    merged = json.loads((tmp_path / "merged.stats.json").read_text())
    assert merged["kind"] == "text" and list(merged["damaged"]) == [str(files[1])]
    assert merged["documents"] == len(IndexedDataset(str(tmp_path / "merged"))) > 200


def test_the_same_shard_twice_is_refused(tmp_path, demo_tokenizer):
    files = _parts(tmp_path, count=2)
    common = ["--input", *files, "--tokenizer-model", demo_tokenizer.model_file, "--quiet", "--shard", "0/2"]
    for name in ("a", "b"):
        assert _run("tokenize", *common, "--output-prefix", tmp_path / name).returncode == 0
    merge = _run("merge", "--input", tmp_path / "a", tmp_path / "b", "--output-prefix", tmp_path / "merged")
    assert merge.returncode == 2 and "are both shard 0/2 of one job" in merge.stderr
    assert not list(tmp_path.glob("merged*"))


# --- the recorded dataset kind --------------------------------------------------------------------


def test_merge_refuses_text_with_instructions(tmp_path, demo_datasets):
    r = _run("merge", "--input", demo_datasets["pile"], demo_datasets["mip"], "--output-prefix", tmp_path / "mixed")
    assert r.returncode == 2
    assert (f"cannot merge {demo_datasets['pile']}.stats.json (kind 'text') with {demo_datasets['mip']}.stats.json "
            "(kind 'mip')") in r.stderr
    assert not list(tmp_path.glob("mixed*"))
    ok = _run("merge", "--input", demo_datasets["pile"], demo_datasets["wudao"], "--output-prefix", tmp_path / "text")
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "text.stats.json").read_text())["kind"] == "text"


@pytest.mark.parametrize("dataset, kind, fits", [("pile", "mip", "--kind mask or --kind gmask"),
                                                 ("mip", "mask", "--kind mip"), ("mip", "gmask", "--kind mip")])
def test_inspect_refuses_samples_of_another_kind(demo_tokenizer, demo_datasets, dataset, kind, fits):
    r = _run("inspect", "--data-prefix", demo_datasets[dataset], "--tokenizer-model", demo_tokenizer.model_file,
             "--kind", kind, "--seq-length", "512")
    assert r.returncode == 2 and r.stdout == ""
    recorded = "mip" if dataset == "mip" else "text"
    assert f"{demo_datasets[dataset]} is a {recorded} dataset (recorded in" in r.stderr and f"use {fits}" in r.stderr


def test_inspect_of_a_dataset_without_a_record_goes_on_with_a_note(tmp_path, demo_tokenizer, demo_datasets):
    for suffix in (".bin", ".idx"):  # an older dataset: no stats.json
        shutil.copy(demo_datasets["mip"] + suffix, tmp_path / f"old{suffix}")
    r = _run("inspect", "--data-prefix", tmp_path / "old", "--tokenizer-model", demo_tokenizer.model_file,
             "--kind", "mip", "--seq-length", "512")
    assert r.returncode == 0, r.stderr
    assert "Part A" in r.stdout and "its kind (text or mip) is not recorded" in r.stderr
    (tmp_path / "old.stats.json").write_text('{"kind": "instruction"}')  # what glm-prep wrote before "mip"
    r = _run("inspect", "--data-prefix", tmp_path / "old", "--tokenizer-model", demo_tokenizer.model_file,
             "--kind", "mask", "--seq-length", "512")
    assert r.returncode == 2 and "is a mip dataset" in r.stderr


def test_merge_of_a_dataset_without_a_record_goes_on_with_a_note(tmp_path, demo_datasets):
    for suffix in (".bin", ".idx"):
        shutil.copy(demo_datasets["wudao"] + suffix, tmp_path / f"old{suffix}")
    r = _run("merge", "--input", demo_datasets["pile"], tmp_path / "old", "--output-prefix", tmp_path / "merged")
    assert r.returncode == 0, r.stderr
    assert f"note: {tmp_path / 'old'}: no old.stats.json" in r.stderr and "its kind cannot be checked" in r.stderr
    assert json.loads((tmp_path / "merged.stats.json").read_text())["kind"] is None  # not claimed for the whole


# --- every subcommand on a missing or an empty input ----------------------------------------------


def _empty_dataset(prefix):
    writer = IndexedDatasetWriter(str(prefix), np.uint16)
    writer.finish()


@pytest.mark.parametrize("case", ["train-tokenizer missing", "tokenize missing", "merge missing", "inspect missing",
                                  "train-tokenizer empty", "tokenize empty", "merge empty", "inspect empty"])
def test_every_subcommand_on_a_missing_or_empty_input(tmp_path, demo_tokenizer, case):
    command, what = case.split()
    inputs = tmp_path / "in"
    inputs.mkdir()
    out = tmp_path / "out"
    if command in ("train-tokenizer", "tokenize"):
        path = inputs / "data.json"
        if what == "empty":
            path.write_bytes(b"")
        args = {"train-tokenizer": ["--model-prefix", out / "tok"],
                "tokenize": ["--output-prefix", out / "data", "--tokenizer-model", demo_tokenizer.model_file]}[command]
        r = _run(command, "--input", path, *args, "--quiet")
        expected = (3, f"{path}: damaged file: the file is empty") if what == "empty" else \
            (2, f"{path}: cannot read this input file (missing or no permission)")
    else:
        prefix = inputs / "data"
        if what == "empty":
            if command == "merge":
                (inputs / "data.bin").write_bytes(b"")
                (inputs / "data.idx").write_bytes(b"")
            else:
                _empty_dataset(prefix)
        args = {"merge": ["--input", prefix, "--output-prefix", out / "merged"],
                "inspect": ["--data-prefix", prefix, "--tokenizer-model", demo_tokenizer.model_file]}[command]
        r = _run(command, *args)
        expected = {("merge", "missing"): (2, f"{prefix}: no complete .bin/.idx pair to merge"),
                    ("merge", "empty"): (2, f"{prefix}.idx is not a megatron-core index (bad or truncated header)"),
                    ("inspect", "missing"): (2, f"{prefix}.bin: no such file"),
                    ("inspect", "empty"): (2, f"{prefix} holds no documents")}[command, what]
    assert (r.returncode, r.stderr.count("glm-prep: ")) == (expected[0], 1), r.stderr
    assert f"glm-prep: {expected[1]}" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists() or _published(out) == []


def test_a_job_without_any_document_publishes_nothing(tmp_path, demo_tokenizer):
    """Every record filtered out (a subset name misspelled): an empty dataset would only fail later."""
    r = _run("tokenize", "--input", DEMO_CORPUS / "pile-demo.jsonl.zst", "--include-subsets", "Pile-Cc",
             "--output-prefix", tmp_path / "out" / "pile", "--tokenizer-model", demo_tokenizer.model_file, "--quiet")
    assert r.returncode == 2
    assert "glm-prep: no documents in 1 input file(s) (2500 filtered by subset): nothing to publish" in r.stderr
    assert _published(tmp_path / "out") == []


# --- outputs that cannot be written ---------------------------------------------------------------


@pytest.mark.parametrize("command", ["tokenize", "merge", "train-tokenizer"])
@pytest.mark.parametrize("obstacle", ["directory", "file"])
def test_an_unwritable_output_is_named_as_given_before_any_work(tmp_path, demo_tokenizer, demo_datasets, command,
                                                                obstacle):
    """A directory where an output file goes, or a file where its folder goes: exit 2 naming the
    output the user asked for (never the temporary name it is written under), nothing left behind."""
    out = tmp_path / "out"
    out.mkdir()
    if obstacle == "directory":
        target = out / {"tokenize": "data.stats.json", "merge": "data.bin", "train-tokenizer": "data.model"}[command]
        target.mkdir()
        prefix, expected = out / "data", f"glm-prep: {target} is a directory, so glm-prep cannot write it"
    else:
        (out / "sub").write_text("not a directory")
        prefix = out / "sub" / "data"
        first = {"tokenize": "data.bin", "merge": "data.bin", "train-tokenizer": "data.model"}[command]
        expected = f"glm-prep: cannot write {out / 'sub' / first}: {out / 'sub'} is a file, not a directory"
    option = "--model-prefix" if command == "train-tokenizer" else "--output-prefix"
    inputs = {"tokenize": ["--input", DEMO_CORPUS / "mip-demo.jsonl", "--tokenizer-model", demo_tokenizer.model_file],
              "merge": ["--input", demo_datasets["pile"]],
              "train-tokenizer": ["--input", DEMO_CORPUS / "mip-demo.jsonl"]}[command]
    before = sorted(out.rglob("*"))
    r = _run(command, *inputs, option, prefix, "--quiet")
    assert (r.returncode, r.stdout) == (2, ""), r.stderr
    assert f"{expected}; choose another {option}" in r.stderr and ".tmp" not in r.stderr
    assert sorted(out.rglob("*")) == before


def test_write_errors_name_the_output_not_its_temporary_file(tmp_path, demo_tokenizer):
    """An OSError on a temporary output file (PREFIX.tmp<pid>.bin, PREFIX.stats.json.tmp<pid>) is
    reported for the output it stands for; a record that cannot be written takes the dataset with it."""
    import os

    from data_prep.cli import _os_error_message

    pid = os.getpid()
    error = OSError(28, "No space left on device", f"out/x.tmp{pid}.bin")
    assert _os_error_message(error) == "cannot write out/x.bin: No space left on device; nothing was published"
    error = IsADirectoryError(21, "Is a directory", f"out/x.stats.json.tmp{pid}", None, "out/x.stats.json")
    assert _os_error_message(error).startswith("cannot write out/x.stats.json: Is a directory")
    assert _os_error_message(OSError(27, "File too large"), "out/x") == \
        "File too large (writing out/x; nothing was published)"
    (tmp_path / "x.stats.json").mkdir()  # the library call has no up-front check: the publish fails
    with pytest.raises(IsADirectoryError):
        tokenize(TokenizeOptions([str(DEMO_CORPUS / "mip-demo.jsonl")], str(tmp_path / "x"), progress=False),
                 demo_tokenizer)
    assert [p.name for p in tmp_path.iterdir()] == ["x.stats.json"]
