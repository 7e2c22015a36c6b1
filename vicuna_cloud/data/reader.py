"""Streaming readers for raw conversation files (a JSON array or JSON Lines).

Memory is bounded whatever the input: a byte-level scanner (regexes in C; state is a few
integers, never a stack) cuts the file into records, the top-level elements of the array
or the lines of a JSONL file, and only a record of at most ``max_record_bytes`` is ever
held and parsed (orjson). Nesting depth costs nothing to scan; a record nested deeper than
the parser allows is dropped as ``too_deep``, a longer one is skipped without being held
(``too_large``). So peak memory is O(max_record_bytes) (README, "Data"), for a 2 GB dump,
a 200 MB single line or a 400 KB run of ``[``.

Both formats treat a record the same way: the same bytes give the same conversation or
the same drop reason (``Malformed``), counted by the pipeline like every filter's drops:
invalid_json, invalid_utf8, too_deep, too_large. Only a break in the file's own structure
(text between array elements, a file that ends inside a record) is a DataError naming the
file, line and byte: after it there is no next record to find. A UTF-8 byte-order mark is
skipped. Each file is hashed while it is read (the manifest records input sha256s).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Iterator, Optional

import orjson

from vicuna_cloud import errors


class DataError(errors.DataError):
    """Bad input data: the message says which file, where, and how to fix it."""


#: Default cap on one record (one conversation) in bytes; larger records are dropped.
DEFAULT_MAX_RECORD_BYTES = 16 << 20
CHUNK = 1 << 20
BOM = b"\xef\xbb\xbf"
MALFORMED_REASONS = ("invalid_json", "invalid_utf8", "too_deep", "too_large")


@dataclass(frozen=True)
class Malformed:
    """A record that is not a JSON value we can use; the pipeline counts it as a drop."""

    reason: str   # one of MALFORMED_REASONS
    where: str    # "file: line L, byte B"
    detail: str = ""


@dataclass
class InputFile:
    path: str
    sha256: str = ""
    bytes: int = 0
    conversations: int = 0


_OBJ_END = re.compile(rb"\}(?=[ \t\r\n]*[,\]])")
_STRUCT = re.compile(rb'["\[\]{}]')
_STR_BODY = re.compile(rb'(?:[^"\\]++|\\.)*+', re.S)
# Anything but brackets (whole strings included, brackets inside them too), then a bracket.
_TO_BRACKET = re.compile(rb'(?:[^"\[\]{}]++|"(?:[^"\\]++|\\.)*+")*+[\[\]{}]', re.S)
_SCALAR_END = re.compile(rb'[,\]\s]')
_NOT_WS = re.compile(rb"[^ \t\r\n]")


def _detect_format(path: str, head: bytes) -> str:
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(f"{path}: the file is UTF-16; save it as UTF-8")
    if path.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    stripped = head[len(BOM):] if head.startswith(BOM) else head
    stripped = stripped.lstrip(b" \t\r\n")
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


def parse_record(raw: bytes, where: str) -> Any:
    """One record's bytes -> its value, or a Malformed with the reason."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        msg = str(e)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as u:
        return Malformed("invalid_utf8", where, f"byte {u.start} of the record is not UTF-8")
    if "recursion" in msg.lower():
        return Malformed("too_deep", where, "nested deeper than 1024 levels")
    try:  # the stdlib accepts lone surrogate escapes orjson refuses; the filters drop them
        return json.loads(text)
    except RecursionError:
        return Malformed("too_deep", where, "nested too deeply")
    except ValueError as e:
        return Malformed("invalid_json", where, str(e).splitlines()[0][:200])


