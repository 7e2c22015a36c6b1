"""`vicuna-cloud export RUN [--step N] --out DIR`: a committed checkpoint as a HF model.

Torch-free: it checks the input here (run exists, step committed, --out empty) so mistakes
get a one-line answer fast, then runs `python -m train.export_cli` in a subprocess (needs
the [train] extra) which merges the sharded checkpoint into safetensors.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from typing import Optional

import typer

from vicuna_cloud.cli import app
from vicuna_cloud.cli.common import UserError, console, print_json


def _run_spec_uri(run: str, bucket: Optional[str]) -> tuple[str, str]:
    """(run.json URI, bucket URI) for a run id (+ --bucket) or a run.json URI."""
    from vicuna_cloud.runspec import RUN_ID_PATTERN

    if run.endswith("run.json"):
        head = run.rstrip("/").rsplit("/", 3)[0]  # <bucket>/runs/<id>/run.json
        return run, head
    if not RUN_ID_PATTERN.fullmatch(run):
        raise UserError(f"{run!r} is not a run id; give the id from `vicuna-cloud status` or "
                        "the URI of its run.json")
    if bucket is None:  # where this machine launched it (cloud or local), else the default
        from vicuna_cloud.local import paths
        from vicuna_cloud.skypilot import index

        rec = index.lookup(run)
        bucket = rec.bucket_uri if rec else paths.default_bucket_uri()
    from vicuna_cloud.runs import run_spec_uri
    from vicuna_cloud.storage.uri import InvalidBucketURI

    try:
        return run_spec_uri(bucket, run), bucket
    except InvalidBucketURI as e:
        raise UserError(str(e)) from None


@app.command("export")
def export(
    run: str = typer.Argument(..., help="Run id (with --bucket) or the URI of its run.json."),
    out: str = typer.Option(..., "--out", help="New directory for the Hugging Face model."),
    step: Optional[int] = typer.Option(None, "--step", min=0,
                                       help="Committed checkpoint step (default: the newest)."),
    bucket: Optional[str] = typer.Option(None, "--bucket",
                                         help="Bucket URI (default: where this machine launched the run)."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Turn any committed checkpoint of a run into a Hugging Face model directory."""
    from vicuna_cloud.runspec import RunSpec
    from vicuna_cloud.storage import StorageError, open_bucket

    spec_uri, bucket_uri = _run_spec_uri(run, bucket)
    head, _, name = spec_uri.rstrip("/").rpartition("/")
    try:
        spec = RunSpec.from_json(open_bucket(head).get_bytes(name))
    except StorageError:
        raise UserError(f"no run spec at {spec_uri}: check the run id, or pass the --bucket "
                        "the run was launched with") from None
    except ValueError as e:
        raise UserError(f"{spec_uri} is not a valid run spec: {str(e).splitlines()[0]}") from None
    b = open_bucket(spec.bucket_uri)
    prefix = f"runs/{spec.run_id}/checkpoints/"
    steps = sorted({int(o.key[len(prefix):].split("/")[0][5:]) for o in b.list(prefix)
                    if o.key.endswith("/COMMIT.json")})
    if not steps:
        raise UserError(f"run {spec.run_id} has no committed checkpoint yet; wait for the first "
                        "one (`vicuna-cloud logs` shows when it is saved)")
    if step is not None and step not in steps:
        raise UserError(f"run {spec.run_id} has no committed checkpoint at step {step}; "
                        f"committed: {', '.join(map(str, steps))}")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise UserError(f"--out {out} already exists and is not an empty directory; choose a "
                        "new one")
    if importlib.util.find_spec("torch") is None:
        raise UserError("export merges the checkpoint with torch: install the train extra "
                        "(pip install 'vicuna-cloud[train]')")
    cmd = [sys.executable, "-m", "train.export_cli", "--run", spec_uri, "--out", out, "--json"]
    if step is not None:
        cmd += ["--step", str(step)]
    with console.status(f"exporting {spec.run_id} step {step if step is not None else steps[-1]}"
                        " ...", spinner="dots"):
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        msg = lines[-1] if lines else f"exit code {proc.returncode}"
        raise UserError(msg[len("error: "):] if msg.startswith("error: ") else msg)
    summary = json.loads(proc.stdout)
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
