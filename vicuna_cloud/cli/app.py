"""The Typer application every command module registers itself on."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="vicuna-cloud",
    help="Fine-tune Vicuna-style chat models on preemptible cloud GPUs: resumable, and within budget.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
