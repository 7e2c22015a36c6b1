"""The Typer application every command module registers itself on."""

from __future__ import annotations

import typer
from typer.core import TyperOption


def _flags_take_no_value() -> None:
    """Typer 0.29 prints a type beside every option, `<bool>` beside a flag, as if it
    took a value (`--json <bool>`); a flag shows nothing there. Display only: parsing and
    the options themselves are untouched."""
    shown = TyperOption.display_type_rich
    if getattr(shown, "_vicuna", False):
        return

    def display_type_rich(self, ctx):
        return None if self.is_flag else shown(self, ctx)

    display_type_rich._vicuna = True
    TyperOption.display_type_rich = display_type_rich


_flags_take_no_value()

app = typer.Typer(
    name="vicuna-cloud",
    help="Fine-tune Vicuna-style chat models on preemptible cloud GPUs: resumable, and within budget.",
    epilog="Example: vicuna-cloud launch small --local   (then: vicuna-cloud status RUN, "
           "vicuna-cloud plot RUN, vicuna-cloud chat RUN)",
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
