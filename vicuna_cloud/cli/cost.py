"""`vicuna-cloud cost`: actual spend of runs, estimates before launch, and a Monte Carlo.

    vicuna-cloud cost [RUN] [--bucket URI] [--json]
    vicuna-cloud cost --estimate PRESET [--version V] [--data MANIFEST] [--cloud aws|gcp|any]
                      [--mfu X] [--preemptions-per-hour P] [--json]
    vicuna-cloud cost --simulate PRESET [--preemptions-per-hour P] [--restart-minutes M]
                      [--checkpoint-minutes I] [--trials N] [--seed S] [--json]

Tables and ``--json`` are built from the same figures (``_money`` rounds both alike).
"""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from vicuna_cloud.cli import app
from vicuna_cloud.cli.common import UserError, console, err_console, print_json


def _money(x: Optional[float]) -> str:
    return "-" if x is None else f"${x:,.2f}"


def _num(x: Optional[float], nd: int = 2) -> str:
    return "-" if x is None else f"{x:,.{nd}f}"


@app.command()
def cost(
    run: Optional[str] = typer.Argument(None, help="Run id (default: every run)."),
    bucket: Optional[str] = typer.Option(None, "--bucket", help="Bucket the run lives in "
                                         "(default: where this machine launched it)."),
    estimate_preset: Optional[str] = typer.Option(
        None, "--estimate", metavar="PRESET", help="Estimate a preset's cost before launch."),
    simulate_preset: Optional[str] = typer.Option(
        None, "--simulate", metavar="PRESET", help="Monte Carlo of a preset's spot run."),
    version: Optional[str] = typer.Option(None, "--version", help="Vicuna version (v1.1, ...)."),
    data: Optional[str] = typer.Option(None, "--data", help="Dataset dir or manifest.json "
                                       "(default: the version's reference workload)."),
    cloud: str = typer.Option("any", "--cloud", help="aws, gcp or any (cheapest)."),
    mfu: Optional[float] = typer.Option(None, "--mfu", help="Model FLOPs utilisation (0.40)."),
    rate: Optional[float] = typer.Option(None, "--preemptions-per-hour",
                                         help="Spot preemption rate (default 1/6)."),
    restart_minutes: Optional[float] = typer.Option(
        None, "--restart-minutes", help="Billed setup after each (re)start (10)."),
    checkpoint_minutes: Optional[float] = typer.Option(
        None, "--checkpoint-minutes", help="Checkpoint interval (default: Young's optimum)."),
    trials: int = typer.Option(2000, "--trials", help="Monte Carlo trials."),
    seed: int = typer.Option(0, "--seed"),
    no_skypilot: bool = typer.Option(False, "--no-skypilot",
                                     help="Do not ask SkyPilot's API server."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
):
    """Spend of a run (per segment), of all runs, or an estimate before launch."""
    if estimate_preset and simulate_preset:
        raise UserError("give either --estimate or --simulate, not both")
    if (estimate_preset or simulate_preset) and run:
        raise UserError("--estimate/--simulate take a preset, not a run id: drop RUN")
    if estimate_preset or simulate_preset:
        ctx = _estimate_context(estimate_preset or simulate_preset, version, data, cloud, mfu,
                                rate, restart_minutes, checkpoint_minutes)
        if estimate_preset:
            _show_estimate(ctx, json_out)
        else:
            _show_simulation(ctx, trials, seed, json_out)
        return
    if run:
        _show_run(run, bucket, json_out, skypilot=not no_skypilot)
    else:
        _show_all(bucket, json_out)


# --- actual spend -----------------------------------------------------------------------
def _open(uri: str):
    from vicuna_cloud.storage import StorageError, open_bucket
    from vicuna_cloud.storage.uri import InvalidBucketURI

    try:
        return open_bucket(uri)
    except (InvalidBucketURI, StorageError, ValueError) as e:
        raise UserError(f"--bucket {uri}: {str(e).splitlines()[0]}") from None


def _locate(run: str, bucket: Optional[str]):
    """(Bucket, job name) for a run: --bucket wins, else this machine's launch index."""
    from vicuna_cloud.runspec import RUN_ID_PATTERN
    from vicuna_cloud.skypilot import index

    if not RUN_ID_PATTERN.fullmatch(run):
        raise UserError(f"{run!r} is not a run id (lowercase letters, digits and '-'); "
                        "list runs with `vicuna-cloud cost`")
    rec = index.lookup(run)
    if bucket is None:
        if rec is None:
            raise UserError(f"unknown run {run!r} on this machine; pass --bucket URI where it "
                            "was launched")
        bucket = rec.bucket_uri
    return _open(bucket), (rec.job_name if rec and rec.job_name else run), \
        (rec.backend if rec else None)


def _show_run(run: str, bucket_uri: Optional[str], json_out: bool, skypilot: bool) -> None:
    from vicuna_cloud.costs import report
    from vicuna_cloud.storage import NotFoundError, StorageError

    bkt, job_name, backend = _locate(run, bucket_uri)
    try:
        rc = report.run_cost(bkt, run)
    except NotFoundError:
        raise UserError(f"no ledger for run {run!r} in {bkt.uri}: check the run id and "
                        "--bucket (the ledger appears once training starts)") from None
    except StorageError as e:
        raise UserError(f"cannot read {bkt.uri}: {str(e).splitlines()[0]}") from None
    if backend == "local" or all(s.where.startswith("local") for s in rc.segments):
        rc.skypilot = {"reachable": None, "note": "local run: no SkyPilot records"}
    elif skypilot:
        rc.skypilot = report.reconcile_with_skypilot(job_name, len(rc.segments))
        if rc.skypilot.get("reachable") is False:
            rc.skypilot["note"] += "; figures come from the ledger alone"
    else:
        rc.skypilot = {"reachable": None, "note": "SkyPilot not asked (--no-skypilot)"}
    if json_out:
        print_json(rc.to_dict())
        return
    render_run(rc)


def render_run(rc) -> None:
    t = Table(title=f"Cost of {rc.run_id}" + (f" ({rc.preset})" if rc.preset else ""),
              pad_edge=False)
    right = {"justify": "right", "no_wrap": True}
    wrap = {"overflow": "fold", "min_width": 5}
    for col, kw in (("#", right), ("where", wrap), ("instance", wrap), ("$/h", right),
                    ("hours", right), ("dollars", right), ("steps", right), ("lost", right),
                    ("end", {"no_wrap": True})):
        t.add_column(col, **kw)
    for i, s in enumerate(rc.segments, 1):
        price = _money(s.price_per_hour) + ("*" if s.price_flags else "")
        inst = (s.instance_type or "?") + (f" x{s.nodes}" if s.nodes > 1 else "") \
            + (" spot" if s.spot and s.where != "local" else "")
        t.add_row(str(i), s.where, inst, price, _num(s.billed_hours, 3), _money(s.cost_usd),
                  str(s.steps_gained), str(s.steps_lost), s.end_reason)
    console.print(t)
    tot = Table(title="Totals", show_header=False)
    tot.add_column("what")
    tot.add_column("value", justify="right")
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
        ("recoveries", str(rc.recoveries)),
        ("status", rc.status),
        ("verdict", rc.verdict),
    ]
    for k, v in rows:
        tot.add_row(k, v)
    console.print(tot)
    if rc.skypilot.get("note"):
        console.print(f"SkyPilot: {rc.skypilot['note']}", highlight=False)
    for n in rc.notes:
        console.print(f"note: {n}", highlight=False)
    if any(s.price_flags for s in rc.segments):
        console.print("* flagged by the catalog; see --json price_flags and price_source",
                      highlight=False)


