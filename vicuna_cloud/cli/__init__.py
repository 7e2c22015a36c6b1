"""The `vicuna-cloud` command line.

Each command group lives in its own module and registers itself on ``app``. Modules import
only typer and rich at import time; sky, boto3, transformers and friends are imported
inside the commands, so `vicuna-cloud --help` stays fast (bench/cli_startup.py).
"""

from __future__ import annotations

import sys

import typer

from vicuna_cloud.cli.common import UserError, console, err_console

app = typer.Typer(
    name="vicuna-cloud",
    help="Fine-tune Vicuna-style chat models on preemptible cloud GPUs: resumable, and within budget.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

# Registration order is the order `--help` lists them.
from vicuna_cloud.cli import launch as _launch  # noqa: E402,F401
from vicuna_cloud.cli import data as _data  # noqa: E402,F401
from vicuna_cloud.cli import cost as _cost  # noqa: E402,F401
from vicuna_cloud.cli import chat as _chat  # noqa: E402,F401
from vicuna_cloud.cli import export as _export  # noqa: E402,F401


def main() -> None:
    """Console-script entry: turn UserError into a one-line message and exit code 2."""
    try:
        app()
    except UserError as e:
        # escape: user input in the message (e.g. "s3://b[/p]") is text, not rich markup;
        # soft_wrap: the error stays one line whatever the terminal width.
        from rich.markup import escape

        err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False,
                          soft_wrap=True)
        sys.exit(2)


__all__ = ["app", "console", "err_console", "main"]
