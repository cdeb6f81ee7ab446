"""data_prep.readers: every format's happy path, bad records skipped with their exact location and
size, and damage that ends a file reported with where the readable data stops and what is lost."""

from __future__ import annotations

import gzip
import json
import os

import pytest
import zstandard

from data_prep import readers
from data_prep.readers import Damage, Document, Skip, UnreadableInput, guess_format, read_documents


def _jsonl(records) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records)


def _read(path, fmt, **kwargs):
    return list(read_documents(str(path), fmt, **kwargs))


def _docs(items):
    return [i for i in items if isinstance(i, Document)]


def _skips(items):
    return [(s.location, s.reason) for s in items if isinstance(s, Skip)]


def _damage(items) -> Damage:
    """The Damage that ends `items` (it must be the last item, and the only one)."""
    assert isinstance(items[-1], Damage) and not any(isinstance(i, Damage) for i in items[:-1]), items[-3:]
    return items[-1]


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
    assert counters == {"filtered": 3, "bytes": os.path.getsize(path)}

    counters = {"filtered": 10}
    items = _read(path, "pile", exclude_subsets=["Github"], counters=counters)
    assert [d.text for d in _docs(items)] == ["cc", "none", "arxiv"]
    assert counters["filtered"] == 12
    assert _skips(items) == []

    assert [d.text for d in _read(path, "pile", exclude_subsets=["Github"])] == ["cc", "none", "arxiv"]