class _Scanner:
    """A window over the file: ``buf`` holds bytes from file offset ``off``. Indices into
    ``buf`` shift down by ``keep`` at each ``refill(keep)``; nothing before ``keep`` is held."""

    def __init__(self, f: BinaryIO, path: str, max_record_bytes: int):
        self.f, self.path, self.max = f, path, max_record_bytes
        self.h = hashlib.sha256()
        self.buf = b""
        self.off = 0
        self.eof = False
        self._line_i, self._line = 0, 1  # line number at buf[_line_i] (counted lazily)

    @property
    def pos(self) -> int:
        """Bytes read from the file so far (for progress)."""
        return self.off + len(self.buf)

    def refill(self, keep: int) -> bool:
        """Forget ``buf[:keep]``, read one more chunk; False at the end of the file."""
        if keep:
            self.where(keep)  # bring the line count up to keep
            self.buf = self.buf[keep:]
            self.off += keep
            self._line_i = 0
        if self.eof:
            return False
        data = self.f.read(CHUNK)
        if not data:
            self.eof = True
            return False
        self.h.update(data)
        self.buf = self.buf + data if self.buf else data
        return True

    def where(self, i: int) -> str:
        if i < self._line_i:
            self._line_i, self._line = 0, self._line - self.buf.count(b"\n", 0, self._line_i)
        self._line += self.buf.count(b"\n", self._line_i, i)
        self._line_i = i
        return f"{self.path}: line {self._line}, byte {self.off + i}"

    def skip_ws(self, i: int) -> int:
        """Index of the next non-whitespace byte at or after ``i``; len(buf) at EOF."""
        while True:
            m = _NOT_WS.search(self.buf, i)
            if m:
                return m.start()
            i = len(self.buf)
            if not self.refill(i):
                return len(self.buf)
            i = 0

    def error(self, i: int, what: str) -> DataError:
        return DataError(f"{self.where(i)}: {what}; fix or truncate the file at that point")


def _scan_value(s: _Scanner, p: int) -> tuple[Optional[bytes], int]:
    """Scan the value starting at ``s.buf[p]``: (its bytes, or None when over the limit;
    the end index). Raises DataError if the file ends inside it."""
    c = s.buf[p:p + 1]
    if c == b'"':
        return _scan_slow(s, p, p + 1, 0, True)
    if c not in (b"{", b"["):  # a number or literal: up to the next , ] or space
        while True:
            m = _SCALAR_END.search(s.buf, p)
            if m or s.eof or len(s.buf) - p > s.max:
                end = m.start() if m else len(s.buf)
                return (s.buf[p:end] if end - p <= s.max else None), end
            s.refill(p)
            p = 0
    # Fast path: one regex match runs from bracket to bracket over any strings between.
    i, depth = p, 0
    while True:
        m = _TO_BRACKET.match(s.buf, i)
        if m:
            i = m.end()
            if s.buf[i - 1] in (0x5B, 0x7B):
                depth += 1
            else:
                depth -= 1
                if depth == 0:
                    return (s.buf[p:i] if i - p <= s.max else None), i
            continue
        if len(s.buf) - p > s.max:  # over the limit: let its bytes go, keep the state
            return _scan_slow(s, p, i, depth, False)
        more = s.refill(p)
        i, p = i - p, 0
        if not more:
            raise s.error(i, "the file ends inside a record (truncated?)")


def _scan_slow(s: _Scanner, p: int, i: int, depth: int, in_str: bool) -> tuple[Optional[bytes], int]:
    """The same scan one token at a time, able to stop anywhere (inside a string too), so
    a value of any size is read in bounded memory: ``s.buf`` keeps only what is unread."""
    start_off = s.off + p
    held = s.off + len(s.buf) - start_off <= s.max
    while True:
        if in_str:
            e = _STR_BODY.match(s.buf, i).end()
            if e < len(s.buf) and s.buf[e] == 0x22:  # the closing quote
                i, in_str = e + 1, False
                if depth == 0:
                    return (s.buf[p:i] if held and i - p <= s.max else None), i
                continue
            i = e  # the buffer ends inside the string (maybe just before a backslash)
        else:
            m = _STRUCT.search(s.buf, i)
            if m:
                ch = s.buf[m.start()]
                i = m.end()
                if ch == 0x22:
                    in_str = True
                elif ch in (0x5B, 0x7B):
                    depth += 1
                else:
                    depth -= 1
                    if depth == 0:
                        return (s.buf[p:i] if held and i - p <= s.max else None), i
                continue
            i = len(s.buf)
        if held and s.off + i - start_off > s.max:
            held = False
        keep = p if held else i  # an oversize value keeps no bytes, only its scan state
        if not s.refill(keep):
            raise s.error(i - keep, "the file ends inside a record (truncated?)")
        i -= keep
        p = 0