def _show_all(bucket_uri: Optional[str], json_out: bool) -> None:
    from vicuna_cloud.costs import report
    from vicuna_cloud.skypilot import index
    from vicuna_cloud.storage import StorageError

    if bucket_uri:
        buckets = [bucket_uri]
    else:
        buckets = sorted({r.bucket_uri for r in index.all_runs()})
        if not buckets:
            raise UserError("no runs launched from this machine; pass --bucket URI to list "
                            "the runs in a bucket")
    lines = []
    for uri in buckets:
        try:
            lines.extend(report.all_runs(_open(uri)))
        except StorageError as e:
            err_console.print(f"[yellow]warning:[/] cannot read {uri}: {str(e).splitlines()[0]}")
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
def _estimate_context(preset_name, version, data, cloud, mfu, rate, restart_minutes,
                      checkpoint_minutes) -> dict:
    from vicuna_cloud.costs import estimate as est
    from vicuna_cloud import pricing
    from vicuna_cloud.recipes import RecipeError, get_preset

    cloud = (cloud or "any").lower().strip()
    if cloud not in ("aws", "gcp", "any"):
        raise UserError(f"unknown --cloud {cloud!r}; use aws, gcp or any")
    try:
        preset = get_preset(preset_name, version)
    except RecipeError as e:
        raise UserError(str(e)) from None
    if preset.hardware.bf16_peak_tflops <= 0:
        raise UserError(f"preset {preset.name} trains on the CPU: nothing to price; estimate "
                        "7b, 13b or 33b")
    a = est.Assumptions()
    kw = {}
    if mfu is not None:
        kw["mfu"] = mfu
    if rate is not None:
        kw["preemptions_per_hour"] = rate
    if restart_minutes is not None:
        kw["restart_minutes"] = restart_minutes
    if checkpoint_minutes is not None:
        kw["checkpoint_interval_minutes"] = checkpoint_minutes
    from dataclasses import replace

    a = replace(a, **kw)
    try:
        a.validate()
        if data:
            manifest, src = est.load_manifest(data)
            work = est.workload_from_manifest(manifest, preset, src)
        else:
            work = est.reference_workload(preset)
    except est.EstimateError as e:
        raise UserError(str(e)) from None
    try:
        prices = pricing.summarize(preset.hardware.accelerators, cloud)
    except pricing.PricingError as e:
        raise UserError(f"{e}; check --cloud") from None
    return {"preset": preset, "assumptions": a, "workload": work, "prices": prices,
            "cloud": cloud}


