"""data_prep.readers: every format's happy path, and bad input skipped with its exact location."""

from __future__ import annotations

import gzip
import json
import os

import pytest
import zstandard

from data_prep import readers
from data_prep.readers import Document, Skip, UnreadableInput, guess_format, read_documents


def _jsonl(records) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records)


def _read(path, fmt, **kwargs):
    return list(read_documents(str(path), fmt, **kwargs))


def _docs(items):
    return [i for i in items if isinstance(i, Document)]


def _skips(items):
    return [(s.location, s.reason) for s in items if isinstance(s, Skip)]


def _pile_records(n):
    return [{"text": f"document {i}", "meta": {"pile_set_name": "Pile-CC"}} for i in range(n)]


# --- happy paths -------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.zst", ".jsonl.gz"])
def test_pile_happy_path(tmp_path, suffix):
    data = _jsonl([
        {"text": "first", "meta": {"pile_set_name": "Pile-CC"}},
        {"text": "second", "meta": {"pile_set_name": "ArXiv"}},
        {"text": "no meta"},
        {"text": "meta not a dict", "meta": "x"},
    ]) + b"\n"  # a trailing blank line is ignored
    path = tmp_path / f"00{suffix}"
    if suffix.endswith(".zst"):
        data = zstandard.ZstdCompressor().compress(data)
    elif suffix.endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    assert _read(path, "pile") == [
        Document("first", str(path), 1, subset="Pile-CC"),
        Document("second", str(path), 2, subset="ArXiv"),
        Document("no meta", str(path), 3),
        Document("meta not a dict", str(path), 4),
    ]


def test_multi_frame_zst_reads_every_frame(tmp_path):
    cctx = zstandard.ZstdCompressor()
    path = tmp_path / "multi.jsonl.zst"
    path.write_bytes(cctx.compress(_jsonl(_pile_records(3))) + cctx.compress(_jsonl([{"text": "x"}])))
    items = _read(path, "pile")
    assert [d.text for d in items] == ["document 0", "document 1", "document 2", "x"]
    assert [d.location for d in items] == [1, 2, 3, 4]


