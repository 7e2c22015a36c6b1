"""`vicuna-cloud chat RUN`: talk to a run's exported model.

Torch-free itself: it finds the export (runs/<id>/final/ in the bucket, downloaded for
S3/GCS) and starts `python -m train.generate` in a subprocess, which needs the [train]
extra (torch, transformers).
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Optional

import typer

from vicuna_cloud.cli import app
from vicuna_cloud.cli.common import UserError, err_console


@app.command("chat")
def chat(
    run: str = typer.Argument(..., help="Run id (looked up in the bucket) or an exported model directory."),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="One message; omit for an interactive chat."),
    bucket: Optional[str] = typer.Option(None, "--bucket", help="Bucket URI (default: where this machine launched the run, else the local bucket)."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1, max=4096),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy."),
) -> None:
    """Generate replies with a run's exported model, through the Vicuna chat template."""
    model_dir, template = resolve_model(run, bucket)
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise UserError("chat runs the model with torch: install the train extra "
                        "(pip install 'vicuna-cloud[train]')")
    cmd = [sys.executable, "-m", "train.generate", "--model", model_dir,
           "--template", template, "--max-new-tokens", str(max_new_tokens),
           "--temperature", str(temperature)]
    if prompt is not None:
        cmd += ["--prompt", prompt]
    else:
        err_console.print(f"[dim]chatting with {model_dir} (template {template}); "
                          "'exit' or Ctrl-D ends[/]")
    try:
        code = subprocess.call(cmd)
    except KeyboardInterrupt:
        code = 130
    if code:
        raise typer.Exit(code)


def resolve_model(run: str, bucket_uri: Optional[str]) -> tuple[str, str]:
    """(local model directory, template name) for a run id or a model directory."""
    from vicuna_cloud.local import paths
    from vicuna_cloud.local.models import ExportNotFound, local_export_dir
    from vicuna_cloud.runspec import RUN_ID_PATTERN, RunSpec
    from vicuna_cloud.storage import StorageError, open_bucket
    from vicuna_cloud.storage.uri import InvalidBucketURI

    if os.path.isfile(os.path.join(run, "config.json")):
        return os.path.abspath(run), _template_near(run)
    if not RUN_ID_PATTERN.fullmatch(run):
        raise UserError(f"{run!r} is neither a run id nor a directory with an exported model "
                        "(config.json); give a run id from `vicuna-cloud status` or a model path")
    if bucket_uri is None:  # where this machine launched it, else the local default
        from vicuna_cloud.skypilot import index

        rec = index.lookup(run)
        bucket_uri = rec.bucket_uri if rec else paths.default_bucket_uri()
    try:
        b = open_bucket(bucket_uri)
        try:
            template = RunSpec.from_json(b.get_bytes(f"runs/{run}/run.json")).template
        except StorageError:
            raise UserError(f"no run {run!r} in {b.uri}: check the run id, or pass the "
                            "--bucket the run was launched with") from None
        return local_export_dir(b, run), template
    except (InvalidBucketURI, ExportNotFound) as e:
        raise UserError(str(e)) from None
    except StorageError as e:
        raise UserError(f"cannot read the bucket: {e}") from None


def _template_near(model_dir: str) -> str:
    """The template of the run the directory was exported from, if its run.json is beside it."""
    from vicuna_cloud.runspec import RunSpec

    spec = os.path.join(os.path.dirname(os.path.abspath(model_dir)), "run.json")
    if os.path.isfile(spec):
        try:
            return RunSpec.from_json(open(spec, "rb").read()).template
        except ValueError:
            pass
    return "vicuna_v1.1"
