"""Which services `vicuna-cloud serve` launched from this machine, and at what $/hour, so
`eval --base-url` can price the time it spent on one. A JSON file in VICUNA_CLOUD_HOME."""

from __future__ import annotations

import json
import os
import time
from typing import Optional

from vicuna_cloud import paths


def _path() -> str:
    return os.path.join(paths.home(), "serves.json")


def _load() -> dict:
    try:
        with open(_path()) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def record(run_id: str, service: str, price_per_hour: Optional[float], endpoint: str = "",
           stop: Optional[list[str]] = None) -> None:
    data = _load()
    data[run_id] = {"service": service, "price_per_hour": price_per_hour,
                    "endpoint": endpoint, "stop": list(stop or []), "launched_at": time.time()}
    os.makedirs(os.path.dirname(_path()), exist_ok=True)
    tmp = _path() + f".{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, _path())


def lookup(run_id: str) -> Optional[dict]:
    return _load().get(run_id)