def estimate_payload(ctx: dict) -> dict:
    from vicuna_cloud.costs import estimate as est

    preset, a, work, prices = ctx["preset"], ctx["assumptions"], ctx["workload"], ctx["prices"]
    spot = prices.cheapest_spot.spot
    try:
        ours = est.estimate(preset, work, spot, a, "packed")
        fastchat = est.estimate(preset, work, spot, a, "padded")
    except est.EstimateError as e:
        raise UserError(str(e)) from None
    columns = {
        f"spot min ${spot:.2f}": (spot, True),
        f"spot median ${prices.spot_median:.2f}": (prices.spot_median, True),
        f"on-demand min ${prices.cheapest_on_demand.on_demand:.2f}":
            (prices.cheapest_on_demand.on_demand, False),
    }
    return {
        "preset": preset.name, "version": preset.version,
        "hardware": {"accelerators": preset.hardware.accelerators,
                     "nodes": preset.hardware.nodes,
                     "bf16_peak_tflops_per_gpu": preset.hardware.bf16_peak_tflops},
        "n_params": preset.arch.n_params, "epochs": preset.epochs,
        "max_length": preset.max_length,
        "workload": {"source": work.source, "conversations": work.conversations,
                     "samples": work.samples, "tokens_per_epoch": work.tokens_per_epoch,
                     "assistant_tokens_per_epoch": work.assistant_tokens_per_epoch,
                     "weighted_sample_length": work.weighted_sample_length,
                     "assumptions": list(work.assumptions)},
        "assumptions": a.__dict__,
        "prices": prices.to_dict(),
        "ours": ours.to_dict(), "fastchat": fastchat.to_dict(),
        "sensitivity": {"ours": est.sensitivity(preset, work, columns, a, "packed"),
                        "fastchat": est.sensitivity(preset, work, columns, a, "padded")},
        "published_budget_usd": preset.published_budget_usd,
    }


