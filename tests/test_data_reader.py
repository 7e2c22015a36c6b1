"""Streaming reader: formats, hashes, and errors that name file, line and byte."""

from __future__ import annotations

import hashlib
import json

import tracemalloc

import pytest

from vicuna_cloud.data.reader import DataError, InputFile, Malformed, Reader, iter_file


def _read(path):
    r = Reader([str(path)])
    return [item for _, _, item in r], r.files[0]


def test_json_and_jsonl_read_alike_with_sha256(tmp_path):
    items = [{"id": str(i), "conversations": []} for i in range(5)]
    a = tmp_path / "a.json"
    a.write_text(json.dumps(items, indent=1))
    b = tmp_path / "b.jsonl"
    b.write_text("\n".join(json.dumps(x) for x in items) + "\n\n")
    for p in (a, b):
        got, info = _read(p)
        assert got == items
        assert info.sha256 == hashlib.sha256(p.read_bytes()).hexdigest()
        assert info.bytes == p.stat().st_size and info.conversations == 5


@pytest.mark.parametrize("name,body,where", [
    ("bad.json", b'[{"id": 1},\n{"id": 2} x\n{"id": 3}]', "line 2, byte 22"),
    ("trunc.json", b'[{"id": 1}, {"id"', "line 1"),
    ("comma.json", b'[{"id": 1},\n]', "line 2"),
    ("after.json", b'[{"id": 1}]\n[]', "line 2"),
])
def test_broken_array_structure_names_file_line_and_byte(tmp_path, name, body, where):
    """Only a break in the file's own structure is an error: no next record to find."""
    p = tmp_path / name
    p.write_bytes(body)
    with pytest.raises(DataError) as e:
        _read(p)
    msg = str(e.value)
    assert str(p) in msg and where in msg and "\n" not in msg


DEEP = b"[" * 200_000 + b"]" * 200_000
RECORDS = [  # (raw record bytes, expected reason or the parsed value)
    (b'{"id": "ok", "conversations": []}', {"id": "ok", "conversations": []}),
    (b'{"id": 3,}', "invalid_json"),
    ('{"id": "caf\xe9"}'.encode("latin-1"), "invalid_utf8"),
    (b'{"id": "\\ud800"}', {"id": "\ud800"}),   # a lone surrogate: the filters drop it
    (b'{"a": ' + b"[" * 2000 + b"]" * 2000 + b"}", "too_deep"),
    (b'{"id": "' + b"x" * 5000 + b'"}', "too_large"),
    (b'{"id": "after"}', {"id": "after"}),
]


def _outcomes(items):
    return [x.reason if isinstance(x, Malformed) else x for x in items]


def test_malformed_records_are_drops_the_same_in_json_and_jsonl(tmp_path):
    """Issue 14 #8: a bad record is one counted drop, in either format; the rest is read."""
    want = [w for _, w in RECORDS]
    a = tmp_path / "a.json"
    a.write_bytes(b"\xef\xbb\xbf[\n" + b",\n".join(r for r, _ in RECORDS) + b"\n]\n")
    b = tmp_path / "b.jsonl"
    b.write_bytes(b"\xef\xbb\xbf" + b"\n".join(r for r, _ in RECORDS) + b"\n\x00\n")
    got_a = list(iter_file(str(a), InputFile(str(a)), max_record_bytes=4096))
    got_b = list(iter_file(str(b), InputFile(str(b)), max_record_bytes=4096))
    assert _outcomes(x for _, x in got_a) == want
    assert _outcomes(x for _, x in got_b) == want + ["invalid_json"]  # the NUL line
    bad = [x for _, x in got_b if isinstance(x, Malformed)]
    assert bad[0].where.endswith("line 2, byte 37") and str(b) in bad[0].where


@pytest.mark.parametrize("name", ["deep.json", "deep.jsonl"])
def test_deep_nesting_is_one_drop_not_a_crash(tmp_path, name):
    """Issue 14 #8: 400 KB of nested arrays took 23.6 GB (JSON) or a RecursionError (JSONL)."""
    p = tmp_path / name
    p.write_bytes(b"[" + DEEP + b"]" if name.endswith(".json") else DEEP + b"\n{}\n")
    got = _outcomes(x for _, x in iter_file(str(p), InputFile(str(p))))
    assert got == (["too_deep"] if name.endswith(".json") else ["too_deep", {}])


@pytest.mark.parametrize("name", ["big.json", "big.jsonl"])
def test_oversize_record_is_skipped_in_bounded_memory(tmp_path, name):
    """Issue 14 #8: a 200 MB line peaked at 4 GB. Here 40 MB, a 1 MB limit: < 8 MB peak."""
    big = b'{"id": "' + b"a\\\"" * (40 << 18) + b'"}'
    p = tmp_path / name
    with open(p, "wb") as f:
        if name.endswith(".json"):
            f.write(b"[" + big + b",\n{\"id\": \"next\"}]")
        else:
            f.write(big + b"\n{\"id\": \"next\"}\n")
    tracemalloc.start()
    try:
        got = _outcomes(x for _, x in iter_file(str(p), InputFile(str(p)),
                                                max_record_bytes=1 << 20))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got == ["too_large", {"id": "next"}]
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB"


@pytest.mark.parametrize("name,body,words", [
    ("latin1.json", '[{"id": "caf\xe9"}'.encode("latin-1"), "ends inside"),
    ("utf16.json", '[{"id": 1}]'.encode("utf-16"), "UTF-16"),
    ("empty.json", b"", "empty"),
    ("blank.json", b"  \n ", "empty"),
    ("text.json", b"hello world", "not JSON"),
])
def test_non_utf8_empty_and_non_json(tmp_path, name, body, words):
    p = tmp_path / name
    p.write_bytes(body)
    with pytest.raises(DataError, match=words):
        _read(p)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        _read(tmp_path / "nope.json")
    with pytest.raises(DataError, match="directory"):
        _read(tmp_path)
