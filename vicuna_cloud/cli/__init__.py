"""The `vicuna-cloud` command line: a thin Typer layer over ``vicuna_cloud.sdk``.

Each command parses its flags, calls the SDK, and renders a rich table or ``--json``.
Every domain error (``vicuna_cloud.errors.VicunaError``) becomes one line ``error: ...``
and exit code 2 here, in ``main`` and nowhere else. Each command group lives in its own
module and registers itself on ``app``; modules import only typer and rich at import time
(the SDK, sky, boto3 and friends inside the commands), so `vicuna-cloud --help` stays
fast (bench/cli_startup.py).
"""

from __future__ import annotations

import sys

from vicuna_cloud.cli.app import app
from vicuna_cloud.cli.common import console, err_console
from vicuna_cloud.errors import VicunaError

# Registration order is the order `--help` lists them.
from vicuna_cloud.cli import launch as _launch  # noqa: F401
from vicuna_cloud.cli import runs as _runs  # noqa: F401
from vicuna_cloud.cli import plot as _plot  # noqa: F401
from vicuna_cloud.cli import data as _data  # noqa: F401
from vicuna_cloud.cli import cost as _cost  # noqa: F401
from vicuna_cloud.cli import chat as _chat  # noqa: F401
from vicuna_cloud.cli import export as _export  # noqa: F401
from vicuna_cloud.cli import serve as _serve  # noqa: F401
from vicuna_cloud.cli import eval as _eval  # noqa: F401
from vicuna_cloud.cli import delta as _delta  # noqa: F401
from vicuna_cloud.cli import base as _base  # noqa: F401


def main() -> None:
    """Console-script entry: any VicunaError becomes a one-line message and exit code 2."""
    try:
        app()
    except VicunaError as e:
        # escape: user input in the message (e.g. "s3://b[/p]") is text, not rich markup;
        # soft_wrap: the error stays one line whatever the terminal width.
        from rich.markup import escape

        err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False,
                          soft_wrap=True)
        sys.exit(2)


__all__ = ["app", "console", "err_console", "main"]
