"""CLI commands for runs already launched: status, logs, cancel (``vicuna_cloud.sdk.runs``)."""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from vicuna_cloud.cli.app import app
from vicuna_cloud.cli.common import console, err_console, print_json


@app.command()
def status(
    run: Optional[str] = typer.Argument(None, help="Run id (default: every run launched here)."),
    bucket: Optional[str] = typer.Option(None, "--bucket", help="Where the run lives."),
    json_out: bool = typer.Option(False, "--json"),
):
    """Managed-job state, recoveries and progress read from the bucket."""
    from vicuna_cloud import sdk

    rep = sdk.status(run, bucket)
    if not rep.runs:
        if json_out:
            print_json([])
        else:
            console.print("no runs launched from this machine yet")
        return
    if json_out:
        print_json(rep.model_dump(mode="json"))
        return
    if rep.api_error:
        err_console.print(f"[yellow]SkyPilot API server unreachable ({rep.api_error}); showing "
                          "what the bucket knows[/]")
    t = Table(title="vicuna-cloud runs")
    for col in ("run", "job", "state", "recoveries", "progress", "checkpoints", "bucket"):
        t.add_column(col, overflow="fold")
    for r in rep.runs:
        t.add_row(r.run_id, str(r.job_id if r.job_id is not None else "-"), r.state,
                  "-" if r.recoveries is None else str(r.recoveries), r.progress,
                  str(r.checkpoints), r.bucket)
    console.print(t)


@app.command()
def logs(
    run: str = typer.Argument(..., help="Run id."),
    follow: bool = typer.Option(True, "--follow/--no-follow"),
    bucket: Optional[str] = typer.Option(None, "--bucket"),
):
    """Stream the run's logs (sky.jobs.tail_logs)."""
    from vicuna_cloud import sdk

    raise typer.Exit(sdk.logs(run, bucket, follow=follow))


@app.command()
def cancel(
    run: str = typer.Argument(..., help="Run id."),
    bucket: Optional[str] = typer.Option(None, "--bucket"),
):
    """Cancel the managed job; the trainer checkpoints on SIGTERM and the bucket keeps it."""
    from vicuna_cloud import sdk

    job_id = sdk.cancel(run, bucket)
    console.print(f"cancelled job {job_id} (run {run}); its checkpoints stay in the bucket")
