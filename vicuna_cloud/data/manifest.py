"""``manifest.json``: what a prepared dataset is, where it came from, and its token counts.

The cost estimator reads ``tokens.total`` (tokens per epoch); the trainer checks
``output.sha256`` (the sha256 of ``train.jsonl``'s bytes, exactly) against the run spec;
``data upload`` keys the bucket by it. Schema (version 1)::

    {
      "manifest_version": 1,
      "pipeline_version": "1",              # bump when cleaning changes its output
      "created_at": "2026-...Z",
      "inputs": [{"path": str, "sha256": str, "bytes": int, "conversations": int}],
      "merged": [{"path", "sha256", "bytes", "conversations"}],     # --merge files
      "options": {...every PrepareOptions field...},
      "tokenizer": "builtin:llama-sp", "template": "vicuna_v1.1", "max_length": 2048,
      "counts": {
        "input": int,            # conversations read, inputs and merge files together
        "kept": int,             # input conversations with at least one piece written
        "dropped": {reason: int},   # input == kept + sum(dropped)
        "split_pieces": int,     # lines of train.jsonl (>= kept)
        "split_conversations": int, # kept conversations written as 2+ pieces
        "truncated": int,        # kept conversations cut at an empty message
        "kept_for_truncation": int, # pieces that are one pair longer than max_length
        "dropped_pairs": int,    # over-long single pairs dropped (long_pair="drop")
        "merged": int,           # conversations read from --merge files
        "train_over_length": int,   # train.jsonl pieces the trainer cuts at max_length
        "train_tokens_after_truncation": int, # the trainer's token count (its log says so)
        "removed_turns": {reason: int},  # turns removed from kept conversations (filters.py:
                                 # leading_system, leading_gpt, trailing_human,
                                 # after_empty_message)
        "blocked_identity": int  # blocked_words drops that look like identity data
      },
      "tokens": {
        "conversations": int,    # = split_pieces
        "total": int,            # all tokens incl. BOS, system prompt and template
        "assistant": int,        # trained tokens (replies + "</s>")
        "histogram": {"edges": [0, 64, ..., 16384, E], "counts": [...]},
                                 # counts[i]: pieces with edges[i] < length <= edges[i+1]
        "weighted_length": float,  # token-weighted mean length, sum(L^2) / sum(L)
        "mean": float, "p50": int, "p90": int, "max": int
      },
      "conversations": int,      # = counts.kept (for the cost estimator)
      "samples": int,            # = counts.split_pieces, lines of train.jsonl
      "output": {"file": "train.jsonl", "sha256": str, "bytes": int},
      "stop": "</s>",            # the reply stop measured (v1.1: the tokenizer's EOS)
      "warnings": [str],         # what the user should know (the CLI prints them)
      "eval": {"file": "eval.jsonl", "sha256", "bytes", "samples", "tokens": {...}}
                                 # only when --eval-fraction held something out; counts
                                 # has eval_conversations / eval_pieces (not in kept's
                                 # split_pieces, tokens or conversations)
    }
"""

from __future__ import annotations

import json
import os
from array import array
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, ValidationError

from vicuna_cloud import bucket_keys
from vicuna_cloud.data.reader import DataError

MANIFEST_VERSION = 1
PIPELINE_VERSION = "2"  # 2: strict human/gpt roles (system_turn, other_assistant)
MANIFEST_FILE = bucket_keys.MANIFEST_FILE
TRAIN_FILE = bucket_keys.TRAIN_FILE
EVAL_FILE = bucket_keys.EVAL_FILE  # the held-out split (--eval-fraction), when any
HIST_EDGES = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


class TokenStats:
    """Accumulates per-piece token counts (4 bytes each: a million pieces is 4 MB)."""

    def __init__(self) -> None:
        self.lengths = array("i")
        self.assistant = 0

    def add(self, tokens: int, assistant: int) -> None:
        self.lengths.append(tokens)
        self.assistant += assistant

    def summary(self) -> dict[str, Any]:
        import bisect

        n = len(self.lengths)
        s = sorted(self.lengths)
        total = sum(s)
        edges = [0, *HIST_EDGES, max(2 * HIST_EDGES[-1], s[-1] if s else 0)]
        counts = [0] * (len(edges) - 1)
        for x in s:  # bin i holds edges[i] < x <= edges[i + 1]
            counts[max(0, bisect.bisect_left(edges, x) - 1)] += 1
        hist = {"edges": edges, "counts": counts}

        def pct(p: float) -> int:
            return int(s[min(n - 1, int(p * n))]) if n else 0

        return {
            "conversations": n, "total": total, "assistant": self.assistant,
            "weighted_length": round(sum(x * x for x in s) / total, 2) if total else 0.0,
            "histogram": hist, "mean": round(total / n, 2) if n else 0.0,
            "p50": pct(0.5), "p90": pct(0.9), "max": int(s[-1]) if n else 0,
        }


