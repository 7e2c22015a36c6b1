"""A duration as people read it (1h02m, 3m04s, 5s), one spelling for the live view and
`status`."""

from __future__ import annotations

from typing import Optional


def hms(sec: Optional[float]) -> str:
    """'-' when unknown; hours drop the seconds, as an ETA needs no more."""
    if sec is None:
        return "-"
    sec = int(round(sec))
    h, rem = divmod(sec, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")