def _fast_object(s: _Scanner, p: int) -> tuple[bool, Any, int]:
    """(True, value, end) of the object at ``s.buf[p]`` when it is valid JSON, found at C
    speed: a ``}`` followed by ``,`` or ``]`` where the braces and brackets so far balance
    is a candidate end, and the first candidate at which orjson parses ``buf[p:end]`` is
    the end the exact scan would find (a valid JSON object has no proper prefix that is
    one). (False, None, start) -- use the exact scan from ``start``, as the buffer may have
    moved -- after a few failed candidates, past the size limit, or at the end of the file."""
    i, tries, balance = p, 0, [0, 0]
    for _ in range(256):
        m = _OBJ_END.search(s.buf, i)
        while m is None:
            if s.eof or len(s.buf) - p > s.max:
                return False, None, p
            more = s.refill(p)
            i, p = i - p, 0
            if not more:
                return False, None, p
            m = _OBJ_END.search(s.buf, i)
        end = m.end()
        if end - p > s.max:
            return False, None, p
        b = s.buf
        balance[0] += b.count(b"{", i, end) - b.count(b"}", i, end)
        balance[1] += b.count(b"[", i, end) - b.count(b"]", i, end)
        i = end
        if balance != [0, 0]:
            continue
        try:
            return True, orjson.loads(b[p:end]), end
        except orjson.JSONDecodeError:
            tries += 1
            if tries >= 4:
                break
    return False, None, p


def _too_large(s: _Scanner, where: str) -> Malformed:
    return Malformed("too_large", where, f"record over {s.max} bytes (see --max-record-mb)")


def _json_records(s: _Scanner) -> Iterator[Any]:
    i = s.skip_ws(0)
    if s.buf[i:i + 1] != b"[":
        raise s.error(i, "expected '[' to open the array")
    i = s.skip_ws(i + 1)
    if s.buf[i:i + 1] == b"]":
        i += 1
    else:
        while True:
            if i >= len(s.buf):
                raise s.error(i, "the file ends inside the array (truncated?)")
            ok, value, i = _fast_object(s, i) if s.buf[i] == 0x7B else (False, None, i)
            if ok:
                yield value
            else:
                where = s.where(i)
                raw, i = _scan_value(s, i)
                yield _too_large(s, where) if raw is None else parse_record(raw, where)
            i = s.skip_ws(i)
            ch = s.buf[i:i + 1]
            if ch == b"]":
                i += 1
                break
            if ch != b",":
                raise s.error(i, "expected ',' or ']' after an array element"
                              if ch else "the file ends inside the array (truncated?)")
            i = s.skip_ws(i + 1)
            if s.buf[i:i + 1] == b"]":
                raise s.error(i, "a ',' right before ']' (trailing comma)")
    i = s.skip_ws(i)
    if i < len(s.buf):
        raise s.error(i, "data after the closing ']'")


def _jsonl_records(s: _Scanner) -> Iterator[Any]:
    start = searched = 0
    held = True
    where = ""
    while True:
        nl = s.buf.find(b"\n", searched)
        if nl < 0:
            if held and len(s.buf) - start > s.max:
                held, where = False, s.where(start)
            keep = len(s.buf) if not held else start
            searched = len(s.buf) - keep
            more = s.refill(keep)
            start = 0
            if more:
                continue
            if not held:
                yield _too_large(s, where)
                return
            if not s.buf.strip():
                return
            nl = len(s.buf)
        if not held or nl - start > s.max:
            yield _too_large(s, where if not held else s.where(start))
        else:
            line = s.buf[start:nl].strip(b" \t\r")
            if line:
                yield parse_record(line, s.where(start))
        start = searched = nl + 1
        held = True
        if nl >= len(s.buf):
            return


def iter_file(path: str, info: InputFile,
              max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Iterator[tuple[int, Any]]:
    """Yield ``(index, item)`` per record (item may be a Malformed); fill ``info`` at the end."""
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory; give a .json or .jsonl file")
    with open(path, "rb") as raw:
        fmt = _detect_format(path, raw.read(4096))
        raw.seek(0)
        s = _Scanner(raw, path, max_record_bytes)
        s.refill(0)
        if s.buf.startswith(BOM):
            s.refill(len(BOM))
        records = _json_records(s) if fmt == "json" else _jsonl_records(s)
        n = 0
        for item in records:
            info.bytes = s.pos  # live, for progress bars
            yield n, item
            n += 1
        while s.refill(len(s.buf)):  # anything left still counts in the hash
            pass
        info.sha256 = s.h.hexdigest()
        info.bytes = s.pos
        info.conversations = n


@dataclass
class Reader:
    """Reads several files in order; ``files`` holds their hashes once exhausted."""

    paths: list[str]
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    files: list[InputFile] = field(default_factory=list)

    def __iter__(self) -> Iterator[tuple[str, int, Any]]:
        self.files = []
        for path in self.paths:
            info = InputFile(path=os.path.abspath(path))
            self.files.append(info)
            for idx, item in iter_file(path, info, self.max_record_bytes):
                yield path, idx, item