def _show_estimate(ctx: dict, json_out: bool) -> None:
    p = estimate_payload(ctx)
    if json_out:
        print_json(p)
        return
    o, f, pr = p["ours"], p["fastchat"], p["prices"]
    cs = pr["cheapest_spot"]
    console.print(
        f"[bold]Vicuna {p['preset']} {p['version']}[/] on {p['hardware']['nodes']} x "
        f"{p['hardware']['accelerators']}, {p['epochs']:g} epochs, max length {p['max_length']:,}",
        highlight=False)
    console.print(
        f"price: cheapest spot {_money(cs['spot'])}/node-hour ({cs['cloud']} {cs['region']}"
        f"/{cs['zone']} {cs['instance_type']}); spot median {_money(pr['spot_median'])}, "
        f"on-demand min {_money(pr['cheapest_on_demand']['on_demand'])} over {pr['zones']} zones",
        highlight=False)
    console.print(f"source: {cs['source']}", highlight=False)
    t = Table(title="Estimate: ours (packed) vs FastChat-faithful (padded, no packing)")
    t.add_column("")
    t.add_column("ours (packed)", justify="right")
    t.add_column(f"FastChat (padded to {p['max_length']:,})", justify="right")
    rows = [
        ("trained tokens", lambda e: f"{e['trained_tokens'] / 1e6:,.1f} M"),
        ("computed tokens", lambda e: f"{e['compute_tokens'] / 1e6:,.1f} M"),
        ("attention length S", lambda e: f"{e['attention_seq']:,.0f}"),
        ("FLOPs per token (6N + 12LHS)", lambda e: f"{e['flops_per_token'] / 1e9:,.2f} G"),
        ("total FLOPs", lambda e: f"{e['total_flops'] / 1e18:,.1f} E"),
        ("MFU", lambda e: f"{e['mfu']:.2f}"),
        ("compute hours", lambda e: _num(e["compute_hours"])),
        ("checkpoint every / stall",
         lambda e: f"{e['checkpoint_interval_minutes']:.0f} min / {e['checkpoint_stall_seconds']:.0f} s"),
        ("checkpoint hours", lambda e: _num(e["checkpoint_hours"])),
        ("setup hours", lambda e: _num(e["setup_hours"])),
        ("preemption loss hours", lambda e: _num(e["preemption_hours"])),
        ("expected preemptions", lambda e: _num(e["expected_preemptions"], 1)),
        ("billed node-hours", lambda e: _num(e["billed_hours"])),
        ("cost", lambda e: _money(e["cost_usd"])),
        ("verdict", lambda e: e["verdict"]),
    ]
    for label, fmt in rows:
        t.add_row(label, fmt(o), fmt(f))
    console.print(t)
    for key, title in (("ours", "ours"), ("fastchat", "FastChat-faithful")):
        sens = p["sensitivity"][key]
        st = Table(title=f"Sensitivity ({title}): cost by MFU x price")
        st.add_column("MFU", justify="right")
        for c in sens["columns"]:
            st.add_column(c, justify="right")
        for row in sens["rows"]:
            st.add_row(f"{row['mfu']:.2f}", *[_money(row[c]) for c in sens["columns"]])
        console.print(st)
    console.print("assumptions:", highlight=False)
    for line in p["workload"]["assumptions"]:
        console.print(f"  - {line}", highlight=False)
    a = p["assumptions"]
    console.print(
        f"  - MFU {a['mfu']}, {a['preemptions_per_hour']:.3g} preemptions/hour, "
        f"{a['restart_minutes']:g} min billed setup per start; formulas in "
        "vicuna_cloud/costs/estimate.py", highlight=False)
    if p["version"] not in ("v0", "v1.1") and p["published_budget_usd"]:
        console.print(f"  - the published ${p['published_budget_usd']:.0f} was for the 2023 "
                      "recipe (v0/v1.1: 70K conversations, 2,048 tokens); compare with "
                      "--version v1.1", highlight=False)


