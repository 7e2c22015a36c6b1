"""`vicuna-cloud export RUN [--step N] --out DIR`: a committed checkpoint as a HF model
(``vicuna_cloud.sdk.export``: checks here, the merge in a torch subprocess)."""

from __future__ import annotations

from typing import Optional

import typer

from vicuna_cloud.cli import completion
from vicuna_cloud.cli.app import app
from vicuna_cloud.cli.common import console, print_json


@app.command("export")
def export(
    run: str = typer.Argument(..., autocompletion=completion.run_ids, help="Run id (with --bucket) or the URI of its run.json."),
    out: str = typer.Option(..., "--out", help="New directory for the Hugging Face model."),
    step: Optional[int] = typer.Option(None, "--step", min=0,
                                       help="Committed checkpoint step (default: the newest)."),
    bucket: Optional[str] = typer.Option(None, "--bucket",
                                         help="Bucket URI (default: where this machine launched the run)."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Turn any committed checkpoint of a run into a Hugging Face model directory.

    Example: vicuna-cloud export tiny-20261201-101500 --out ./vicuna-tiny
    """
    from vicuna_cloud import sdk

    res = sdk.export(run, out, step=step, bucket=bucket,
                     wrap=lambda what: console.status(what, spinner="dots"))
    summary = res.model_dump()
    if json_out:
        print_json(summary)
        return
    from rich.table import Table

    t = Table(title=f"Exported {summary['run_id']}", show_header=False)
    t.add_row("step", str(summary["step"]))
    t.add_row("tokens trained", f"{summary['tokens_trained']:,}" if summary["tokens_trained"]
              is not None else "-")
    t.add_row("directory", summary["out"])
    t.add_row("files", ", ".join(summary["files"]))
    t.add_row("committed steps", ", ".join(map(str, summary["committed_steps"])))
    console.print(t)
