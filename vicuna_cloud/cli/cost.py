"""`vicuna-cloud cost`: actual spend of runs, estimates before launch, and a Monte Carlo.

    vicuna-cloud cost [RUN] [--bucket URI] [--json]
    vicuna-cloud cost --estimate PRESET [--version V] [--data MANIFEST] [--cloud aws|gcp|any]
                      [--mfu X] [--preemptions-per-hour P] [--json]
    vicuna-cloud cost --simulate PRESET [--preemptions-per-hour P] [--restart-minutes M]
                      [--checkpoint-minutes I] [--trials N] [--seed S] [--json]

The figures come from ``vicuna_cloud.sdk`` (cost_report, cost_overview, estimate,
simulate); tables and ``--json`` are built from the same figures.
"""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from vicuna_cloud.cli import completion
from vicuna_cloud.cli.app import app
from vicuna_cloud.cli.common import UserError, console, err_console, print_json


def _money(x: Optional[float]) -> str:
    return "-" if x is None else f"${x:,.2f}"


def _num(x: Optional[float], nd: int = 2) -> str:
    return "-" if x is None else f"{x:,.{nd}f}"


@app.command()
def cost(
    run: Optional[str] = typer.Argument(None, autocompletion=completion.run_ids, help="Run id (default: every run)."),
    bucket: Optional[str] = typer.Option(None, "--bucket", help="Bucket the run lives in "
                                         "(default: where this machine launched it)."),
    estimate_preset: Optional[str] = typer.Option(
        None, "--estimate", metavar="PRESET", autocompletion=completion.presets, help="Estimate a preset's cost before launch."),
    simulate_preset: Optional[str] = typer.Option(
        None, "--simulate", metavar="PRESET", autocompletion=completion.presets, help="Monte Carlo of a preset's spot run."),
    version: Optional[str] = typer.Option(None, "--version", help="Vicuna version (v1.1, ...).",
                                           autocompletion=completion.versions),
    data: Optional[str] = typer.Option(None, "--data", help="Dataset dir or manifest.json "
                                       "(default: the version's reference workload)."),
    cloud: str = typer.Option("any", "--cloud", help="aws, gcp or any (cheapest)."),
    mfu: Optional[float] = typer.Option(None, "--mfu", help="Model FLOPs utilisation (0.40)."),
    mfu_from: Optional[str] = typer.Option(
        None, "--mfu-from", metavar="FILE", help="Measured MFU: a run's metrics.jsonl or the "
        "GPU check's JSON (an 'mfu' field)."),
    rate: Optional[float] = typer.Option(None, "--preemptions-per-hour",
                                         help="Spot preemption rate (default 1/6)."),
    restart_minutes: Optional[float] = typer.Option(
        None, "--restart-minutes", help="Billed setup after each (re)start (10)."),
    checkpoint_minutes: Optional[float] = typer.Option(
        None, "--checkpoint-minutes", help="Checkpoint interval (default: Young's optimum)."),
    price_per_hour: Optional[float] = typer.Option(
        None, "--price-per-hour", metavar="USD", help="--estimate/--simulate: one node's spot "
        "price per hour instead of SkyPilot's catalog (e.g. offline, or a quote)."),
    trials: int = typer.Option(2000, "--trials", help="Monte Carlo trials."),
    seed: int = typer.Option(0, "--seed", help="--simulate: seed of the Monte Carlo draws."),
    no_skypilot: bool = typer.Option(False, "--no-skypilot",
                                     help="Do not ask SkyPilot's API server."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
):
    """Spend of a run (per segment), of all runs, or an estimate before launch.

    Example: vicuna-cloud cost --estimate 7b --version v1.1
    """
    if estimate_preset and simulate_preset:
        raise UserError("give either --estimate or --simulate, not both")
    if (estimate_preset or simulate_preset) and run:
        raise UserError("--estimate/--simulate take a preset, not a run id: drop RUN")
    if estimate_preset or simulate_preset:
        from vicuna_cloud import sdk

        if mfu is not None and mfu_from is not None:
            raise UserError("give either --mfu or --mfu-from, not both")
        req = sdk.EstimateRequest(
            preset=estimate_preset or simulate_preset, version=version, data=data,
            cloud=cloud, mfu=mfu, mfu_from=mfu_from, preemptions_per_hour=rate,
            restart_minutes=restart_minutes, checkpoint_minutes=checkpoint_minutes,
            price_per_hour=price_per_hour)
        if estimate_preset:
            _show_estimate(sdk.estimate(req), json_out)
        else:
            _show_simulation(req, trials, seed, json_out)
        return
    if run:
        _show_run(run, bucket, json_out, skypilot=not no_skypilot)
    else:
        _show_all(bucket, json_out)


# --- actual spend -----------------------------------------------------------------------
def _show_run(run: str, bucket_uri: Optional[str], json_out: bool, skypilot: bool) -> None:
    from vicuna_cloud import sdk

    rc = sdk.cost_report(run, bucket_uri, skypilot=skypilot)
    if json_out:
        print_json(rc.to_dict())
        return
    render_run(rc)


def render_run(rc) -> None:
    t = Table(title=f"Cost of {rc.run_id}" + (f" ({rc.preset})" if rc.preset else ""),
              pad_edge=False)
    right = {"justify": "right", "no_wrap": True}
    wrap = {"overflow": "fold", "min_width": 5}
    for col, kw in (("attempt", right), ("where", wrap), ("instance", wrap), ("$/h", right),
                    ("hours", right), ("node", right), ("disk", right), ("egress", right),
                    ("steps", right), ("lost", right), ("end", {"no_wrap": True})):
        t.add_column(col, **kw)
    for s in rc.segments:
        price = _money(s.price_per_hour) + ("*" if s.price_flags else "") \
            + ("~" if s.price_source.startswith("fallback") else "")
        inst = (s.instance_type or "?") + (f" x{s.nodes}" if s.nodes > 1 else "") \
            + (" spot" if s.spot and s.where != "local" else "")
        steps = f"{s.first_step + 1}-{s.last_step}" if s.steps_trained else "-"
        t.add_row(str(s.attempt), s.where, inst, price, _num(s.billed_hours, 3),
                  _money(s.node_usd), _money(s.disk_usd), _money(s.egress_usd), steps,
                  str(s.steps_lost), s.end_reason)
    console.print(t)
    bill = Table(title="Bill", show_header=True)
    bill.add_column("line")
    bill.add_column("dollars", justify="right")
    bill.add_column("source", overflow="fold")
    for ln in rc.lines:
        bill.add_row(ln.line, _money(ln.usd), ln.source)
    bill.add_row("total", _money(rc.spend_usd), "")
    console.print(bill)
    tot = Table(title="Totals", show_header=False)
    tot.add_column("what")
    tot.add_column("value", justify="right")
    sky = rc.skypilot or {}
    rows = [
        ("spend", _money(rc.spend_usd)),
        ("useful", _money(rc.useful_usd)),
        ("wasted", _money(rc.wasted_usd)),
        ("  lost work", _money(rc.wasted_lost_work_usd)),
        ("  setup (boot -> first step)", _money(rc.wasted_setup_usd)),
        ("  checkpoint stalls", _money(rc.wasted_checkpoint_usd)),
        ("tokens trained (kept)", f"{rc.tokens_useful:,} of {rc.tokens_trained:,}"),
        ("$ per million tokens", _money(rc.usd_per_million_tokens)),
        ("step", f"{rc.step:,}" + (f" of {rc.total_steps:,}" if rc.total_steps else "")),
        ("projected total", _money(rc.projected_total_usd)),
        ("budget", _money(rc.budget_usd)),
        ("recoveries (ledger)", str(rc.recoveries)),
    ]
    if sky.get("reachable"):
        rows += [("recoveries (SkyPilot)", str(sky.get("recovery_count", "-"))),
                 ("job duration (SkyPilot)", f"{sky.get('job_duration_hours') or 0:.3f} h"),
                 ("VM hours (ledger)", f"{sum(s.billed_hours for s in rc.segments):.3f} h")]
    rows += [("status", rc.status), ("verdict", rc.verdict)]
    for k, v in rows:
        tot.add_row(k, v)
    console.print(tot)
    if sky.get("note"):
        console.print(f"SkyPilot: {sky['note']}", highlight=False)
    for s in rc.segments:
        for n in s.notes:
            console.print(f"attempt {s.attempt}: {n}", highlight=False)
    for n in rc.notes:
        console.print(f"note: {n}", highlight=False)
    if any(s.price_flags for s in rc.segments):
        console.print("* flagged by the catalog; see --json price_flags and price_source",
                      highlight=False)
    if any(s.price_source.startswith("fallback") for s in rc.segments):
        console.print("~ the node could not price itself: its fail-closed fallback price",
                      highlight=False)


def _show_all(bucket_uri: Optional[str], json_out: bool) -> None:
    from vicuna_cloud import sdk

    lines, warnings = sdk.cost_overview(bucket_uri)
    for w in warnings:
        err_console.print(f"[yellow]warning:[/] {w}")
    if json_out:
        print_json([line.__dict__ for line in lines])
        return
    t = Table(title="Runs")
    for col in ("run", "preset", "segments", "spend", "step", "tokens", "status", "verdict"):
        t.add_column(col, justify="right" if col in ("segments", "spend", "step", "tokens")
                     else "left")
    for ln in lines:
        step = "-" if ln.step is None else (f"{ln.step:,}" + (f"/{ln.total_steps:,}"
                                                               if ln.total_steps else ""))
        t.add_row(ln.run_id, ln.preset or "?", str(ln.segments), _money(ln.spend_usd), step,
                  "-" if ln.tokens_useful is None else f"{ln.tokens_useful:,}", ln.status,
                  ln.verdict)
    console.print(t)
    total = sum(ln.spend_usd or 0 for ln in lines)
    console.print(f"{len(lines)} runs, {_money(total)} in all", highlight=False)


# --- estimate and simulation ------------------------------------------------------------
_EST_ROWS = (
    ("trained tokens", lambda e: f"{e.trained_tokens / 1e6:,.1f} M"),
    ("computed tokens", lambda e: f"{e.compute_tokens / 1e6:,.1f} M"),
    ("attention length S", lambda e: f"{e.attention_seq:,.0f}"),
    ("FLOPs per token (6N + 12LH(S+1)/2)", lambda e: f"{e.flops_per_token / 1e9:,.2f} G"),
    ("total FLOPs", lambda e: f"{e.total_flops / 1e18:,.1f} E"),
    ("MFU", lambda e: f"{e.mfu:.2f}"),
    ("compute hours", lambda e: _num(e.compute_hours)),
    ("checkpoint every / stall",
     lambda e: f"{e.checkpoint_interval_minutes:.0f} min / {e.checkpoint_stall_seconds:.0f} s"),
    ("checkpoint hours", lambda e: _num(e.checkpoint_hours)),
    ("setup hours", lambda e: _num(e.setup_hours)),
    ("preemption loss hours", lambda e: _num(e.preemption_hours)),
    ("expected preemptions", lambda e: _num(e.expected_preemptions, 1)),
    ("billed node-hours", lambda e: _num(e.billed_hours)),
    ("node", lambda e: _money(e.node_usd)),
    ("disk", lambda e: _money(e.disk_usd)),
    ("egress", lambda e: f"{_money(e.egress_usd)} ({e.egress_gb:,.0f} GB)"),
    ("controller", lambda e: "unknown (not priced)" if e.controller_usd is None
     else _money(e.controller_usd)),
    ("cost", lambda e: _money(e.cost_usd) + (f" + unknown ({', '.join(e.unpriced)})"
                                             if e.unpriced else "")),
    ("verdict", lambda e: e.verdict),
)


def _show_estimate(p, json_out: bool) -> None:
    """Tables of an ``sdk.EstimateReport`` (or its JSON, the same figures)."""
    if json_out:
        print_json(p.model_dump(mode="json"))
        return
    o, f, pr = p.ours, p.padded_ablation, p.prices
    cs = pr.cheapest_spot
    console.print(
        f"[bold]Vicuna {p.preset} {p.version}[/] on {p.hardware.nodes} x "
        f"{p.hardware.accelerators}, {p.epochs:g} epochs, max length {p.max_length:,}",
        highlight=False)
    where = " ".join(x for x in (cs.cloud, "/".join(y for y in (cs.region, cs.zone) if y),
                                 cs.instance_type) if x)
    console.print(
        f"price: cheapest spot {_money(cs.spot)}/node-hour ({where}); "
        f"spot median {_money(pr.spot_median)}, "
        f"on-demand min {_money(pr.cheapest_on_demand.on_demand)} over {pr.zones} "
        "zones (rows the catalog flags never make these minima)", highlight=False)
    console.print(f"source: {cs.source}", highlight=False)
    t = Table(title="Estimate: ours (packed) vs a padding ablation (FastChat's padding, "
              "at our MFU)")
    t.add_column("")
    t.add_column("ours (packed)", justify="right")
    t.add_column(f"padding ablation (padded to {p.max_length:,}, equal MFU)", justify="right")
    for label, fmt in _EST_ROWS:
        t.add_row(label, fmt(o), fmt(f))
    console.print(t)
    _show_lmsys(p.lmsys_2023_as_run)
    for sens, title in ((p.sensitivity.ours, "ours"),
                        (p.sensitivity.padded_ablation, "padding ablation")):
        st = Table(title=f"Sensitivity ({title}): cost by MFU x price")
        st.add_column("MFU", justify="right")
        for c in sens.columns:
            st.add_column(c, justify="right")
        for row in sens.rows:
            st.add_row(f"{row['mfu']:.2f}", *[_money(row[c]) for c in sens.columns])
        console.print(st)
    console.print("assumptions:", highlight=False)
    for line in [*p.workload.assumptions, *p.bill_rates.sources]:
        console.print(f"  - {line}", highlight=False)
    a = p.assumptions
    console.print(
        f"  - MFU {a.mfu:.3g} ({a.mfu_source}), {a.preemptions_per_hour:.3g} "
        f"preemptions/hour, {a.restart_minutes:g} min billed setup per start; formulas in "
        "vicuna_cloud/costs/estimate.py", highlight=False)
    ref = p.budget_reference
    if ref.usd is not None:
        console.print(f"  - budget reference: ${ref.usd:,.0f} ({ref.how})", highlight=False)


def _show_lmsys(lm) -> None:
    if lm is None:
        return
    t = Table(title=f"LMSYS 2023 as run: {lm.published_hours:g} node-hours (padded "
              f"recipe, implied MFU {lm.implied_mfu_padded:.2f}), at today's catalog")
    for col in ("spot min", "spot median", "on-demand min", "+ disk, controller",
                "published"):
        t.add_column(col, justify="right")
    n = lm.node_usd
    t.add_row(_money(n["spot_min"]), _money(n["spot_median"]), _money(n["on_demand_min"]),
              "unknown" if lm.disk_and_controller_usd is None
              else _money(lm.disk_and_controller_usd), _money(lm.published_budget_usd))
    console.print(t)
    console.print(f"  {lm.note}", highlight=False)


def _show_simulation(req, trials: int, seed: int, json_out: bool) -> None:
    from rich.progress import Progress

    from vicuna_cloud import sdk

    with Progress(transient=True, console=err_console) as prog:
        prog.add_task(f"simulating {trials:,} runs", total=None)
        p = sdk.simulate(req, trials, seed)
    if json_out:
        print_json(p.model_dump(mode="json"))
        return
    c = p.chosen
    console.print(
        f"[bold]{p.preset} {p.version}[/]: {p.work_hours:.1f} h of compute at "
        f"{_money(p.price_per_hour_all_nodes)}/h, {p.preemptions_per_hour:.3g} "
        f"preemptions/h, restart {p.restart_minutes:g} min, checkpoint stall "
        f"{p.checkpoint_stall_seconds:.0f} s", highlight=False)
    console.print(
        f"checkpoint every {c.interval_minutes:.0f} min: cost p50 {_money(c.cost_p50)}, "
        f"p90 {_money(c.cost_p90)}; billed hours p50 {c.hours_p50:.1f}, p90 "
        f"{c.hours_p90:.1f}; closed form {_money(p.closed_form_cost_usd)}",
        highlight=False)
    t = Table(title=f"Checkpoint interval ({c.trials:,} trials each)")
    for col in ("every (min)", "cost p50", "cost p90", "hours p50", "hours p90",
                "preemptions", "P(over budget)"):
        t.add_column(col, justify="right")
    for r in p.intervals:
        pob = "-" if r.p_over_budget is None else f"{r.p_over_budget:.1%}"
        t.add_row(f"{r.interval_minutes:.0f}", _money(r.cost_p50), _money(r.cost_p90),
                  f"{r.hours_p50:.1f}", f"{r.hours_p90:.1f}",
                  f"{r.preemptions_mean:.1f}", pob)
    console.print(t)
    if p.budget_usd:
        console.print(f"budget: published ${p.budget_usd:.0f}", highlight=False)
