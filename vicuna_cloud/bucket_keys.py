"""Every key in the bucket, named once: both planes (the CLI and local backend, and the
trainer in train/) build keys only through these functions, so the layout in
checkpoints/README.md lives in one place::

    datasets/<sha256>/train.jsonl, manifest.json
    runs/<run_id>/run.json
    runs/<run_id>/checkpoints/step-<N:08d>/...   + COMMIT.json (written last)
    runs/<run_id>/ledger/<segment_id>.json
    runs/<run_id>/metrics.jsonl
    runs/<run_id>/final/                        Hugging Face export

Keys are relative to the bucket URI (``Bucket.child_uri(key)`` gives the full URI).
"""

from __future__ import annotations

import re
from typing import Optional

RUN_SPEC_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
COMMIT_FILE = "COMMIT.json"
FINAL_DIR = "final"
TRAIN_FILE = "train.jsonl"
EVAL_FILE = "eval.jsonl"
MANIFEST_FILE = "manifest.json"
DATASETS_DIR = "datasets"
_DATASET_URI = re.compile(r"datasets/([0-9a-f]{64})/?$")


def run_prefix(run_id: str) -> str:
    """``runs/<run_id>``: everything of one run lives under it."""
    return f"runs/{run_id}"


def run_spec(run_id: str) -> str:
    return f"{run_prefix(run_id)}/{RUN_SPEC_FILE}"


def metrics(run_id: str) -> str:
    return f"{run_prefix(run_id)}/{METRICS_FILE}"


def ledger_prefix(run_id: str) -> str:
    return f"{run_prefix(run_id)}/ledger/"


def ledger_segment(run_id: str, segment_id: str) -> str:
    return f"{ledger_prefix(run_id)}{segment_id}.json"


def checkpoints_prefix(run_id: str) -> str:
    return f"{run_prefix(run_id)}/checkpoints"


def checkpoint_dir_name(step: int) -> str:
    """``step-<N:08d>``: zero-padded so that keys sort by step."""
    return f"step-{step:08d}"


def checkpoint_prefix(run_id: str, step: int) -> str:
    return f"{checkpoints_prefix(run_id)}/{checkpoint_dir_name(step)}"


def checkpoint_commit(run_id: str, step: int) -> str:
    return f"{checkpoint_prefix(run_id, step)}/{COMMIT_FILE}"


def committed_steps(run_id: str, keys) -> set[str]:
    """The ``step-N`` names among ``keys`` that have a COMMIT.json (committed checkpoints)."""
    head = f"{checkpoints_prefix(run_id)}/"
    return {k[len(head):].split("/")[0] for k in keys
            if k.startswith(head) and k.endswith(f"/{COMMIT_FILE}")}


def final_prefix(run_id: str) -> str:
    """``runs/<run_id>/final/`` (trailing '/': a listing prefix)."""
    return f"{run_prefix(run_id)}/{FINAL_DIR}/"


def dataset_prefix(sha256: str) -> str:
    return f"{DATASETS_DIR}/{sha256}"


def example_dataset() -> str:
    """What `render` shows when no --data is given."""
    return f"{DATASETS_DIR}/example"


def dataset_sha_from_uri(uri: str) -> Optional[str]:
    """The sha256 a content-addressed dataset URI (``.../datasets/<sha256>``) names."""
    m = _DATASET_URI.search(uri)
    return m.group(1) if m else None
