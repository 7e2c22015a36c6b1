"""The index of runs launched from this machine (both backends), so `status RUN`,
`cost RUN`, `chat RUN` and `export RUN` know the run's bucket and SkyPilot job id.

One JSON file per run under ``paths.run_index_dir()`` (``$VICUNA_CLOUD_HOME/runs/``),
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

from vicuna_cloud import paths


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
    """Where the index lives (named in messages when it cannot be written)."""
    return Path(paths.run_index_dir())


def _dir() -> Path:
    return home()


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
