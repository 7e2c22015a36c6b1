"""`vicuna-cloud serve RUN`: an OpenAI-compatible endpoint for a run's exported model.

    vicuna-cloud serve RUN --local [--port 8000]            # this CPU, on 127.0.0.1
    vicuna-cloud serve RUN --bucket s3://b/p [--spot] [--gpus L4:1] [--cloud aws|gcp|any]
                           [--replicas N] [--name NAME] [--dry-run] [-o task.yaml] [--json]

Thin: ``sdk.plan_serve`` / ``sdk.serve`` (SkyServe + vLLM) or ``sdk.local_server_command``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Optional

import typer

from vicuna_cloud.cli import completion
from vicuna_cloud.cli.app import app
from vicuna_cloud.cli.common import UserError, console, err_console, print_json


def _serve_local(run: str, bucket: Optional[str], port: int) -> None:
    from vicuna_cloud import sdk

    cmd, name, model_dir, template = sdk.local_server_command(run, bucket, port)
    err_console.print(f"[dim]serving {name} ({model_dir}, template {template}) at "
                      f"http://127.0.0.1:{port}/v1 (model name {name!r}); Ctrl-C stops[/]")
    try:
        code = subprocess.call(cmd)
    except KeyboardInterrupt:
        code = 0
    if code:
        raise typer.Exit(code)


@app.command("serve")
def serve(
    run: str = typer.Argument(..., autocompletion=completion.run_ids, help="Run id (or, with --local, an exported model dir)."),
    local: bool = typer.Option(False, "--local", help="Serve on this machine's CPU (127.0.0.1)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="--local: port."),
    bucket: Optional[str] = typer.Option(None, "--bucket", help="Bucket of the run."),
    spot: bool = typer.Option(False, "--spot/--no-spot", help="Spot replicas (SkyServe replaces preempted ones)."),
    gpus: Optional[str] = typer.Option(None, "--gpus", help="e.g. L4:1 (default: by model size)."),
    cloud: str = typer.Option("any", "--cloud", help="aws, gcp or any."),
    replicas: int = typer.Option(1, "--replicas", min=1, max=16,
                                  help="SkyServe replicas of the endpoint (cloud)."),
    name: Optional[str] = typer.Option(None, "--name", help="Service name."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Render and check; launch nothing."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Also write the task YAML here."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable summary."),
) -> None:
    """Serve a run's export with an OpenAI-compatible API (vLLM on SkyServe, or --local).

    Example: vicuna-cloud serve tiny-20261201-101500 --local --port 8000
    """
    if local:
        _serve_local(run, bucket, port)
        return
    from vicuna_cloud import sdk

    plan = sdk.plan_serve(sdk.ServeRequest(run=run, bucket=bucket, spot=spot, gpus=gpus,
                                           cloud=cloud, replicas=replicas, name=name))
    if output is not None:
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(plan.yaml())
        except OSError as e:
            raise UserError(f"cannot write {output}: {e.strerror}; choose another -o path") from None
    endpoint = None if dry_run else sdk.serve(plan).endpoint
    summary = plan.summary(endpoint, dry_run)
    if json_out:
        print_json(summary.model_dump(mode="json"))
        return
    from rich.table import Table

    t = Table(title="Dry run: nothing launched" if dry_run else "Service launched",
              show_header=False)
    for k, v in summary.model_dump().items():
        if k != "dry_run" and v is not None:
            t.add_row(k.replace("_", " "), str(v))
    console.print(t)
