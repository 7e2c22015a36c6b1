"""CLI commands: presets, render, launch (cloud or --local).

Parse, call ``vicuna_cloud.sdk``, render. Import-time cost matters (`vicuna-cloud --help`):
only typer, rich and our light modules at the top; the SDK is imported inside commands.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from vicuna_cloud.cli import completion
from vicuna_cloud.cli.app import app
from vicuna_cloud.cli.common import UserError, console, err_console, print_json

EXAMPLE_BUCKET = "s3://my-vicuna-bucket"  # = sdk.models.EXAMPLE_BUCKET (kept light here)
DEFAULT_SEED = 42


# --- presets ------------------------------------------------------------------------------
@app.command()
def presets(json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """List the Vicuna presets (size x version) with hardware and a memory estimate.

    Example: vicuna-cloud presets --json
    """
    from vicuna_cloud import sdk

    rows = [r.model_dump() for r in sdk.presets()]
    if json_out:
        print_json(rows)
        return
    table = Table(title="Vicuna presets (* = default version)")
    for col in ("preset", "version", "base model", "template", "max len", "hardware",
                "est. GiB/GPU", "fits", "published $"):
        table.add_column(col, overflow="fold")
    for r in rows:
        hw = r["accelerators"] + (f" x{r['nodes']}" if r["nodes"] > 1 else "")
        table.add_row(
            r["preset"], r["version"] + ("*" if r["default"] else ""), r["base_model"],
            r["template"], str(r["max_length"]), hw,
            f"{r['gpu_memory_estimate_gib']:.1f}" if r["gpu_memory_gib"] else "-",
            "yes" if r["fits"] else "[red]no[/]",
            f"{r['published_budget_usd']:.0f}" if r["published_budget_usd"] else "-",
        )
    console.print(table)


# --- options render and launch share (one definition, so the two stay in step) ----------
PRESET_ARG = typer.Argument(..., help="tiny, small, 7b, 13b or 33b.",
                            autocompletion=completion.presets)
VERSION_OPT = typer.Option(None, "--version", help="v0, v1.1, v1.3, v1.5, v1.5-16k.",
                           autocompletion=completion.versions)
BASE_MODEL_OPT = typer.Option(None, "--base-model", help="Hugging Face id.")
NODES_OPT = typer.Option(None, "--nodes", help="Nodes (VMs) of the run (default: the preset's).")
GPUS_OPT = typer.Option(None, "--gpus", help="e.g. A100-80GB:8")
CLOUD_OPT = typer.Option(None, "--cloud",
                         help="aws, gcp or any; default: the bucket's cloud (any crosses "
                              "clouds: egress on every checkpoint).")
REGION_OPT = typer.Option(None, "--region",
                          help="A region name or any; default: the bucket's region when "
                               "launch can read it.")
RUN_ID_OPT = typer.Option(None, "--run-id", autocompletion=completion.run_ids, help="The run's id (default: a new one); an existing id resumes that run.")
SET_OPT = typer.Option(
    None, "--set", metavar="KEY=VALUE", autocompletion=completion.override_keys,
    help="Override one run-spec value, e.g. --set hyper.learning_rate=1e-5 (repeatable; "
         "hyper.* and checkpoint.* keys, checked by the run spec's model).")
CONFIG_OPT = typer.Option(
    None, "--config", metavar="FILE.yaml",
    help="YAML file of overrides, the same keys nested (hyper: {epochs: 2}); --set wins.")


# --- render -------------------------------------------------------------------------------
@app.command()
def render(
    preset: str = PRESET_ARG,
    version: Optional[str] = VERSION_OPT,
    base_model: Optional[str] = BASE_MODEL_OPT,
    spot: bool = typer.Option(True, "--spot/--no-spot", help="Spot VMs (default) or on-demand."),
    nodes: Optional[int] = NODES_OPT,
    gpus: Optional[str] = GPUS_OPT,
    cloud: Optional[str] = CLOUD_OPT,
    region: Optional[str] = REGION_OPT,
    bucket: str = typer.Option(EXAMPLE_BUCKET, "--bucket", metavar="URI",
                               help="s3://BUCKET/prefix or gs://BUCKET/prefix the task names."),
    data: Optional[str] = typer.Option(None, "--data", help="Dataset URI (datasets/<sha256>)."),
    run_id: Optional[str] = RUN_ID_OPT,
    name: Optional[str] = typer.Option(None, "--name", help="Managed job name (default: the run id)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write here, not stdout."),
    set_: Optional[list[str]] = SET_OPT,
    config: Optional[str] = CONFIG_OPT,
):
    """Write the SkyPilot task YAML for a preset, checked by SkyPilot's own parser.

    Example: vicuna-cloud render 7b --version v1.5 --set hyper.learning_rate=1e-5 -o task.yaml
    """
    from vicuna_cloud import sdk

    text = sdk.render(sdk.RenderRequest(
        preset=preset, version=version, base_model=base_model, spot=spot, nodes=nodes,
        gpus=gpus, cloud=cloud, region=region, bucket=bucket, data=data, run_id=run_id,
        name=name, overrides=set_ or [], config=config))
    if output is None:
        print(text, end="")
        return
    tmp = output.with_name(f".{output.name}.tmp")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, output)
    except OSError as e:
        raise UserError(f"cannot write {output}: {e.strerror}; choose another -o path") from None
    err_console.print(f"wrote {output}")


# --- launch -------------------------------------------------------------------------------
def _placement_text(pl: dict) -> str:
    if not pl:
        return "-"
    where = pl["cloud"] + (f" {pl['region']}" if pl.get("region") else " (any region)")
    bucket = pl["bucket_cloud"] + (f" {pl['bucket_region']}" if pl.get("bucket_region") else "")
    return f"{where}; bucket on {bucket}" + "".join(f"; {n}" for n in pl.get("notes") or [])


def _launch_table(p, dry_run: bool, extra: dict) -> Table:
    title = "Dry run: nothing submitted, nothing written to the bucket" if dry_run else "Launched"
    t = Table(title=title, show_header=False)
    t.add_column("what", style="bold")
    t.add_column("value", overflow="fold")
    hw, notes, choice = p.preset.hardware, p.not_checked, p.optimizer
    rows = [
        ("run id", p.spec.run_id),
        ("job name", p.job_name),
        ("preset", f"{p.preset.name} {p.preset.version} ({p.preset.base_model})"),
        ("hardware", f"{hw.nodes} x {hw.accelerators}, {'spot' if p.spec.resources.use_spot else 'on-demand'}"),
        ("bucket", notes.get("bucket") or f"{p.bucket_uri} (read/write ok)"),
        ("dataset", notes.get("dataset")
         or f"{p.spec.dataset.uri} (sha256 {(p.spec.dataset.sha256 or '?')[:12]}...)"),
        ("task", "accepted by sky.Task.from_yaml_config"),
        ("placement", _placement_text(p.placement)),
        ("code", p.spec.code_version),
    ]
    if choice is not None:
        rows += [
            ("optimizer", f"{choice.cloud} {choice.region or ''} {choice.zone or ''}".strip()),
            ("instance", f"{choice.instance_type} ({choice.accelerators})"),
            ("$/hour", f"{choice.price_per_hour:.2f} ({choice.nodes} x {choice.price_per_node_hour:.2f})"),
        ]
    if p.spec.budget.max_cost_usd:
        b = p.spec.billing
        rows.append(("max cost", f"${p.spec.budget.max_cost_usd:.2f}"
                     + (f"; no node above ${b.max_hourly_cost:.2f}/h (max_hourly_cost)"
                        if b.max_hourly_cost else "")
                     + (f"; unpriced VMs counted at ${b.fallback_price_per_hour:.2f}/h"
                        if b.fallback_price_per_hour else "")))
    if "credentials" in notes:
        rows.append(("credentials", notes["credentials"]))
    secrets = p.secret_names
    missing = [k for k in ("HF_TOKEN", "WANDB_API_KEY") if k not in secrets]
    rows.append(("secrets", ", ".join(sorted(secrets)) + (f" (not set: {', '.join(missing)})" if missing else "")
                 if secrets else f"none set ({', '.join(missing)} unset)"))
    rows += [(k, str(v)) for k, v in extra.items()]
    for k, v in rows:
        t.add_row(k, v)
    return t


def _given(pairs: list[tuple[str, bool]]) -> list[str]:
    return [flag for flag, given in pairs if given]


@app.command()
def launch(
    preset: str = PRESET_ARG,
    version: Optional[str] = VERSION_OPT,
    base_model: Optional[str] = BASE_MODEL_OPT,
    spot: Optional[bool] = typer.Option(None, "--spot/--no-spot", help="Cloud: spot VMs (default) or on-demand."),
    nodes: Optional[int] = NODES_OPT,
    gpus: Optional[str] = GPUS_OPT,
    cloud: Optional[str] = CLOUD_OPT,
    region: Optional[str] = REGION_OPT,
    bucket: Optional[str] = typer.Option(None, "--bucket", help="s3://BUCKET/prefix or gs://BUCKET/prefix."),
    data: Optional[str] = typer.Option(None, "--data", help="Dataset URI from `data upload`."),
    max_cost: Optional[float] = typer.Option(None, "--max-cost", help="Stop at this spend (USD)."),
    name: Optional[str] = typer.Option(None, "--name", help="Managed job name."),
    run_id: Optional[str] = RUN_ID_OPT,
    dry_run: bool = typer.Option(False, "--dry-run", help="Check everything, submit nothing."),
    allow_dirty: bool = typer.Option(False, "--allow-dirty",
                                     help="Launch although the work tree has uncommitted changes."),
    out: Optional[Path] = typer.Option(None, "--out", help="Dry run: write task.yaml and run.json here."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable summary."),
    local: bool = typer.Option(False, "--local", help="Run on this machine's CPU instead."),
    preemptions: Optional[int] = typer.Option(None, "--preemptions", help="--local: simulated preemptions."),
    seed: Optional[int] = typer.Option(None, "--seed", help="--local: the run's training seed (init, data order: part of run.json) and of the preemption schedule."),
    price_per_hour: Optional[float] = typer.Option(None, "--price-per-hour", help="--local: pretend price."),
    take_over: bool = typer.Option(
        False, "--take-over", help="Take the run over from a writer whose heartbeat is stale "
        "(see `vicuna-cloud status`); refused while it is live."),
    set_: Optional[list[str]] = SET_OPT,
    config: Optional[str] = CONFIG_OPT,
):
    """Launch a run as a SkyPilot managed job (or --local), resuming after preemptions.

    Example: vicuna-cloud launch 7b --spot --bucket s3://my-bucket/vicuna --data s3://my-bucket/vicuna/datasets/SHA256 --max-cost 140 --set hyper.epochs=2 --dry-run

    Example: vicuna-cloud launch small --local --set hyper.learning_rate=5e-5
    """
    from vicuna_cloud.sdk import options

    if local:
        options.reject(_given([
            ("--data", data is not None), ("--gpus", gpus is not None),
            ("--nodes", nodes is not None),
            ("--cloud", cloud is not None), ("--region", region is not None),
            ("--allow-dirty", allow_dirty), ("--name", name is not None),
            ("--spot/--no-spot", spot is not None), ("--dry-run", dry_run),
            ("--out", out is not None), ("--json", json_out)]),
            "with --local", "drop them (a local run uses the sample corpus on this CPU), or "
            "launch on the cloud without --local")
        from vicuna_cloud.cli.local import run_local

        raise typer.Exit(run_local(preset=preset, version=version, bucket=bucket, run_id=run_id,
                                   preemptions=preemptions or 0,
                                   seed=DEFAULT_SEED if seed is None else seed,
                                   price_per_hour=price_per_hour or 0.0, max_cost=max_cost,
                                   base_model=base_model, take_over=take_over,
                                   overrides=set_ or [], config=config))
    options.reject(_given([("--preemptions", preemptions is not None),
                           ("--price-per-hour", price_per_hour is not None),
                           ("--seed", seed is not None)]),
                   "on a cloud run", "drop them, or add --local to run on this machine")
    if out is not None and not dry_run:
        options.reject(["--out"], "without --dry-run", "add --dry-run, or drop --out")
    from vicuna_cloud import sdk

    _launch_cloud(sdk.LaunchRequest(
        preset=preset, version=version, base_model=base_model,
        spot=True if spot is None else spot, nodes=nodes, gpus=gpus, cloud=cloud, region=region,
        bucket=bucket, data=data, max_cost=max_cost, name=name, run_id=run_id, dry_run=dry_run,
        allow_dirty=allow_dirty, overrides=set_ or [], config=config), out, json_out,
        take_over)


def _check_lease(p, take_over: bool) -> None:
    """A run another live job writes is refused (issue 14); with --take-over, once its
    heartbeat is stale, the new job's trainer takes it (VICUNA_TAKE_OVER=1 in the task)."""
    import time

    from vicuna_cloud.lease import TAKE_OVER_ENV, read_state
    from vicuna_cloud.storage import StorageError, open_bucket

    try:
        state = read_state(open_bucket(p.spec.bucket_uri), p.spec.run_id)
    except StorageError as e:
        raise UserError(f"cannot read the run's lease in {p.spec.bucket_uri}: "
                        f"{str(e).splitlines()[0]}; nothing was submitted") from None
    now = time.time()
    if state.newest is None or state.released:
        return
    if take_over and state.is_stale(now) and p._task is not None:
        p._task.update_envs({TAKE_OVER_ENV: "1"})
        return
    raise UserError(state.refusal(now))


