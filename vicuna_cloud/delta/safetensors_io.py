"""Reading and writing safetensors files tensor by tensor, without loading a model.

The format (facts from the safetensors specification): 8 bytes little-endian header length
N, then N bytes of UTF-8 JSON (``{name: {dtype, shape, data_offsets: [begin, end]}, ...,
"__metadata__": {...}}``, possibly padded with spaces), then the raw little-endian tensor
bytes, offsets relative to the end of the header. Everything here works on those raw bytes
with numpy and fixed-size buffers, so memory stays at a few chunks whatever the model size,
and the control plane stays torch-free.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from typing import BinaryIO, Iterator, Mapping

#: Bytes per element of every safetensors dtype.
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8,
}
#: The unsigned integer dtype of each width: deltas are bit-pattern differences in it.
UINT_OF_WIDTH = {1: "U8", 2: "U16", 4: "U32", 8: "U64"}
#: Largest header we accept (the format's own limit is 100 MB).
MAX_HEADER_BYTES = 100_000_000
CHUNK_BYTES = 16 * 1024 * 1024  # multiple of 8: whole elements of every dtype


class SafetensorsError(ValueError):
    """A file that is not a readable safetensors file."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute file offsets
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def width(self) -> int:
        return DTYPE_SIZES[self.dtype]


@dataclass(frozen=True)
class SafetensorsFile:
    path: str
    header_bytes: bytes  # the JSON header exactly as stored (padding included)
    metadata: Mapping[str, str]
    tensors: tuple[TensorInfo, ...]  # in file order

    def by_name(self) -> dict[str, TensorInfo]:
        return {t.name: t for t in self.tensors}


def read_header(path: str) -> SafetensorsFile:
    """Parse a file's header (reads only the header, never the tensors)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise SafetensorsError(f"{path} is too short to be a safetensors file")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES:
                raise SafetensorsError(f"{path}: header of {n} bytes; not a safetensors file")
            raw = f.read(n)
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise SafetensorsError(f"cannot read {path}: {e.strerror}") from None
    return parse_header(raw, path, size)


def parse_header(raw: bytes, path: str, size: int | None = None) -> SafetensorsFile:
    """Tensors of a header given as bytes (``size``: the file's size, checked if given)."""
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SafetensorsError(f"{path}: the header is not JSON; not a safetensors file") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: the header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    start = 8 + len(raw)
    tensors = []
    for name, entry in header.items():
        try:
            dtype, shape = entry["dtype"], tuple(int(d) for d in entry["shape"])
            b, e = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise SafetensorsError(f"{path}: malformed header entry for {name!r}") from None
        if dtype not in DTYPE_SIZES:
            raise SafetensorsError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
        count = 1
        for d in shape:
            count *= d
        if e - b != count * DTYPE_SIZES[dtype] or (size is not None and start + e > size):
            raise SafetensorsError(f"{path}: tensor {name!r} has inconsistent offsets "
                                   "(truncated or damaged file?)")
        tensors.append(TensorInfo(name, dtype, shape, start + b, start + e))
    tensors.sort(key=lambda t: t.begin)
    return SafetensorsFile(path, raw, dict(meta), tuple(tensors))


def iter_chunks(f: BinaryIO, info: TensorInfo, buf: bytearray) -> Iterator[memoryview]:
    """The tensor's bytes in chunks of ``len(buf)`` (the last one shorter), read into
    ``buf``, which is reused: consume each chunk before asking for the next. Two tensors
    of the same size give chunks of the same sizes, so they can be zipped."""
    f.seek(info.begin)
    left = info.nbytes
    view = memoryview(buf)
    while left:
        want = min(left, len(buf))
        got = 0
        while got < want:
            n = f.readinto(view[got:want])
            if not n:
                raise SafetensorsError(f"{getattr(f, 'name', '?')}: unexpected end of file in "
                                       f"tensor {info.name!r}")
            got += n
        left -= want
        yield view[:want]


def build_header(entries: list[tuple[str, str, tuple[int, ...], int]],
                 metadata: Mapping[str, str]) -> bytes:
    """A header for tensors ``(name, dtype, shape, nbytes)`` laid out in the given order,
    padded with spaces to a multiple of 8 bytes as the reference writer does."""
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, dtype, shape, nbytes in entries:
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)


def write_prefix(f: BinaryIO, header_bytes: bytes) -> None:
    f.write(struct.pack("<Q", len(header_bytes)))
    f.write(header_bytes)
