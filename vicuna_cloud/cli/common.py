"""Shared CLI plumbing: consoles, the user-error type, and --json output."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console

console = Console()
err_console = Console(stderr=True)


class UserError(Exception):
    """Bad input or environment. Printed as one line 'error: ...' with exit code 2.

    The message must say what is wrong and how to fix it.
    """


def print_json(obj: Any) -> None:
    """Machine-readable twin of a rich table: plain JSON on stdout, nothing else."""
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))