class _Section(BaseModel):
    """Known fields typed; other keys kept as written (``extra="allow"``), so a manifest
    read and dumped again is the file that was written."""

    model_config = ConfigDict(extra="allow")


class Histogram(_Section):
    edges: list[Union[int, float]]
    counts: list[int]


class ManifestOutput(_Section):
    file: str = TRAIN_FILE
    sha256: Optional[str] = None  # of train.jsonl's bytes; the run spec pins it
    bytes: Optional[int] = None


class ManifestTokens(_Section):
    total: Optional[int] = None
    assistant: Optional[int] = None
    histogram: Optional[Histogram] = None


class Manifest(_Section):
    """``manifest.json`` as every reader sees it: the launch (``output.sha256``), the local
    backend, the cost estimator (``tokens``, ``conversations``, a histogram) and
    ``data upload``. Only what a reader needs is typed; a missing section is None."""

    manifest_version: int = MANIFEST_VERSION
    pipeline_version: Optional[str] = None
    counts: Optional[dict[str, Union[int, dict[str, int]]]] = None
    tokens: Optional[ManifestTokens] = None
    output: Optional[ManifestOutput] = None
    conversations: Optional[int] = None
    samples: Optional[int] = None
    length_histogram: Optional[Histogram] = None  # older manifests: top-level histogram

    @property
    def sha256(self) -> Optional[str]:
        return self.output.sha256 if self.output else None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_unset=True)


class ManifestError(DataError):
    """A manifest that is missing, not JSON, or not the shape `data prepare` writes."""


def parse_manifest(raw: bytes | str, where: str) -> Manifest:
    """The one parser: JSON text to a Manifest, errors naming ``where`` and the fix."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ManifestError(f"{where}: corrupt manifest, not valid JSON ({e}); re-run "
                            "`vicuna-cloud data prepare`") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{where}: manifest is not a JSON object; re-run "
                            "`vicuna-cloud data prepare`")
    try:
        return Manifest.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise ManifestError(f"{where}: manifest field {loc}: {first['msg']}; re-run "
                            "`vicuna-cloud data prepare`") from None


def load_manifest(location: str) -> tuple[Manifest, str]:
    """The one reader: a dataset directory or its manifest.json, local or in a bucket.

    Returns the manifest and where it was read. A missing one raises ManifestError whose
    message starts "no manifest".
    """
    from vicuna_cloud.storage import NotFoundError, StorageError, open_bucket

    loc = location.rstrip("/") or location
    if loc.endswith(".json"):
        head, _, name = loc.rpartition("/")
        head = head or "."
    else:
        head, name = loc, MANIFEST_FILE
    where = f"{head}/{name}"
    try:
        raw = open_bucket(head).get_bytes(name)
    except NotFoundError:
        raise ManifestError(f"no manifest at {where}; give a dataset directory (or its "
                            "manifest.json) written by `vicuna-cloud data prepare`") from None
    except (StorageError, ValueError, OSError) as e:
        raise ManifestError(f"cannot read {where}: {e}") from None
    return parse_manifest(raw, where), where


def read_manifest(directory_or_file: str) -> dict[str, Any]:
    """A prepared dataset's manifest as written (a dict), checked complete: what
    ``data upload`` and a re-run of ``data prepare`` compare against."""
    path = directory_or_file
    if os.path.isdir(path):
        path = os.path.join(path, MANIFEST_FILE)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: no manifest; run `vicuna-cloud data prepare` first") from None
    m = parse_manifest(raw, path).to_dict()
    for key in ("pipeline_version", "counts", "tokens", "output"):
        if key not in m:
            raise DataError(f"{path}: manifest lacks {key!r}; re-run `vicuna-cloud data prepare`")
    return m


def write_json_atomic(path: str, obj: Any) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
