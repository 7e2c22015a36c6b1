"""`launch --local` on the terminal: ``sdk.launch_local`` with its events drawn as a live
panel, then the cost report and where the exported model is."""

from __future__ import annotations

import shlex

from typing import Optional

from rich.markup import escape

from vicuna_cloud.cli.common import console, err_console


class _Screen:
    """Turns LocalEvents into what the terminal shows."""

    def __init__(self, preemptions: int, price_per_hour: float = 0.0):
        self.price_per_hour = price_per_hour
        self.preemptions = preemptions
        self.view = None
        self.status = None

    def __call__(self, ev) -> None:
        if self.status is not None and ev.kind != "attempt":
            self.status.stop()
            self.status = None
        if ev.kind == "preparing":
            self.status = console.status(ev.message)
            self.status.start()
        elif ev.kind == "note":
            console.print(f"[yellow]note:[/] {escape(ev.message)}", highlight=False)
        elif ev.kind in ("resuming", "data"):
            console.print(escape(ev.message), highlight=False, soft_wrap=True)
        elif ev.kind == "started":
            from vicuna_cloud.local.live_view import LiveView, ViewState

            console.print(escape(ev.message), highlight=False, soft_wrap=True)  # path unbroken
            state = ViewState(run_id=ev.run_id, planned_preemptions=self.preemptions,
                              price_per_hour=self.price_per_hour)
            self.view = LiveView(state, ev.progress, console=console)
            self.view.__enter__()
        elif ev.kind == "attempt" and self.view is not None:
            self.view.on_event(ev.attempt_kind, ev.attempt)

    def close(self) -> None:
        if self.status is not None:
            self.status.stop()
        if self.view is not None:
            self.view.__exit__(None, None, None)
            self.view = None


def run_local(*, preset: str, version: Optional[str], bucket: Optional[str],
              run_id: Optional[str], preemptions: int, seed: int, price_per_hour: float,
              max_cost: Optional[float], base_model: Optional[str] = None,
              hyper_overrides: Optional[dict] = None,
              checkpoint_steps: Optional[int] = None, take_over: bool = False,
              overrides: Optional[list[str]] = None, config: Optional[str] = None,
              before_after: bool = True) -> int:
    """Run it, show it; returns the process exit code. (``hyper_overrides``,
    ``checkpoint_steps`` and ``before_after``: Python callers, e.g. tests wanting fewer
    steps of the real model, or no before/after generation where they check the weights.)"""
    from vicuna_cloud import sdk

    req = sdk.LocalLaunchRequest(preset=preset, version=version, bucket=bucket, run_id=run_id,
                                 preemptions=preemptions, seed=seed,
                                 price_per_hour=price_per_hour, max_cost=max_cost,
                                 base_model=base_model, hyper_overrides=hyper_overrides,
                                 checkpoint_steps=checkpoint_steps, take_over=take_over,
                                 overrides=overrides or [], config=config)
    screen = _Screen(preemptions, price_per_hour)
    try:
        res = sdk.launch_local(req, on_event=screen)
    finally:
        screen.close()
    if res.cost is not None:
        from vicuna_cloud.cli.cost import render_run

        render_run(res.cost)
    else:
        err_console.print(f"[yellow]cost report unavailable: {res.cost_error}")
    bucket_flag = f" --bucket {shlex.quote(res.bucket_uri)}" if res.bucket_given else ""
    if res.outcome in ("completed", "stopped: budget"):
        _show_plot(res.run_id, res.bucket_uri)
    if res.note:
        console.print(f"[bold yellow]{res.note}[/]", highlight=False)
    if res.outcome in ("completed", "stopped: budget") and res.model_dir:
        console.print(f"[bold green]Exported model:[/] {res.model_dir}\n"
                      f"Try it: {_exe()} chat {res.run_id}{bucket_flag}", highlight=False,
                      soft_wrap=True)
        _show_outcome(res, preemptions, before_after)
    elif res.outcome == "cancelled":
        err_console.print(f"Cancelled. Resume with: vicuna-cloud launch {res.preset} --local "
                          f"--run-id {res.run_id}{bucket_flag}", highlight=False)
    elif res.error:
        err_console.print(f"[bold red]error:[/] {res.error}", highlight=False)
    return res.exit_code


