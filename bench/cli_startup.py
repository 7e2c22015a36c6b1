"""Start-up time of `vicuna-cloud --help` against `sky --help`, side by side.

Each command runs N times alternately (so both see the same machine load); we print the
median and the ratio sky/ours. Target: ours at least 4x faster. `vicuna-cloud render 7b`
(which does import sky, for its parser, but never torch) is shown for reference.

    python bench/cli_startup.py [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _exe(name: str) -> str:
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        sys.exit(f"{name} not found next to {sys.executable} or on PATH; install the project")
    return found


def _time(cmd: list[str]) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-300:]}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    ours = [_exe("vicuna-cloud"), "--help"]
    sky = [_exe("sky"), "--help"]
    render = [_exe("vicuna-cloud"), "render", "7b"]
    os.environ.setdefault("COLUMNS", "120")
    for cmd in (ours, sky, render):  # warm the page cache and .pyc files
        _time(cmd)
    t_ours, t_sky, t_render = [], [], []
    for _ in range(args.runs):
        t_ours.append(_time(ours))
        t_sky.append(_time(sky))
        t_render.append(_time(render))
    m_ours, m_sky, m_render = (statistics.median(x) for x in (t_ours, t_sky, t_render))
    print(f"runs per command: {args.runs} (median wall time, alternating)")
    print(f"vicuna-cloud --help     {m_ours * 1000:8.0f} ms")
    print(f"sky --help              {m_sky * 1000:8.0f} ms")
    print(f"vicuna-cloud render 7b  {m_render * 1000:8.0f} ms  (imports sky's parser, not torch)")
    ratio = m_sky / m_ours
    print(f"ratio sky/ours          {ratio:8.1f}x  (target >= 4x: {'met' if ratio >= 4 else 'NOT met'})")


if __name__ == "__main__":
    main()
