"""`vicuna-cloud data`: prepare raw ShareGPT dumps, upload them, inspect the loss mask.

    vicuna-cloud data prepare RAW [RAW...] --out DIR [--tokenizer T] [--max-length 2048]
        [--template vicuna_v1.1] [--lang en|all] [--skip-lang ko] [--decontaminate F.jsonl]
        [--merge F.json] [--long-pair truncate|drop] [--assistant-role bard]
        [--workers N] [--force] [--json]
    vicuna-cloud data upload DIR URI [--json]
    vicuna-cloud data inspect FILE [--n 3] [--tokenizer T] [--template T] [--json]

Heavy imports (transformers, lxml, boto3) happen inside the commands.
"""

from __future__ import annotations

import shlex

from typing import List, Optional

import typer
from rich.table import Table

from vicuna_cloud.cli.app import app
from vicuna_cloud.cli.common import console, err_console, print_json

def _cores() -> int:
    """The default --workers (data/pipeline.py's usable_cores, without importing it)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


data_app = typer.Typer(help="Clean raw ShareGPT data, upload it, inspect the loss mask.",
                        epilog="Example: vicuna-cloud data prepare sharegpt_raw.json --out data/v1",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("prepare")
def prepare_cmd(
    raw: List[str] = typer.Argument(..., help="Raw ShareGPT .json/.jsonl files."),
    out: str = typer.Option(..., "--out", help="Output directory (train.jsonl, manifest.json)."),
    tokenizer: str = typer.Option("builtin:llama-sp", "--tokenizer",
                                  help="Tokenizer dir, HF id, or builtin:llama-sp."),
    max_length: int = typer.Option(2048, "--max-length", help="Max tokens per piece."),
    template: str = typer.Option("vicuna_v1.1", "--template", help="Chat template."),
    lang: str = typer.Option("all", "--lang", help="Keep only this language (ISO code) or all."),
    skip_lang: List[str] = typer.Option([], "--skip-lang", help="Drop this language (repeatable)."),
    decontaminate: List[str] = typer.Option([], "--decontaminate",
                                            help="Evaluation prompts JSONL (repeatable)."),
    merge: List[str] = typer.Option(
        [], "--merge", help="Curated conversations to append (repeatable): kept as they "
        "are (no blocked words, language or length filters), never held out. Identity data "
        "(\"Who are you?\" -> your model's name) belongs here."),
    long_pair: str = typer.Option("truncate", "--long-pair",
                                  help="A single pair over --max-length: truncate or drop."),
    blocked_words: Optional[str] = typer.Option(
        None, "--blocked-words", help="Comma-separated blocked words ('' for none); "
        "default: openai,chatgpt, as FastChat. A conversation mentioning one is dropped."),
    assistant_role: List[str] = typer.Option(
        [], "--assistant-role", help="Keep another assistant's turns as gpt (repeatable, "
        "e.g. --assistant-role bard --assistant-role bing); by default only "
        "gpt/assistant/chatgpt, and conversations with other assistants are dropped."),
    eval_fraction: float = typer.Option(
        0.02, "--eval-fraction", help="Hold out this share of conversations (by id hash) "
        "to eval.jsonl for the trainer's eval loss; 0 = none."),
    eval_max: int = typer.Option(300, "--eval-max", help="At most this many held out."),
    workers: Optional[int] = typer.Option(
        None, "--workers", min=1, help="Worker processes; default: every usable core "
        f"({_cores()} here; one for inputs under 4 MB), as FastChat's cleaner."),
    max_record_mb: float = typer.Option(
        16.0, "--max-record-mb", min=0.001,
        help="Largest conversation record read (MB); larger ones are dropped as too_large. "
             "Bounds memory."),
    force: bool = typer.Option(False, "--force", help="Replace a different dataset in --out."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Clean, filter, split and count a raw dump into DIR/train.jsonl + manifest.json.

    Example: vicuna-cloud data prepare sharegpt_raw.json --out data/v1 --max-length 2048
    """
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                               TimeRemainingColumn)

    from vicuna_cloud import sdk

    kwargs = {}
    if blocked_words is not None:
        kwargs["blocked_words"] = tuple(w.strip() for w in blocked_words.split(",") if w.strip())
    opts = sdk.PrepareOptions(
        tokenizer=tokenizer, template=template, max_length=max_length, lang=lang,
        skip_lang=tuple(skip_lang), decontaminate=tuple(decontaminate), merge=tuple(merge),
        long_pair=long_pair, eval_fraction=eval_fraction, eval_max=eval_max,
        workers=workers or 0, assistant_roles=tuple(assistant_role),
        max_record_bytes=int(max_record_mb * (1 << 20)),
        **kwargs)
    with Progress(TextColumn("[bold]prepare"), BarColumn(), DownloadColumn(),
                  TextColumn("{task.fields[convs]:,} conversations"), TimeRemainingColumn(),
                  console=err_console, transient=True, disable=as_json) as prog:
        task = prog.add_task("prepare", total=None, convs=0)

        def progress(done: int, total: int, convs: int) -> None:
            prog.update(task, completed=done, total=total, convs=convs)

        result = sdk.prepare_data(raw, out, opts, force=force, progress=progress)
    m = result.manifest
    for w in m.get("warnings", []):
        err_console.print(f"warning: {w}", highlight=False, markup=False)
    if as_json:
        print_json(m)
        return
    c, t = m["counts"], m["tokens"]
    table = Table(title=f"{out}  ({result.seconds:.1f} s, "
                        f"{c['input'] / max(result.seconds, 1e-9):,.0f} conversations/s)")
    table.add_column("")
    table.add_column("count", justify="right")
    table.add_row("input conversations", f"{c['input']:,}")
    table.add_row("kept", f"{c['kept']:,}")
    for reason, n in sorted(c["dropped"].items(), key=lambda kv: -kv[1]):
        table.add_row(f"  dropped: {reason}", f"{n:,}")
    for reason, n in sorted(c.get("removed_turns", {}).items(), key=lambda kv: -kv[1]):
        table.add_row(f"  turns removed from kept ones: {reason}", f"{n:,}")
    table.add_row("pieces written (after splitting)", f"{c['split_pieces']:,}")
    if m.get("eval"):
        table.add_row("  held out for eval (conversations / pieces)",
                      f"{c['eval_conversations']:,} / {c['eval_pieces']:,}")
    table.add_row("  single pairs kept for truncation", f"{c['kept_for_truncation']:,}")
    table.add_row("tokens (total / trained)", f"{t['total']:,} / {t['assistant']:,}")
    table.add_row("tokens per piece (mean / p50 / p90 / max)",
                  f"{t['mean']:,.0f} / {t['p50']:,} / {t['p90']:,} / {t['max']:,}")
    table.add_row("train.jsonl sha256", m["output"]["sha256"])
    console.print(table)
    console.print(f"next: vicuna-cloud data upload {shlex.quote(out)} s3://BUCKET/PREFIX",
                  highlight=False)


