"""Shared CLI plumbing: consoles, the error type the CLI prints, and --json output."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from rich.console import Console

from vicuna_cloud.errors import VicunaError


def _width(stream) -> int | None:
    """Piped or redirected output gets wide tables instead of rich's 80-column default,
    so a report saved to a file or grepped in a script is not wrapped mid-value."""
    if os.environ.get("COLUMNS") or stream.isatty():
        return None
    return 200


console = Console(width=_width(sys.stdout))
err_console = Console(stderr=True, width=_width(sys.stderr))


#: What `vicuna-cloud` prints as one line 'error: ...' with exit code 2 (cli.main, the one
#: place): the SDK's domain errors, whose messages say what is wrong and how to fix it.
UserError = VicunaError


def print_json(obj: Any) -> None:
    """Machine-readable twin of a rich table: plain JSON on stdout, nothing else."""
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))
