"""Streaming reader: formats, hashes, and errors that name file, line and byte."""

from __future__ import annotations

import hashlib
import json

import pytest

from vicuna_cloud.data.reader import DataError, Reader


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
    ("bad.json", b'[{"id": 1},\n{"id": 2},\n{"id": 3,}]', "line 3, byte 3"),
    ("bad.jsonl", b'{"id": 1}\n{"id": \n', "line 2, byte 10"),
    ("trunc.json", b'[{"id": 1}, {"id"', "line 1"),
])
def test_invalid_json_names_file_line_and_byte(tmp_path, name, body, where):
    p = tmp_path / name
    p.write_bytes(body)
    with pytest.raises(DataError) as e:
        _read(p)
    msg = str(e.value)
    assert str(p) in msg and where in msg and "\n" not in msg


def test_invalid_json_byte_offset_points_at_the_error(tmp_path):
    body = b'[{"id": 1},\n{"id": 2},\n{"id": 3,}]'
    p = tmp_path / "x.json"
    p.write_bytes(body)
    with pytest.raises(DataError) as e:
        _read(p)
    offset = int(str(e.value).split("byte ")[1].split(":")[0])
    assert body.index(b",}") <= offset <= body.index(b",}") + 2


@pytest.mark.parametrize("name,body,words", [
    ("latin1.json", '[{"id": "caf\xe9"}]'.encode("latin-1"), "UTF-8"),
    ("latin1.jsonl", '{"id": "caf\xe9"}\n'.encode("latin-1"), "UTF-8"),
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
