"""A small local index of launched runs, so `status RUN` knows its bucket and job id.

One JSON file per run under ``$VICUNA_CLOUD_HOME/runs/`` (default: the user data dir),
written atomically. The bucket stays the source of truth; this only remembers where to look.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    bucket_uri: str
    backend: str  # "skypilot" | "local"
    job_id: Optional[int] = None
    job_name: Optional[str] = None
    preset: Optional[str] = None
    launched_at: str = ""


def home() -> Path:
    env = os.environ.get("VICUNA_CLOUD_HOME")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_data_dir("vicuna-cloud"))


def _dir() -> Path:
    return home() / "runs"


def record(rec: RunRecord) -> Path:
    if not rec.launched_at:
        rec = RunRecord(**{**asdict(rec), "launched_at": datetime.now(timezone.utc).isoformat()})
    d = _dir()
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{rec.run_id}.json"
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(rec), f, indent=2)
    os.replace(tmp, path)
    return path


def lookup(run_id: str) -> Optional[RunRecord]:
    path = _dir() / f"{run_id}.json"
    try:
        return RunRecord(**json.loads(path.read_text()))
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        return None


def all_runs() -> list[RunRecord]:
    d = _dir()
    if not d.is_dir():
        return []
    out = []
    for p in sorted(d.glob("*.json")):
        rec = lookup(p.stem)
        if rec is not None:
            out.append(rec)
    return sorted(out, key=lambda r: r.launched_at)
