"""`vicuna-cloud chat RUN`: talk to a run's exported model.

Torch-free itself: ``sdk.chat_model`` finds the export (runs/<id>/final/ in the bucket,
downloaded for S3/GCS) and this starts `python -m train.generate` in a subprocess, which
needs the [train] extra (torch, transformers).
"""

from __future__ import annotations

import subprocess
from typing import Optional

import typer

from vicuna_cloud.cli import completion
from vicuna_cloud.cli.app import app
from vicuna_cloud.cli.common import err_console


@app.command("chat")
def chat(
    run: str = typer.Argument(..., autocompletion=completion.run_ids, help="Run id (looked up in the bucket) or an exported model directory."),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="One message; omit for an interactive chat."),
    bucket: Optional[str] = typer.Option(None, "--bucket", help="Bucket URI (default: where this machine launched the run, else the local bucket)."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1, max=4096,
                                        help="Most tokens generated per reply."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy."),
) -> None:
    """Generate replies with a run's exported model, through the Vicuna chat template.

    Example: vicuna-cloud chat tiny-20261201-101500 --prompt "Who are you?"
    """
    from vicuna_cloud import sdk

    model_dir, template = sdk.chat_model(run, bucket)
    cmd = sdk.chat_command(model_dir, template, prompt=prompt, max_new_tokens=max_new_tokens,
                           temperature=temperature)
    if prompt is None:
        err_console.print(f"[dim]chatting with {model_dir} (template {template}); "
                          "'exit' or Ctrl-D ends[/]")
    try:
        code = subprocess.call(cmd)
    except KeyboardInterrupt:
        code = 130
    if code:
        raise typer.Exit(code)
