"""`vicuna-cloud delta make|apply`: publish a fine-tune as delta weights, and rebuild it.

    vicuna-cloud delta make --base BASE_DIR --target MODEL_DIR --out DELTA_DIR [--json]
    vicuna-cloud delta apply --base BASE_DIR --delta DELTA_DIR --out MODEL_DIR [--json]

Thin: ``sdk.make_delta`` / ``sdk.apply_delta`` (vicuna_cloud.delta: torch-free, streaming, exact).
"""

from __future__ import annotations

import typer
from rich.table import Table

from vicuna_cloud.cli.app import app
from vicuna_cloud.cli.common import console, print_json

delta_app = typer.Typer(help="Delta weights: target minus base, exact, tensor by tensor.",
                        epilog="Example: vicuna-cloud delta make --base ./llama-7b --target ./vicuna-7b --out ./delta",
                        no_args_is_help=True)
app.add_typer(delta_app, name="delta")


def _show(title: str, result, json_out: bool) -> None:
    if json_out:
        print_json(result.as_dict())
        return
    t = Table(title=title, show_header=False)
    t.add_row("directory", result.out)
    t.add_row("tensors", f"{result.tensors} ({result.delta_tensors} as deltas, "
              f"{len(result.full_tensors)} whole)")
    if result.full_tensors:
        t.add_row("stored whole", ", ".join(result.full_tensors[:6])
                  + (" ..." if len(result.full_tensors) > 6 else ""))
    t.add_row("weights", f"{result.weight_bytes / 2**20:,.1f} MiB in {result.seconds:.1f} s")
    t.add_row("base fingerprint", result.base_fingerprint[:16])
    for k, v in result.extra.items():
        t.add_row(k, str(v))
    console.print(t)


@delta_app.command("make")
def make_cmd(
    base: str = typer.Option(..., "--base", help="Base model directory (safetensors)."),
    target: str = typer.Option(..., "--target", help="Fine-tuned model directory (safetensors)."),
    out: str = typer.Option(..., "--out", help="New directory for the delta."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Write target-minus-base deltas with a manifest of hashes (exact, streaming).

    Example: vicuna-cloud delta make --base ./llama-7b --target ./vicuna-7b --out ./vicuna-7b-delta
    """
    from vicuna_cloud import sdk

    result = sdk.make_delta(base, target, out)
    _show("Delta written", result, json_out)


@delta_app.command("apply")
def apply_cmd(
    base: str = typer.Option(..., "--base", help="The base model directory the delta was made from."),
    delta: str = typer.Option(..., "--delta", help="Delta directory from `delta make`."),
    out: str = typer.Option(..., "--out", help="New directory for the rebuilt model."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Rebuild the fine-tuned model from base + delta; refuses a base that is not the one.

    Example: vicuna-cloud delta apply --base ./llama-7b --delta ./vicuna-7b-delta --out ./vicuna-7b
    """
    from vicuna_cloud import sdk

    result = sdk.apply_delta(base, delta, out)
    _show("Model rebuilt", result, json_out)
