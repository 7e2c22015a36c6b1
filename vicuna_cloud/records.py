"""Pydantic models for the files read back from the bucket: every one is untrusted input.

Anyone who can write the bucket (or a bit flip, or a half-finished write) controls these
bytes. A reader validates them here before acting on them, and an invalid file makes
only that record invalid: the checkpoint is skipped (resume falls back to an older one),
the metrics line or ledger segment is skipped and named. File names listed inside a
record must be plain relative names (``safe_name``), so a download can never write
outside its directory. run.json is validated by ``vicuna_cloud.runspec.RunSpec``.

Torch-free: the trainer and the CLI both read through these models.
"""

from __future__ import annotations

import json
import posixpath
from typing import Annotated, Any, Optional, TypeVar

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, StrictInt,
                      ValidationError, field_validator)

MAX_NAME = 255
SHA256_HEX = r"^[0-9a-f]{64}$"


class InvalidRecord(ValueError):
    """A file from the bucket that does not hold what its reader expects (one line)."""


def safe_name(name: str) -> str:
    """``name`` if it is a plain relative path inside its directory, else ValueError.

    Refused: empty, absolute, ``.``/``..`` parts, backslashes, control characters (NUL
    included), over-long parts. Subdirectories (``ranks/0.json``) are allowed."""
    if not isinstance(name, str) or not name:
        raise ValueError("empty file name")
    if name.startswith("/") or "\\" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValueError(f"file name {name[:80]!r} is not a plain relative name")
    parts = name.split("/")
    if any(p in ("", ".", "..") or len(p.encode("utf-8", "surrogatepass")) > MAX_NAME
           for p in parts) or posixpath.normpath(name) != name:
        raise ValueError(f"file name {name[:80]!r} is not a plain relative name")
    return name


SafeName = Annotated[str, AfterValidator(safe_name)]
NonNegInt = Annotated[StrictInt, Field(ge=0)]


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class CommitFile(_Record):
    name: SafeName
    size: NonNegInt
    sha256: str = Field(pattern=SHA256_HEX)


class CommitRecord(_Record):
    """``checkpoints/step-N/COMMIT.json``: the checkpoint exists only if this validates."""

    format: StrictInt
    step: NonNegInt
    run_id: str
    training_hash: str = Field(min_length=1)
    world_size: Annotated[StrictInt, Field(ge=1)]
    progress: dict[str, Any] = Field(default_factory=dict)
    files: list[CommitFile] = Field(min_length=1)

    @field_validator("files")
    @classmethod
    def _unique(cls, files: list[CommitFile]) -> list[CommitFile]:
        names = [f.name for f in files]
        if len(set(names)) != len(names):
            raise ValueError("a file is listed twice")
        return files


class ExportRecord(_Record):
    """``final/EXPORT.json``, written after every file of the export: no marker, no model."""

    step: NonNegInt
    files: dict[SafeName, NonNegInt] = Field(min_length=1)
    time: Optional[float] = None


class MetricsLine(BaseModel):
    """One line of metrics.jsonl: any fields, but a step must be a step."""

    model_config = ConfigDict(extra="allow", frozen=True)
    step: Optional[NonNegInt] = None
    event: Optional[str] = None
    total_steps: Optional[NonNegInt] = None


class LeaseRecord(_Record):
    """``runs/<id>/lease/<generation>.json``: who writes the run (see vicuna_cloud.lease)."""

    generation: NonNegInt
    owner: str = Field(min_length=1, max_length=200)
    holder: str = Field(min_length=1, max_length=300)
    since: float
    heartbeat_s: float = Field(gt=0)
    released: bool = False


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], data: bytes, what: str) -> M:
    """Validate ``data`` (JSON bytes) as ``model``; InvalidRecord naming ``what`` otherwise."""
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise InvalidRecord(f"{what}: not JSON ({str(e).splitlines()[0][:120]})") from None
    try:
        return model.model_validate(obj)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise InvalidRecord(f"{what}: {loc}: {first['msg']}") from None


def metrics_lines(data: bytes) -> tuple[list[tuple[str, MetricsLine]], int]:
    """The valid lines of metrics.jsonl (raw text, parsed) and how many were skipped
    (torn, not UTF-8, not an object, a step that is not a count)."""
    good: list[tuple[str, MetricsLine]] = []
    bad = 0
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
            rec = MetricsLine.model_validate(json.loads(line))
        except (UnicodeDecodeError, ValueError, RecursionError):
            bad += 1
            continue
        good.append((line, rec))
    return good, bad
