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


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("vicuna-cloud")
        except PackageNotFoundError:  # run from a source tree that was never installed
            v = "unknown (not installed)"
        typer.echo(f"vicuna-cloud {v}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print vicuna-cloud's own version and exit (a command's "
                                 "--version is the Vicuna recipe version)."),
) -> None:
    """Fine-tune Vicuna-style chat models on preemptible cloud GPUs: resumable, and within budget."""
