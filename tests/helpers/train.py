"""Helpers to run the real trainer in tests: a tiny run spec over a local bucket, and
`torchrun --standalone --nproc_per_node 2 -m train --run-uri <uri>`
(torchrun refuses `--run`: ambiguous with its own --run-path) (gloo, CPU).

Shared with the checkpoint and local-backend tests: import from here, don't copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

from vicuna_cloud.recipes import get_preset
from vicuna_cloud.run_store import spec_from_preset, write_run_spec
from vicuna_cloud.runspec import CheckpointPolicy, RunSpec
from vicuna_cloud.storage import open_bucket

REPO = Path(__file__).resolve().parents[2]
DUMMY_CONVERSATIONS = REPO.parent / "shared" / "data" / "sharegpt" / "dummy_conversation.json"


def write_train_jsonl(out_dir: Path, source: Path = DUMMY_CONVERSATIONS,
                      limit: Optional[int] = None) -> tuple[Path, str]:
    """Minimal conversion of a ShareGPT JSON file to train.jsonl (the data pipeline does the
    real cleaning; the dummy file is already clean). Returns (dir, sha256 of train.jsonl)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    records = json.loads(source.read_text())
    if limit is not None:
        records = records[:limit]
    lines = [json.dumps({"id": r["id"], "conversations": r["conversations"]}) for r in records]
    path = out_dir / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return out_dir, hashlib.sha256(path.read_bytes()).hexdigest()


def tiny_spec(tmp: Path, *, run_id: str = "tiny-test", bucket_uri: Optional[str] = None,
              dataset_uri: Optional[str] = None, dataset_sha256: Optional[str] = None,
              limit: Optional[int] = 128, version: str = "v1.1",
              checkpoint: Optional[CheckpointPolicy] = None, **hyper) -> tuple[RunSpec, str]:
    """A tiny-preset run over ``tmp/bucket`` (or ``bucket_uri``), written to the bucket.

    Defaults keep a 2-process CPU run to a few seconds: 128 conversations, max length 256,
    global batch 16 (8 steps per epoch). Returns (spec, run.json URI)."""
    if dataset_uri is None:
        data_dir, sha = write_train_jsonl(tmp / "data", limit=limit)
        dataset_uri, dataset_sha256 = str(data_dir), sha
    bucket_uri = bucket_uri or str(tmp / "bucket")
    preset = get_preset("tiny", version)
    spec = spec_from_preset(preset, run_id=run_id, dataset_uri=dataset_uri,
                            dataset_sha256=dataset_sha256, bucket_uri=bucket_uri,
                            cloud="local", use_spot=False, checkpoint=checkpoint,
                            hyper_overrides=hyper or None)
    uri = write_run_spec(open_bucket(bucket_uri), spec)
    return spec, uri


def torchrun_train(run_uri: str, *, nproc: int = 2, local_root: Optional[str] = None,
                   extra_args: tuple[str, ...] = (), env: Optional[dict] = None,
                   timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the trainer under torchrun; returns the completed process (stdout+stderr text)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "train", "--run-uri", run_uri, *extra_args]
    if local_root:
        cmd += ["--local-root", local_root]
    e = dict(os.environ)
    e.update({"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
              "PYTHONPATH": str(REPO) + os.pathsep + e.get("PYTHONPATH", "")})
    e.pop("WANDB_API_KEY", None)
    # Every call is an attempt of one job (like a managed job's recoveries): it succeeds
    # a SIGKILLed predecessor's lease without --take-over (vicuna_cloud/lease.py).
    e.setdefault("VICUNA_LEASE_OWNER", f"test-job:{run_uri}"[:200])
    e.update(env or {})
    return subprocess.run(cmd, cwd=REPO, env=e, capture_output=True, text=True,
                          timeout=timeout)


def read_metrics(bucket_uri: str, run_id: str) -> list[dict]:
    raw = open_bucket(bucket_uri).get_bytes(f"runs/{run_id}/metrics.jsonl").decode()
    return [json.loads(line) for line in raw.splitlines() if line.strip()]
