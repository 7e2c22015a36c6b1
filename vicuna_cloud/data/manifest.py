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
        "merged": int            # conversations read from --merge files
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
      "output": {"file": "train.jsonl", "sha256": str, "bytes": int}
    }
"""

from __future__ import annotations

import json
import os
from array import array
from typing import Any

MANIFEST_VERSION = 1
PIPELINE_VERSION = "1"
MANIFEST_FILE = "manifest.json"
TRAIN_FILE = "train.jsonl"
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


def read_manifest(directory_or_file: str) -> dict[str, Any]:
    from vicuna_cloud.data.reader import DataError

    path = directory_or_file
    if os.path.isdir(path):
        path = os.path.join(path, MANIFEST_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            m = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: no manifest; run `vicuna-cloud data prepare` first") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: corrupt manifest ({e}); re-run `vicuna-cloud data prepare`") from None
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