@data_app.command("upload")
def upload_cmd(
    directory: str = typer.Argument(..., help="A directory written by `data prepare`."),
    uri: str = typer.Argument(..., help="s3://bucket/prefix, gs://bucket/prefix or a local dir."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Upload content-addressed to URI/datasets/<sha256>/ (no-op when already there).

    Example: vicuna-cloud data upload data/v1 s3://my-bucket/vicuna
    """
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    from vicuna_cloud import sdk

    with Progress(TextColumn("[bold]upload"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), console=err_console, transient=True,
                  disable=as_json) as prog:
        task = prog.add_task("upload", total=None)
        res = sdk.upload_data(directory, uri, progress=lambda n: prog.advance(task, n),
                              on_size=lambda n: prog.update(task, total=n))
    if as_json:
        print_json({"uri": res.uri, "sha256": res.sha256, "bytes": res.bytes,
                    "uploaded": res.uploaded})
        return
    what = "uploaded and verified" if res.uploaded else "already there (nothing uploaded)"
    console.print(f"{what}: {res.uri}  ({res.bytes:,} bytes, sha256 {res.sha256[:12]}...)")
    console.print(f"next: vicuna-cloud launch 7b --data {shlex.quote(res.uri)}", highlight=False)


@data_app.command("inspect")
def inspect_cmd(
    file: str = typer.Argument(..., help="train.jsonl (or any ShareGPT .json/.jsonl)."),
    n: int = typer.Option(3, "--n", help="How many conversations."),
    tokenizer: str = typer.Option("builtin:llama-sp", "--tokenizer",
                                  help="Tokenizer dir, HF id, or builtin:llama-sp (as prepared)."),
    template: str = typer.Option("vicuna_v1.1", "--template",
                                 help="Chat template the file was prepared with."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Show conversations rendered: trained tokens highlighted, masked tokens dim.

    Example: vicuna-cloud data inspect data/v1/train.jsonl --n 3
    """
    from rich.text import Text

    from vicuna_cloud import sdk

    convs = sdk.inspect_data(file, n=n, tokenizer=tokenizer, template=template)
    if as_json:
        print_json([c.to_json() for c in convs])
        return
    plain = not console.is_terminal  # piped: colour is lost, so brackets mark trained text
    for c in convs:
        text = Text()
        pos, inside = 0, False
        for s, e, trained in c.tokens:
            if e <= s:
                continue
            if s > pos:
                text.append(c.text[pos:s], style="dim")
            if plain and trained != inside:
                text.append("[[" if trained else "]]")
                inside = trained
            text.append(c.text[max(s, pos):e], style="bold green" if trained else "dim")
            pos = max(pos, e)
        if plain and inside:
            text.append("]]")
        text.append(c.text[pos:], style="dim")
        legend = ("\\[\\[trained]], the rest masked" if plain
                  else "[bold green]green[/] = trained, dim = masked")
        console.rule(f"{c.id}: {c.n_tokens} tokens, {c.n_trained} trained ({legend})")
        console.print(text)
