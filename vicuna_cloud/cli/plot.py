"""`vicuna-cloud plot RUN`: train/eval loss, lr and tokens/s, preemptions marked."""

from __future__ import annotations

import shutil
import sys
from typing import Optional

import typer

from vicuna_cloud.cli import completion
from vicuna_cloud.cli.app import app
from vicuna_cloud.cli.common import console


@app.command()
def plot(
    run: str = typer.Argument(..., autocompletion=completion.run_ids, help="Run id (as `vicuna-cloud status` lists it)."),
    out: Optional[str] = typer.Option(
        None, "--out", "-o", metavar="FILE.png",
        help="Write a PNG here instead of drawing in the terminal."),
    bucket: Optional[str] = typer.Option(
        None, "--bucket", metavar="URI",
        help="Bucket the run lives in, when it was launched from another machine."),
):
    """Loss curves of a run: train and eval loss, lr, tokens/s, preemptions marked.

    In the terminal without --out; a PNG with --out (segments, one per VM, shaded).

    Example: vicuna-cloud plot tiny-20261201-101500 --out loss.png
    """
    from vicuna_cloud.sdk.plots import plot_run

    if out is not None:
        path = plot_run(run, bucket, out=out)
        console.print(f"wrote {path}", highlight=False, soft_wrap=True)
        return
    cols = shutil.get_terminal_size((100, 30)).columns
    print(plot_run(run, bucket, width=max(40, min(cols, 120)), height=24,
                   color=sys.stdout.isatty()))