def test_subsets_ignored_for_other_formats_and_unknown_format_rejected(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(_jsonl([{"text": "a", "meta": {"pile_set_name": "A"}}]))
    counters = {}
    items = _read(path, "jsonl", include_subsets=["B"], exclude_subsets=["A"], counters=counters)
    assert items == [Document("a", str(path), 1)] and counters["filtered"] == 0
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
    assert [s.size for s in items if isinstance(s, Skip)][:3] == [18, 17, 24]  # the line with its newline


def _many_lines(n):
    return _jsonl({"text": f"line {i} " + "lorem ipsum " * (i % 7)} for i in range(n))


def _read_bytes_of(data: bytes, docs) -> int:
    """Bytes of `data` up to the end of the line of the last of `docs`."""
    return sum(len(line) + 1 for line in data.split(b"\n")[: len(docs)])


def test_truncated_zst_yields_lines_before_the_cut(tmp_path):
    data = _many_lines(20000)
    compressed = zstandard.ZstdCompressor(level=1).compress(data)
    path = tmp_path / "cut.jsonl.zst"
    path.write_bytes(compressed[: len(compressed) // 2])
    items = _read(path, "pile")  # no exception
    damage = _damage(items)
    assert damage.reason == "truncated zstd stream" and damage.cut_short and damage.unread == 0
    docs = items[:-1]
    assert all(isinstance(d, Document) for d in docs)
    assert 1000 < len(docs) < 19000
    assert [d.location for d in docs] == list(range(1, len(docs) + 1))
    assert [d.text for d in docs] == [json.loads(line)["text"] for line in data.splitlines()[: len(docs)]]
    assert damage.location == len(docs) + 1
    assert damage.offset == _read_bytes_of(data, docs)  # decompressed bytes of the lines read


def test_corrupt_zst_is_damage(tmp_path):
    path = tmp_path / "garbage.jsonl.zst"
    good = _jsonl([{"text": "ok"}])
    path.write_bytes(zstandard.ZstdCompressor().compress(good) + b"not zstd at all")
    items = _read(path, "pile")
    assert items[0] == Document("ok", str(path), 1)
    damage = _damage(items)
    assert damage.location == 2 and damage.reason.startswith("corrupt zstd stream")
    assert damage.offset == len(good) and not damage.cut_short
    assert len(items) == 2


def test_truncated_gz_yields_lines_before_the_cut(tmp_path):
    data = _many_lines(20000)
    compressed = gzip.compress(data)
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(compressed[: len(compressed) // 2])
    items = _read(path, "pile")
    damage = _damage(items)
    assert damage.reason == "truncated gzip stream" and damage.cut_short
    docs = items[:-1]
    assert all(isinstance(d, Document) for d in docs) and len(docs) > 1000
    assert [d.location for d in docs] == list(range(1, len(docs) + 1))
    assert damage.location == len(docs) + 1 and damage.offset == _read_bytes_of(data, docs)


def test_corrupt_zst_in_the_middle_estimates_what_is_unread(tmp_path):
    """A frame header overwritten mid-file: the rest is on disk but cannot be decoded; its size
    after decompression is estimated from the compression ratio so far."""
    parts = [_many_lines(20000) for _ in range(4)]
    frames = [zstandard.ZstdCompressor(level=1).compress(part) for part in parts]
    frames[2] = b"\0\0\0\0" + frames[2][4:]
    path = tmp_path / "flipped.jsonl.zst"
    path.write_bytes(b"".join(frames))
    items = _read(path, "pile")
    damage = _damage(items)
    assert damage.reason.startswith("corrupt zstd stream") and not damage.cut_short
    assert len(_docs(items)) == 40000 and damage.offset == len(parts[0]) + len(parts[1])
    lost = len(parts[2]) + len(parts[3])
    assert 0.5 * lost < damage.unread < 1.5 * lost, (damage, lost)


def test_not_gzip_is_damage_at_byte_0(tmp_path):
    path = tmp_path / "fake.jsonl.gz"
    path.write_bytes(_jsonl([{"text": "plain"}]))
    damage = _damage(_read(path, "pile"))
    assert (damage.location, damage.offset) == (1, 0) and damage.reason.startswith("corrupt gzip stream")
    assert damage.unread == os.path.getsize(path)  # nothing decoded: the whole file is lost


@pytest.mark.parametrize("content", [b"", b"\n  \n", gzip.compress(b""), zstandard.ZstdCompressor().compress(b"")])
def test_empty_file_is_damage(tmp_path, content):
    """No record at all is what an interrupted download or copy leaves: not an empty corpus."""
    suffix = ".jsonl.gz" if content[:2] == b"\x1f\x8b" else ".jsonl.zst" if content[:4] == b"(\xb5/\xfd" else ".jsonl"
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(content)
    [damage] = _read(path, "pile")
    assert damage.reason.startswith("the file is empty") and damage.cut_short and damage.offset == 0


def test_plain_jsonl_cut_inside_its_last_record_is_damage(tmp_path):
    path = tmp_path / "cut.jsonl"
    whole = _jsonl([{"text": "one"}, {"text": "two"}])
    path.write_bytes(whole + b'{"text": "thr')
    items = _read(path, "pile")
    assert [d.text for d in _docs(items)] == ["one", "two"]
    damage = _damage(items)
    assert (damage.location, damage.offset, damage.unread, damage.cut_short) == (3, len(whole), 0, True)
    assert "ends inside a record" in damage.reason
    path.write_bytes(whole + b'{"text": "three"}')  # a complete last record without a newline is fine
    assert [d.text for d in _read(path, "pile")] == ["one", "two", "three"]


class _BadSector:
    """A stream that returns `first` and then fails as a disk with a bad sector does."""

    def __init__(self, first: bytes):
        self.first = first

    def read1(self, size: int) -> bytes:
        if self.first is None:
            raise OSError(5, "Input/output error")
        block, self.first = self.first, None
        return block

    def close(self) -> None:
        pass


def test_read_error_is_damage_after_the_data_before_it(tmp_path, monkeypatch):
    path = tmp_path / "eio.jsonl"
    good = _jsonl(_pile_records(3))
    path.write_bytes(good + _jsonl(_pile_records(2)))
    opened = readers._Input.__init__

    def open_then_fail(self, name):
        opened(self, name)
        self.stream = _BadSector(self.raw.read(len(good)))

    monkeypatch.setattr(readers._Input, "__init__", open_then_fail)
    items = _read(path, "pile")
    assert [d.text for d in _docs(items)] == ["document 0", "document 1", "document 2"]
    damage = _damage(items)
    assert damage.reason == "read error: Input/output error" and damage.offset == len(good)
    assert damage.unread == os.path.getsize(path) - len(good) and not damage.cut_short


# --- bad WuDao files ---------------------------------------------------------------------------


def test_wudao_object_instead_of_array(tmp_path):
    """The demo's records wrapped in an object: the whole file is lost, not one record."""
    path = tmp_path / "obj.json"
    path.write_text('  {"data": [{"title": "t", "content": "c"}]}')
    assert _read(path, "wudao") == [
        Damage(str(path), 0, "not a JSON array (WuDao files hold one array of records); it starts with '{'",
               offset=2, unread=0, cut_short=False)]


def test_wudao_object_instead_of_array_in_a_big_file_counts_what_was_not_read(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "_CHUNK", 1024)
    path = tmp_path / "obj.json"
    path.write_text(json.dumps({"data": [{"content": "x" * 100}] * 100}))
    damage = _damage(_read(path, "wudao"))
    assert (damage.offset, damage.unread) == (0, os.path.getsize(path) - 1024)


def test_wudao_empty_file(tmp_path):
    path = tmp_path / "empty.json"
    path.write_text("\n")
    [damage] = _read(path, "wudao")
    assert damage.location == 0 and damage.reason.startswith("the file is empty") and damage.cut_short


def test_wudao_truncated_array(tmp_path):
    records = [{"title": f"t{i}", "content": "x" * 1000} for i in range(50)]
    text = json.dumps(records, indent=2)
    path = tmp_path / "cut.json"
    cut = text.index('"t30"')  # inside record 30
    path.write_text(text[:cut])
    items = _read(path, "wudao")
    assert [d.location for d in items[:-1]] == list(range(30))
    record_30 = text.rindex("{", 0, cut)
    assert items[-1] == Damage(str(path), 30, "truncated JSON array after record 29", offset=record_30,
                               unread=0, cut_short=True)

    path.write_text(text[: text.index("{")])  # "[" and nothing else
    assert _read(path, "wudao") == [Damage(str(path), 0, "truncated JSON array before the first record",
                                           offset=text.index("{"), unread=0, cut_short=True)]


def test_wudao_bad_records_are_skipped_alone(tmp_path):
    path = tmp_path / "recs.json"
    records = [
        {"title": "a", "content": "A"},
        {"title": "no content"},
        {"title": "b", "content": ""},
        "a string",
        {"title": "c", "content": 7},
        {"content": "D"},
    ]
    path.write_text(json.dumps(records, indent=1))
    items = _read(path, "wudao")
    assert [(d.text, d.location) for d in _docs(items)] == [("a\nA", 0), ("D", 5)]
    nested = [json.dumps(r, indent=1).replace("\n", "\n ").encode() for r in records]  # as inside the array
    assert [s.size for s in items if isinstance(s, Skip)] == [len(nested[i]) for i in (1, 2, 3, 4)]
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
    damage = _damage(items)
    assert damage.location == 1 and damage.offset == len('[{"content": "a"}, ')
    assert "malformed JSON in record 1" in damage.reason and "rest of file skipped" in damage.reason
    assert damage.unread == 0 and len(items) == 2  # the small file was read whole (one chunk)


def test_wudao_invalid_utf8_stops_after_good_records(tmp_path):
    path = tmp_path / "latin.json"
    good = '[{"content": "正常"}, '.encode()
    path.write_bytes(good + b'{"content": "caf\xe9"}, {"content": "later"}]')
    items = _read(path, "wudao")
    assert items == [
        Document("正常", str(path), 0),
        Damage(str(path), 1, f"invalid UTF-8 at byte offset {len(good) + 16}", offset=len(good), unread=0,
               cut_short=False),
    ]


def test_wudao_runaway_record_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "_CHUNK", 1024)
    monkeypatch.setattr(readers, "_MAX_RECORD_CHARS", 4096)
    path = tmp_path / "runaway.json"
    path.write_text('[{"content": "ok"}, {"content": "no closing quote ' + "z" * 20000 + "}]")
    items = _read(path, "wudao")
    assert items[0] == Document("ok", str(path), 0)
    assert _damage(items).location == 1 and "still incomplete" in items[1].reason
    assert len(items) == 2


def test_wudao_trailing_data_is_reported(tmp_path):
    path = tmp_path / "two.json"
    path.write_text('[{"content": "a"}]\n[{"content": "b"}]')
    assert _read(path, "wudao") == [
        Document("a", str(path), 0),
        Damage(str(path), 1, "unexpected data after the closing ']' (not read)", offset=19, unread=0,
               cut_short=False),
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
