"""Streaming readers for raw conversation files (a JSON array or JSON Lines).

A 2 GB dump is read item by item (ijson's C backend for arrays, one line at a time for
JSONL), so memory stays flat. Each file is hashed while it is read (the manifest records
input sha256s without a second pass). Errors name the file and the line and byte offset.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterator

import ijson
import orjson
from vicuna_cloud import errors


class DataError(errors.DataError):
    """Bad input data: the message says which file, where, and how to fix it."""


@dataclass
class InputFile:
    path: str
    sha256: str = ""
    bytes: int = 0
    conversations: int = 0


class _HashingReader:
    """File wrapper that hashes and counts bytes as a parser pulls them."""

    def __init__(self, f):
        self.f = f
        self.h = hashlib.sha256()
        self.pos = 0
        self.last_chunk = b""
        self.last_start = 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.h.update(data)
        self.last_start = self.pos
        self.last_chunk = data
        self.pos += len(data)
        return data


def _detect_format(path: str, head: bytes) -> str:
    if path.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not stripped:
        raise DataError(f"{path}: the file is empty; give a JSON array or JSONL of conversations")
    if stripped[:1] == b"[":
        return "json"
    if stripped[:1] == b"{":
        return "jsonl"
    raise DataError(
        f"{path}: not JSON (starts with {stripped[:20]!r}); give a JSON array "
        "[{\"id\", \"conversations\"}, ...] or JSON Lines"
    )


def _line_of(path: str, offset: int) -> int:
    line = 1
    with open(path, "rb") as f:
        remaining = offset
        while remaining > 0:
            chunk = f.read(min(remaining, 1 << 20))
            if not chunk:
                break
            line += chunk.count(b"\n")
            remaining -= len(chunk)
    return line


def _locate_ijson_error(reader: _HashingReader, message: str, encoding: str = "utf-8") -> int:
    """Best byte offset for a yajl error: find its context snippet in the last buffer.

    yajl prints up to 30 bytes either side of the error (newlines shown as spaces) and a
    caret line under it; we find that snippet in the buffer the parser was reading.
    """
    lines = message.split("\n")
    for i in range(1, len(lines)):
        if "(right here)" in lines[i] and lines[i].rstrip().endswith("^"):
            snippet_line = lines[i - 1]
            caret_col = len(lines[i].rstrip()) - 1
            indent = len(snippet_line) - len(snippet_line.lstrip(" "))
            snippet = snippet_line[indent:]
            caret = max(0, caret_col - indent)
            try:
                left = snippet[:caret].encode(encoding)
            except UnicodeEncodeError:
                break
            chunk = reader.last_chunk.translate(_WS_TO_SPACE)
            for probe in (left, left[-12:], left[-6:]):
                idx = chunk.rfind(probe) if probe else -1
                if idx >= 0:
                    return reader.last_start + idx + len(probe)
            break
    return reader.last_start


_WS_TO_SPACE = bytes.maketrans(b"\n\r\t", b"   ")


def iter_file(path: str, info: InputFile) -> Iterator[tuple[int, Any]]:
    """Yield ``(index, item)`` for each conversation-level item; fill ``info`` at the end."""
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory; give a .json or .jsonl file")
    with open(path, "rb") as raw:
        head = raw.read(4096)
        raw.seek(0)
        fmt = _detect_format(path, head)
        reader = _HashingReader(raw)
        n = 0
        if fmt == "json":
            try:
                for item in ijson.items(reader, "item", use_float=True):
                    info.bytes = reader.pos  # live, for progress bars
                    yield n, item
                    n += 1
            except ijson.JSONError as e:
                msg, enc = str(e), "utf-8"
                if msg.startswith("b'") or msg.startswith('b"'):
                    # bytes repr: \xNN escapes map back to raw bytes through latin-1
                    msg = msg[2:-1].encode().decode("unicode_escape", "replace")
                    enc = "latin-1"
                offset = _locate_ijson_error(reader, msg, enc)
                first = msg.strip().splitlines()[0] if msg.strip() else "invalid JSON"
                hint = ("save the file as UTF-8" if "UTF8" in first
                        else "fix or truncate the file at that point")
                raise DataError(
                    f"{path}: line {_line_of(path, offset)}, byte {offset}: {first}; {hint}"
                ) from None
        else:
            for lineno, line in enumerate(iter(lambda: reader.f.readline(), b""), start=1):
                reader.h.update(line)
                offset = reader.pos
                reader.pos += len(line)
                if not line.strip():
                    continue
                try:
                    item = orjson.loads(line)
                except orjson.JSONDecodeError as e:
                    item = _lenient(line)  # e.g. a "\ud800" escape: the filters drop it
                    if item is not _INVALID:
                        yield n, item
                        n += 1
                        continue
                    what = "not valid UTF-8" if "utf-8" in str(e).lower() else str(e)
                    raise DataError(
                        f"{path}: line {lineno}, byte {offset}: invalid JSON ({what}); "
                        "each line of a .jsonl file must be one JSON object"
                    ) from None
                info.bytes = reader.pos
                yield n, item
                n += 1
        rest = raw.read(1 << 20)
        while rest:  # trailing bytes after the array (whitespace) still count in the hash
            reader.h.update(rest)
            reader.pos += len(rest)
            rest = raw.read(1 << 20)
        info.sha256 = reader.h.hexdigest()
        info.bytes = reader.pos
        info.conversations = n


_INVALID = object()


def _lenient(line: bytes) -> Any:
    """The stdlib parser accepts lone surrogate escapes that orjson refuses."""
    import json

    try:
        return json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return _INVALID


@dataclass
class Reader:
    """Reads several files in order; ``files`` holds their hashes once exhausted."""

    paths: list[str]
    files: list[InputFile] = field(default_factory=list)

    def __iter__(self) -> Iterator[tuple[str, int, Any]]:
        self.files = []
        for path in self.paths:
            info = InputFile(path=os.path.abspath(path))
            self.files.append(info)
            for idx, item in iter_file(path, info):
                yield path, idx, item