def simulation_payload(ctx: dict, trials: int, seed: int) -> dict:
    from vicuna_cloud.costs import estimate as est
    from vicuna_cloud.costs import simulate as sim

    preset, a, work, prices = ctx["preset"], ctx["assumptions"], ctx["workload"], ctx["prices"]
    if trials <= 0 or trials > 1_000_000:
        raise UserError(f"--trials {trials} must be between 1 and 1,000,000")
    price = prices.cheapest_spot.spot * preset.hardware.nodes
    e = est.estimate(preset, work, prices.cheapest_spot.spot, a, "packed")
    common = dict(work_hours=e.compute_hours, restart_hours=a.restart_minutes / 60.0,
                  stall_hours=e.checkpoint_stall_seconds / 3600.0,
                  rate_per_hour=a.preemptions_per_hour, price_per_hour=price, trials=trials,
                  seed=seed, budget=preset.published_budget_usd)
    chosen_min = round(e.checkpoint_interval_minutes, 1)
    intervals = sorted(set(sim.DEFAULT_INTERVALS_MIN) | {chosen_min})
    try:
        chosen = sim.simulate(interval_hours=chosen_min / 60.0, **common)
        table = sim.interval_table(intervals_minutes=intervals, **common)
    except sim.SimulationError as err:
        raise UserError(str(err)) from None
    return {"preset": preset.name, "version": preset.version,
            "price_per_hour_all_nodes": price, "price_source": prices.cheapest_spot.source,
            "work_hours": e.compute_hours, "restart_minutes": a.restart_minutes,
            "checkpoint_stall_seconds": e.checkpoint_stall_seconds,
            "preemptions_per_hour": a.preemptions_per_hour,
            "closed_form_cost_usd": e.cost_usd, "budget_usd": preset.published_budget_usd,
            "chosen": chosen.to_dict(), "intervals": [r.to_dict() for r in table]}


def _show_simulation(ctx: dict, trials: int, seed: int, json_out: bool) -> None:
    from rich.progress import Progress

    with Progress(transient=True, console=err_console) as prog:
        prog.add_task(f"simulating {trials:,} runs", total=None)
        p = simulation_payload(ctx, trials, seed)
    if json_out:
        print_json(p)
        return
    c = p["chosen"]
    console.print(
        f"[bold]{p['preset']} {p['version']}[/]: {p['work_hours']:.1f} h of compute at "
        f"{_money(p['price_per_hour_all_nodes'])}/h, {p['preemptions_per_hour']:.3g} "
        f"preemptions/h, restart {p['restart_minutes']:g} min, checkpoint stall "
        f"{p['checkpoint_stall_seconds']:.0f} s", highlight=False)
    console.print(
        f"checkpoint every {c['interval_minutes']:.0f} min: cost p50 {_money(c['cost_p50'])}, "
        f"p90 {_money(c['cost_p90'])}; billed hours p50 {c['hours_p50']:.1f}, p90 "
        f"{c['hours_p90']:.1f}; closed form {_money(p['closed_form_cost_usd'])}",
        highlight=False)
    t = Table(title=f"Checkpoint interval ({c['trials']:,} trials each)")
    for col in ("every (min)", "cost p50", "cost p90", "hours p50", "hours p90",
                "preemptions", "P(over budget)"):
        t.add_column(col, justify="right")
    for r in p["intervals"]:
        pob = "-" if r["p_over_budget"] is None else f"{r['p_over_budget']:.1%}"
        t.add_row(f"{r['interval_minutes']:.0f}", _money(r["cost_p50"]), _money(r["cost_p90"]),
                  f"{r['hours_p50']:.1f}", f"{r['hours_p90']:.1f}",
                  f"{r['preemptions_mean']:.1f}", pob)
    console.print(t)
    if p["budget_usd"]:
        console.print(f"budget: published ${p['budget_usd']:.0f}", highlight=False)