def _exe() -> str:
    """How to call this command again: its name when on PATH, else its path (e.g. the
    project's .venv/bin/vicuna-cloud after `make demo`)."""
    import os
    import shutil
    import sys

    argv0 = sys.argv[0] if sys.argv and sys.argv[0].endswith("vicuna-cloud") else ""
    if shutil.which("vicuna-cloud") and (not argv0 or os.path.realpath(
            shutil.which("vicuna-cloud")) == os.path.realpath(argv0)):
        return "vicuna-cloud"
    return os.path.relpath(argv0) if argv0 else "vicuna-cloud"


def _show_plot(run_id: str, bucket_uri: str) -> None:
    """The loss curve in the terminal at the end of a local run (as `vicuna-cloud plot`)."""
    import shutil
    import sys

    from vicuna_cloud.errors import VicunaError
    from vicuna_cloud.sdk.plots import plot_run

    cols = shutil.get_terminal_size((100, 30)).columns
    try:
        print(plot_run(run_id, bucket_uri, width=max(40, min(cols, 100)), height=20,
                       color=sys.stdout.isatty()))
    except (VicunaError, ImportError) as e:
        err_console.print(f"[yellow]no loss plot: {escape(str(e))}", highlight=False)


def _show_outcome(res, preemptions: int, before_after: bool = True) -> None:
    from vicuna_cloud import bucket_keys
    from vicuna_cloud.runspec import RunSpec
    from vicuna_cloud.storage import open_bucket

    bkt = open_bucket(res.bucket_uri)
    spec = RunSpec.from_json(bkt.get_bytes(bucket_keys.run_spec(res.run_id)))
    show_outcome(bkt, spec, res.model_dir, preemptions, before_after)


def show_outcome(bucket, spec, model_dir: str, preemptions: int,
                 before_after: bool = True) -> None:
    """Eval loss before/after, the base vs tuned replies, and the weights verdict last."""
    from rich.table import Table

    from vicuna_cloud.ledger import read_ledger
    from vicuna_cloud.local import demo

    first, last = demo.eval_losses(bucket, spec.run_id)
    if first and last:
        console.print(f"Eval loss on {first.get('eval_conversations')} held-out conversations "
                      f"({first.get('eval_tokens')} trained tokens): "
                      f"{first['eval_loss']:.4f} at step {first['step']} -> "
                      f"{last['eval_loss']:.4f} at step {last['step']}", highlight=False)
    prompts = demo.held_out_prompts(bucket, spec) if before_after else []
    if prompts and not spec.model.base_model.startswith("config:"):
        try:
            with console.status(f"Before/after: base and tuned model on {len(prompts)} "
                                "held-out prompts"):
                cmp = demo.compare(spec.model.base_model, model_dir, spec.template, prompts)
        except (RuntimeError, OSError, ValueError) as e:
            err_console.print(f"[yellow]before/after unavailable: {e}")
        else:
            _print_comparison(cmp, Table)
    segments = len(read_ledger(bucket, spec.run_id).segments)
    console.print(f"[bold]{demo.weights_verdict(bucket, spec, preemptions, segments)}[/]",
                  highlight=False)


def _print_comparison(cmp, Table) -> None:
    from vicuna_cloud.local.demo import MAX_NEW_TOKENS

    n = len(cmp.prompts)
    table = Table(title=f"Before/after (greedy, up to {MAX_NEW_TOKENS} new tokens)",
                  show_lines=True)
    table.add_column("prompt", max_width=28)
    table.add_column("base model", max_width=44)
    table.add_column("fine-tuned", max_width=44)
    rows = list(zip(cmp.raw["prompts"], cmp.raw["base"]["replies"], cmp.raw["tuned"]["replies"]))
    for i, (p, b, t) in enumerate(rows[:3] + rows[n:]):
        mark = lambda r: r["reply"][:200] + ("  [green][EOS][/]" if r["ended"]  # noqa: E731
                                             else "  [red][no EOS: cut at the limit][/]")
        table.add_row(p[:120], mark(b), mark(t))
    console.print(table)
    console.print(f"Replies ending with EOS before {MAX_NEW_TOKENS} tokens, on {n} held-out "
                  f"prompts: base {cmp.base_ended:.0%} -> fine-tuned {cmp.tuned_ended:.0%}",
                  highlight=False)


