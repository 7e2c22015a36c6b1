"""CLI commands for runs already launched: status, logs, cancel (``vicuna_cloud.sdk.runs``)."""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from vicuna_cloud.cli import completion
from vicuna_cloud.cli.app import app
from vicuna_cloud.cli.common import console, err_console, print_json
from vicuna_cloud.durations import hms



def _money(x: Optional[float]) -> str:
    return "-" if x is None else f"${x:,.2f}"


def detail_table(d) -> Table:
    """`status RUN`: one run in detail (the --json twin is RunDetail itself)."""
    t = Table(title=f"run {d.run_id}", show_header=False, pad_edge=False)
    t.add_column("what", style="dim", no_wrap=True)
    t.add_column("value", overflow="fold")
    step = f"{d.step:,}" + (f" / {d.total_steps:,}" if d.total_steps else "")
    if d.total_steps:
        step += f" ({100 * d.step / d.total_steps:.0f}%)"
    spend = _money(d.spend_usd) + (f", projected {_money(d.projected_total_usd)}"
                                   if d.projected_total_usd is not None else "")
    hb = "-" if d.last_heartbeat is None else f"{d.last_heartbeat} ({hms(d.heartbeat_age_seconds)} ago)"
    rows = [("state", d.state), ("phase", d.phase), ("step", step),
            ("loss", "-" if d.loss is None else f"{d.loss:.4f}")]
    if d.eval_loss is not None:
        rows.append(("eval loss", f"{d.eval_loss:.4f}"))
    rows.append(("tokens/s", "-" if d.tokens_per_s is None else f"{d.tokens_per_s:,.0f}"))
    if d.mfu is not None:
        rows.append(("MFU", f"{100 * d.mfu:.1f}%"))
    rows += [("ETA", hms(d.eta_seconds)), ("spend", spend),
             ("budget", f"{_money(d.budget_usd)} ({d.verdict})"),
             ("recoveries", str(d.recoveries) + (
                 f" (SkyPilot: {d.skypilot_recoveries})"
                 if d.skypilot_recoveries not in (None, d.recoveries) else "")),
             ("checkpoints", str(d.checkpoints)),
             ("segments", "; ".join(f"{s.index}: steps {s.steps}, {_money(s.cost_usd)}, {s.end}"
                                    for s in d.segments)),
             ("last heartbeat", hb), ("bucket", d.bucket)]
    if d.overrides:
        rows.insert(3, ("overrides", ", ".join(f"{k}={v}" for k, v in d.overrides.items())))
    for k, v in rows:
        t.add_row(k, v)
    return t


def list_table(rep, width: int) -> Table:
    """Every run, one line each; at 80 columns ids are ellipsized and columns dropped."""
    t = Table(title="vicuna-cloud runs", pad_edge=False)
    wide = width >= 120
    cols = [("run", None if wide else 24), ("state", None if wide else 16), ("progress", None),
            ("recov.", 6)]
    if wide:
        cols += [("job", 5), ("ckpts", 5), ("bucket", None)]
    for name, w in cols:
        t.add_column(name, no_wrap=True, overflow="ellipsis", max_width=w)
    for r in rep.runs:
        row = [r.run_id, r.state, r.progress,
               str(r.segments - 1) if r.segments else "-"]
        if wide:
            row += [str(r.job_id if r.job_id is not None else "-"), str(r.checkpoints), r.bucket]
        t.add_row(*row)
    return t


@app.command()
def status(
    run: Optional[str] = typer.Argument(None, autocompletion=completion.run_ids, help="Run id; without it, every run launched "
                                        "from this machine, one line each."),
    bucket: Optional[str] = typer.Option(None, "--bucket", metavar="URI",
                                         help="Bucket the run lives in, when it was launched "
                                         "from another machine."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output (the same "
                                  "figures as the table)."),
    watch: Optional[float] = typer.Option(None, "--watch", "-w", metavar="SECONDS",
                                          help="Redraw every SECONDS until the run stops "
                                          "(Ctrl-C to leave; the run keeps going)."),
):
    """Where runs are: one run in detail (phase, step, loss, ETA, spend), or one line per run.

    With RUN: phase, step, loss, eval loss, tokens/s, ETA, spend and projection, budget,
    recoveries (as `cost RUN` counts them), segments and the last heartbeat.

    Example: vicuna-cloud status tiny-20261201-101500 --watch 10
    """
    from vicuna_cloud import sdk

    if run is not None:
        from vicuna_cloud.sdk.run_detail import run_detail

        if json_out:
            print_json(run_detail(run, bucket).model_dump(mode="json"))
            return
        if watch:
            _watch(lambda: detail_table(run_detail(run, bucket)), watch,
                   done=lambda: run_detail(run, bucket).phase.startswith(("completed", "finished",
                                                                          "stopped", "not running")))
            return
        d = run_detail(run, bucket)
        if d.api_error:
            err_console.print(f"[yellow]SkyPilot API server unreachable ({d.api_error}); "
                              "showing what the bucket knows[/]")
        console.print(detail_table(d))
        return
    rep = sdk.status(None, bucket)
    if json_out:
        print_json(rep.model_dump(mode="json") if rep.runs else [])
        return
    if not rep.runs:
        console.print("no runs launched from this machine yet")
        return
    if rep.api_error:
        err_console.print(f"[yellow]SkyPilot API server unreachable ({rep.api_error}); showing "
                          "what the bucket knows[/]")
    if watch:
        _watch(lambda: list_table(sdk.status(None, bucket), console.width), watch, done=lambda: False)
        return
    console.print(list_table(rep, console.width))


def _watch(make, every: float, done) -> None:
    """Redraw ``make()`` in place every ``every`` seconds until ``done()`` or Ctrl-C."""
    import time

    from rich.live import Live

    try:
        with Live(make(), console=console, auto_refresh=False) as live:
            while not done():
                time.sleep(max(0.5, every))
                live.update(make(), refresh=True)
    except KeyboardInterrupt:
        pass


@app.command()
def logs(
    run: str = typer.Argument(..., help="Run id.", autocompletion=completion.run_ids),
    follow: bool = typer.Option(True, "--follow/--no-follow",
                                help="Keep printing new lines until the run stops."),
    bucket: Optional[str] = typer.Option(None, "--bucket", metavar="URI",
                                         help="Bucket the run lives in, when it was launched "
                                         "from another machine."),
):
    """Print the run's training log (train.log of a local run, the cloud job's log).

    Example: vicuna-cloud logs tiny-20261201-101500 --no-follow
    """
    from vicuna_cloud import sdk

    raise typer.Exit(sdk.logs(run, bucket, follow=follow))


@app.command()
def cancel(
    run: str = typer.Argument(..., help="Run id.", autocompletion=completion.run_ids),
    bucket: Optional[str] = typer.Option(None, "--bucket", metavar="URI",
                                         help="Bucket the run lives in, when it was launched "
                                         "from another machine."),
):
    """Stop a run gracefully: it checkpoints first, and relaunching the run id resumes.

    Example: vicuna-cloud cancel tiny-20261201-101500
    """
    from vicuna_cloud import sdk

    rec = sdk.find_run(run, bucket)
    ident = sdk.cancel(run, bucket)
    if rec.backend == "local":
        console.print(f"cancelled local run {run} (launcher pid {ident} exited after its "
                      "checkpoint); resume with the same --run-id", highlight=False)
    else:
        console.print(f"cancel requested for job {ident} (run {run}; it was running); its "
                      "checkpoints stay in the bucket",
                      highlight=False)
