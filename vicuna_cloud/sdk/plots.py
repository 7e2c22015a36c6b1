"""A run's loss curves, as a PNG file or as terminal text (``vicuna_cloud.reports.plot``)."""

from __future__ import annotations

from typing import Optional

from vicuna_cloud.errors import ConfigError, RunNotFound


def plot_run(run_id: str, bucket: Optional[str] = None, *, out: Optional[str] = None,
             width: int = 80, height: int = 22, color: bool = True) -> str:
    """Writes ``out`` (PNG) and returns its path; without ``out`` returns the terminal chart."""
    from vicuna_cloud.reports import plot
    from vicuna_cloud.sdk.runs import find_run
    from vicuna_cloud.storage import NotFoundError, open_bucket

    if out is not None and not out.lower().endswith(".png"):
        raise ConfigError(f"--out {out!r}: only PNG is written; name the file FILE.png")
    rec = find_run(run_id, bucket)
    try:
        data = plot.plot_data(open_bucket(rec.bucket_uri), run_id)
    except NotFoundError as e:
        raise RunNotFound(str(e)) from None
    if out is not None:
        try:
            return plot.render_png(data, out)
        except OSError as e:
            raise ConfigError(f"cannot write {out}: {e.strerror or e}; pick a writable path") from None
    return plot.render_terminal(data, width=width, height=height, color=color)