def test_jsonl_custom_key_ignores_subsets(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(_jsonl([{"body": "a", "meta": {"pile_set_name": "X"}}, {"body": "b"}]))
    assert _read(path, "jsonl", json_key="body") == [
        Document("a", str(path), 1), Document("b", str(path), 2)]


def test_mip(tmp_path):
    path = tmp_path / "mip.jsonl"
    path.write_bytes(_jsonl([
        {"inputs": "Q: 1+1?", "targets": "2"},
        {"inputs": "Q", "targets": "  "},
        {"inputs": "Q"},
        {"inputs": "", "targets": "A"},
        {"inputs": 3, "targets": "A"},
    ]))
    assert _docs(_read(path, "mip")) == [Document("Q: 1+1?", str(path), 1, target="2")]
    assert _skips(_read(path, "mip")) == [
        (2, "empty text in 'targets'"),
        (3, "missing key 'targets'"),
        (4, "empty text in 'inputs'"),
        (5, "'inputs' is not a string"),
    ]
    path.write_bytes(_jsonl([{"prompt": "p", "answer": "a"}]))
    assert _read(path, "mip", mip_keys=("prompt", "answer")) == [
        Document("p", str(path), 1, target="a")]


@pytest.mark.parametrize("chunk", [None, 4099])  # the real 1 MiB chunks; many odd-sized ones
def test_wudao_pretty_printed_across_chunk_boundaries(tmp_path, monkeypatch, chunk):
    records = [
        {"id": i, "dataType": "news", "title": f"标题{i}" if i % 3 else "",
         "content": f"第{i}段：" + "中文内容，" * (300 + i)}
        for i in range(400)
    ]
    path = tmp_path / "part-1.json"
    path.write_text(json.dumps(records, ensure_ascii=False, indent=4), encoding="utf-8")
    assert os.path.getsize(path) > 2 * readers._CHUNK  # crosses chunk (and character) boundaries
    if chunk:
        monkeypatch.setattr(readers, "_CHUNK", chunk)
    docs = _read(path, "wudao")
    expected = [
        Document((r["title"] + "\n" if r["title"] else "") + r["content"], str(path), i)
        for i, r in enumerate(records)
    ]
    assert docs == expected


def test_wudao_compact_and_title_rules(tmp_path):
    path = tmp_path / "w.json"
    path.write_bytes(b'\xef\xbb\xbf[{"title":"T","content":"c1"},{"content":"c2"},'
                     b'{"title":null,"content":"c3"},{"title":" ","content":"c4"}]\n')
    assert [d.text for d in _read(path, "wudao")] == ["T\nc1", "c2", "c3", "c4"]


# --- guess_format ------------------------------------------------------------------------------


@pytest.mark.parametrize("name, fmt", [
    ("part-2021.json", "wudao"),
    ("data/MIP_train.jsonl", "mip"),
    ("mip-mix.jsonl.zst", "mip"),
    ("p3_Mip.jsonl.gz", "mip"),
    ("00.jsonl", "pile"),
    ("00.jsonl.zst", "pile"),
    ("00.jsonl.gz", "pile"),
    ("val.zst", "pile"),
    ("val.gz", "pile"),
    ("mip.zst", "pile"),  # the mip rule needs a .jsonl name
])
def test_guess_format(name, fmt):
    assert guess_format(name) == fmt


def test_guess_format_unknown_names_file_and_choices():
    with pytest.raises(ValueError) as err:
        guess_format("corpus/books.txt")
    assert "corpus/books.txt" in str(err.value)
    assert "--format" in str(err.value) and all(f in str(err.value) for f in readers.FORMATS)


# --- pile subsets ------------------------------------------------------------------------------


def test_pile_subset_filters_count_and_are_not_skips(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_bytes(_jsonl([
        {"text": "cc", "meta": {"pile_set_name": "Pile-CC"}},
        {"text": "gh", "meta": {"pile_set_name": "Github"}},
        {"text": "none"},
        {"meta": {"pile_set_name": "Github"}},  # filtered before the text check: not a Skip
        {"text": "arxiv", "meta": {"pile_set_name": "ArXiv"}},
    ]))
    counters = {}
    items = _read(path, "pile", include_subsets=["Pile-CC", "ArXiv"], counters=counters)
    assert [(d.text, d.location) for d in items] == [("cc", 1), ("arxiv", 5)]
    assert counters == {"filtered": 3}

    counters = {"filtered": 10}
    items = _read(path, "pile", exclude_subsets=["Github"], counters=counters)
    assert [d.text for d in _docs(items)] == ["cc", "none", "arxiv"]
    assert counters == {"filtered": 12}
    assert _skips(items) == []

    assert [d.text for d in _read(path, "pile", exclude_subsets=["Github"])] == ["cc", "none", "arxiv"]


def test_subsets_ignored_for_other_formats_and_unknown_format_rejected(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(_jsonl([{"text": "a", "meta": {"pile_set_name": "A"}}]))
    counters = {}
    items = _read(path, "jsonl", include_subsets=["B"], exclude_subsets=["A"], counters=counters)
    assert items == [Document("a", str(path), 1)] and counters == {}
    with pytest.raises(ValueError, match="unknown format"):
        read_documents(str(path), "parquet")


# --- bad JSON lines ----------------------------------------------------------------------------


def test_bad_lines_are_skipped_with_line_numbers(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(_jsonl([
        {"text": "good 1"},
        b'{"text": "a" "b"}',
        b'{"text": "caf\xe9"}',  # Latin-1, not UTF-8
        {"body": "no text key"},
        {"text": 42},
        {"text": "  \n "},
        b"",  # blank: ignored, but still counts as a line
        b"[1, 2]",
        b'{"text": "\\ud800 lone surrogate"}',
        {"text": "good 2"},
    ]))
    items = _read(path, "pile")
    assert [(d.text, d.location) for d in _docs(items)] == [("good 1", 1), ("good 2", 10)]
    skips = _skips(items)
    assert skips[:6] == [
        (2, "invalid JSON: Expecting ',' delimiter"),
        (3, "invalid UTF-8"),
        (4, "missing key 'text'"),
        (5, "'text' is not a string"),
        (6, "empty text"),
        (8, "not a JSON object"),
    ]
    assert skips[6][0] == 9 and "lone surrogate" in skips[6][1]
    assert len(skips) == 7


def _many_lines(n):
    return _jsonl({"text": f"line {i} " + "lorem ipsum " * (i % 7)} for i in range(n))


def test_truncated_zst_yields_lines_before_the_cut(tmp_path):
    data = _many_lines(20000)
    compressed = zstandard.ZstdCompressor(level=1).compress(data)
    path = tmp_path / "cut.jsonl.zst"
    path.write_bytes(compressed[: len(compressed) // 2])
    items = _read(path, "pile")  # no exception
    assert isinstance(items[-1], Skip) and items[-1].reason == "truncated zstd stream"
    docs = items[:-1]
    assert all(isinstance(d, Document) for d in docs)
    assert 1000 < len(docs) < 19000
    assert [d.location for d in docs] == list(range(1, len(docs) + 1))
    assert [d.text for d in docs] == [json.loads(line)["text"] for line in data.splitlines()[: len(docs)]]
    assert items[-1].location == len(docs) + 1


def test_corrupt_zst_is_a_skip(tmp_path):
    path = tmp_path / "garbage.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(_jsonl([{"text": "ok"}])) + b"not zstd at all")
    items = _read(path, "pile")
    assert items[0] == Document("ok", str(path), 1)
    assert items[1].location == 2 and items[1].reason.startswith("corrupt zstd stream")
    assert len(items) == 2


def test_truncated_gz_yields_lines_before_the_cut(tmp_path):
    data = _many_lines(20000)
    compressed = gzip.compress(data)
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(compressed[: len(compressed) // 2])
    items = _read(path, "pile")
    assert isinstance(items[-1], Skip) and items[-1].reason == "truncated gzip stream"
    docs = items[:-1]
    assert all(isinstance(d, Document) for d in docs) and len(docs) > 1000
    assert [d.location for d in docs] == list(range(1, len(docs) + 1))
    assert items[-1].location == len(docs) + 1


def test_not_gzip_is_a_skip(tmp_path):
    path = tmp_path / "fake.jsonl.gz"
    path.write_bytes(_jsonl([{"text": "plain"}]))
    assert _skips(_read(path, "pile"))[0][0] == 1
    assert _skips(_read(path, "pile"))[0][1].startswith("corrupt gzip stream")


# --- bad WuDao files ---------------------------------------------------------------------------


def test_wudao_object_instead_of_array(tmp_path):
    path = tmp_path / "obj.json"
    path.write_text('  {"title": "t", "content": "c"}')
    assert _read(path, "wudao") == [
        Skip(str(path), 0, "not a JSON array (WuDao files hold one array of records)")]


def test_wudao_empty_file(tmp_path):
    path = tmp_path / "empty.json"
    path.write_text("\n")
    [skip] = _read(path, "wudao")
    assert skip.location == 0 and skip.reason.startswith("not a JSON array")


def test_wudao_truncated_array(tmp_path):
    records = [{"title": f"t{i}", "content": "x" * 1000} for i in range(50)]
    text = json.dumps(records, indent=2)
    path = tmp_path / "cut.json"
    cut = text.index('"t30"')  # inside record 30
    path.write_text(text[:cut])
    items = _read(path, "wudao")
    assert [d.location for d in items[:-1]] == list(range(30))
    assert items[-1] == Skip(str(path), 30, "truncated JSON array after record 29")

    path.write_text(text[: text.index("{")])  # "[" and nothing else
    assert _read(path, "wudao") == [Skip(str(path), 0, "truncated JSON array before the first record")]


def test_wudao_bad_records_are_skipped_alone(tmp_path):
    path = tmp_path / "recs.json"
    path.write_text(json.dumps([
        {"title": "a", "content": "A"},
        {"title": "no content"},
        {"title": "b", "content": ""},
        "a string",
        {"title": "c", "content": 7},
        {"content": "D"},
    ], indent=1))
    items = _read(path, "wudao")
    assert [(d.text, d.location) for d in _docs(items)] == [("a\nA", 0), ("D", 5)]
    assert _skips(items) == [
        (1, "missing key 'content'"),
        (2, "empty text"),
        (3, "not a JSON object"),
        (4, "'content' is not a string"),
    ]


def test_wudao_malformed_json_stops_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[{"content": "a"}, {"content": "b" "x": 1}, {"content": "c"}]')
    items = _read(path, "wudao")
    assert items[0] == Document("a", str(path), 0)
    assert items[1].location == 1
    assert "malformed JSON in record 1" in items[1].reason and "rest of file skipped" in items[1].reason
    assert len(items) == 2


def test_wudao_invalid_utf8_stops_after_good_records(tmp_path):
    path = tmp_path / "latin.json"
    good = '[{"content": "正常"}, '.encode()
    path.write_bytes(good + b'{"content": "caf\xe9"}, {"content": "later"}]')
    items = _read(path, "wudao")
    assert items == [
        Document("正常", str(path), 0),
        Skip(str(path), 1, f"invalid UTF-8 at byte offset {len(good) + 16}"),
    ]


def test_wudao_runaway_record_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "_CHUNK", 1024)
    monkeypatch.setattr(readers, "_MAX_RECORD_CHARS", 4096)
    path = tmp_path / "runaway.json"
    path.write_text('[{"content": "ok"}, {"content": "no closing quote ' + "z" * 20000 + "}]")
    items = _read(path, "wudao")
    assert items[0] == Document("ok", str(path), 0)
    assert items[1].location == 1 and "still incomplete" in items[1].reason
    assert len(items) == 2


def test_wudao_trailing_data_is_reported(tmp_path):
    path = tmp_path / "two.json"
    path.write_text('[{"content": "a"}]\n[{"content": "b"}]')
    assert _read(path, "wudao") == [
        Document("a", str(path), 0),
        Skip(str(path), 1, "unexpected data after the closing ']' (ignored)"),
    ]


# --- unreadable input --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["pile", "wudao"])
def test_missing_file_and_directory_raise_unreadable(tmp_path, fmt):
    missing = tmp_path / "nope.jsonl.zst"
    with pytest.raises(UnreadableInput) as err:
        read_documents(str(missing), fmt)
    assert str(missing) in str(err.value)
    with pytest.raises(UnreadableInput) as err:
        list(read_documents(str(tmp_path), fmt))
    assert str(tmp_path) in str(err.value)


def test_file_removed_before_iteration_raises_unreadable(tmp_path):
    path = tmp_path / "gone.jsonl"
    path.write_bytes(_jsonl([{"text": "a"}]))
    documents = read_documents(str(path), "pile")
    path.unlink()
    with pytest.raises(UnreadableInput, match="gone.jsonl"):
        next(documents)