def _warn(text: str) -> None:
    err_console.print(f"[yellow]warning:[/] {text}", highlight=False)


def _launch_cloud(req, out, json_out, take_over: bool = False) -> None:
    from vicuna_cloud import sdk

    dry_run = req.dry_run
    p = sdk.plan(req, optimize=False)
    with console.status("Asking SkyPilot's optimizer (local catalog)"):
        from vicuna_cloud.sdk.cloud import choose

        p.optimizer = choose(p)
    summary = p.summary()
    if dry_run:
        extra = {}
        if out is not None:
            written = sdk.write_dry_run(p, out)
            extra["written"] = f"{out}/task.yaml, {out}/run.json"
            summary.written = written
        for w in p.warnings:
            _warn(w)
        if json_out:
            print_json(summary.model_dump(exclude_unset=True))
        else:
            console.print(_launch_table(p, True, extra))
        return
    _check_lease(p, take_over)
    res = sdk.launch(p, warn=_warn)
    if res.warning:
        err_console.print(f"[yellow]warning:[/] {res.warning}", highlight=False)
    summary = summary.model_copy(update={"job_id": res.job_id, "run_uri": res.run_uri})
    if json_out:
        print_json(summary.model_dump(exclude_unset=True))
        return
    console.print(_launch_table(p, False, {"job id": res.job_id}))
    console.print(f"follow it: vicuna-cloud status {p.spec.run_id}; "
                  f"vicuna-cloud logs {p.spec.run_id}")
