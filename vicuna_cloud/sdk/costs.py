"""What runs cost (from the ledger), what a preset will cost (estimate), and a Monte
Carlo over preemptions and checkpoint intervals (simulate)."""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from vicuna_cloud import run_index
from vicuna_cloud.costs import report
from vicuna_cloud.costs.estimate import Assumptions, Workload
from vicuna_cloud.errors import ConfigError, RunNotFound, StorageUnavailable
from vicuna_cloud.pricing import PriceSummary
from vicuna_cloud.recipes import Preset
from vicuna_cloud.runspec import check_run_id
from vicuna_cloud.sdk import options

LOCAL_NOTE = "local run: segments priced at --price-per-hour, no SkyPilot records"


def _open(uri: str):
    from vicuna_cloud.storage import StorageError, open_bucket

    try:
        return open_bucket(uri)
    except (StorageError, ValueError) as e:
        raise ConfigError(f"--bucket {uri}: {str(e).splitlines()[0]}") from None


# --- actual spend -----------------------------------------------------------------------
def cost_report(run_id: str, bucket: Optional[str] = None, *, skypilot: bool = True) -> report.RunCost:
    """Spend of one run per segment, reconciled with SkyPilot's job records if asked."""
    from vicuna_cloud.storage import NotFoundError, StorageError

    check_run_id(run_id)
    rec = run_index.lookup(run_id)
    if bucket is None:
        if rec is None:
            raise RunNotFound(f"unknown run {run_id!r} on this machine; pass --bucket URI where "
                              "it was launched")
        bucket = rec.bucket_uri
    bkt = _open(bucket)
    try:
        rc = report.run_cost(bkt, run_id)
    except NotFoundError:
        raise RunNotFound(f"no ledger for run {run_id!r} in {bkt.uri}: check the run id and "
                          "--bucket (the ledger appears once training starts)") from None
    except StorageError as e:
        raise StorageUnavailable(f"cannot read {bkt.uri}: {str(e).splitlines()[0]}") from None
    backend = rec.backend if rec else None
    if backend == "local" or all(s.where.startswith("local") for s in rc.segments):
        rc.skypilot = {"reachable": None, "note": "local run: no SkyPilot records"}
    elif skypilot:
        job_name = rec.job_name if rec and rec.job_name else run_id
        rc.skypilot = report.reconcile_with_skypilot(job_name, len(rc.segments))
        if rc.skypilot.get("reachable") is False:
            rc.skypilot["note"] += "; figures come from the ledger alone"
    else:
        rc.skypilot = {"reachable": None, "note": "SkyPilot not asked (--no-skypilot)"}
    return rc


def cost_overview(bucket: Optional[str] = None) -> tuple[list[report.RunLine], list[str]]:
    """(one line per run, warnings) for every run in ``bucket``, or in every bucket this
    machine launched to."""
    from vicuna_cloud.storage import StorageError

    if bucket:
        buckets = [bucket]
    else:
        buckets = sorted({r.bucket_uri for r in run_index.all_runs()})
        if not buckets:
            raise RunNotFound("no runs launched from this machine; pass --bucket URI to list "
                              "the runs in a bucket")
    lines: list[report.RunLine] = []
    warnings = []
    for uri in buckets:
        try:
            lines.extend(report.all_runs(_open(uri)))
        except StorageError as e:
            warnings.append(f"cannot read {uri}: {str(e).splitlines()[0]}")
    return lines, warnings


# --- estimate and simulation ------------------------------------------------------------
class EstimateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: str
    version: Optional[str] = None
    data: Optional[str] = Field(None, description="dataset dir/URI or its manifest.json")
    cloud: str = "any"
    mfu: Optional[float] = None
    preemptions_per_hour: Optional[float] = None
    restart_minutes: Optional[float] = None
    checkpoint_minutes: Optional[float] = None


class EstimateInputs(BaseModel):
    """What an estimate or a simulation prices: the preset, the workload, the prices."""

    preset: Preset
    assumptions: Assumptions
    workload: Workload
    prices: PriceSummary
    cloud: str


def estimate_inputs(req: EstimateRequest) -> EstimateInputs:
    from vicuna_cloud import pricing
    from vicuna_cloud.costs import estimate as est

    cloud = options.cloud(req.cloud)
    preset = options.preset(req.preset, req.version)
    if preset.hardware.bf16_peak_tflops <= 0:
        raise ConfigError(f"preset {preset.name} trains on the CPU: nothing to price; estimate "
                          "7b, 13b or 33b")
    given = {"mfu": req.mfu, "preemptions_per_hour": req.preemptions_per_hour,
             "restart_minutes": req.restart_minutes,
             "checkpoint_interval_minutes": req.checkpoint_minutes}
    a = replace(Assumptions(), **{k: v for k, v in given.items() if v is not None})
    a.validate()
    if req.data:
        manifest, src = est.load_manifest(req.data)
        work = est.workload_from_manifest(manifest, preset, src)
    else:
        work = est.reference_workload(preset)
    try:
        prices = pricing.summarize(preset.hardware.accelerators, cloud)
    except pricing.PricingError as e:
        raise ConfigError(f"{e}; check --cloud") from None
    return EstimateInputs(preset=preset, assumptions=a, workload=work, prices=prices, cloud=cloud)


def estimate(req: EstimateRequest) -> dict[str, JsonValue]:
    """Ours (packed) beside FastChat-faithful (padded) at the cheapest spot price, with a
    sensitivity table: the figures `cost --estimate --json` prints."""
    from vicuna_cloud.costs import estimate as est

    ctx = estimate_inputs(req)
    preset, a, work, prices = ctx.preset, ctx.assumptions, ctx.workload, ctx.prices
    spot = prices.cheapest_spot.spot
    ours = est.estimate(preset, work, spot, a, "packed")
    fastchat = est.estimate(preset, work, spot, a, "padded")
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
        "n_params": preset.arch.n_params, "epochs": preset.hyper.epochs,
        "max_length": preset.max_length,
        "workload": {"source": work.source, "conversations": work.conversations,
                     "samples": work.samples, "tokens_per_epoch": work.tokens_per_epoch,
                     "assistant_tokens_per_epoch": work.assistant_tokens_per_epoch,
                     "weighted_sample_length": work.weighted_sample_length,
                     "assumptions": list(work.assumptions)},
        "assumptions": dict(a.__dict__),
        "prices": prices.to_dict(),
        "ours": ours.to_dict(), "fastchat": fastchat.to_dict(),
        "sensitivity": {"ours": est.sensitivity(preset, work, columns, a, "packed"),
                        "fastchat": est.sensitivity(preset, work, columns, a, "padded")},
        "published_budget_usd": preset.published_budget_usd,
    }


def simulate(req: EstimateRequest, trials: int = 2000, seed: int = 0) -> dict[str, JsonValue]:
    """Monte Carlo of the preset's spot run: cost and hours p50/p90 at the chosen interval
    and across a range of intervals (the figures `cost --simulate --json` prints)."""
    from vicuna_cloud.costs import estimate as est
    from vicuna_cloud.costs import simulate as sim

    if trials <= 0 or trials > 1_000_000:
        raise ConfigError(f"--trials {trials} must be between 1 and 1,000,000")
    ctx = estimate_inputs(req)
    preset, a, work, prices = ctx.preset, ctx.assumptions, ctx.workload, ctx.prices
    price = prices.cheapest_spot.spot * preset.hardware.nodes
    e = est.estimate(preset, work, prices.cheapest_spot.spot, a, "packed")
    common = dict(work_hours=e.compute_hours, restart_hours=a.restart_minutes / 60.0,
                  stall_hours=e.checkpoint_stall_seconds / 3600.0,
                  rate_per_hour=a.preemptions_per_hour, price_per_hour=price, trials=trials,
                  seed=seed, budget=preset.published_budget_usd)
    chosen_min = round(e.checkpoint_interval_minutes, 1)
    intervals = sorted(set(sim.DEFAULT_INTERVALS_MIN) | {chosen_min})
    chosen = sim.simulate(interval_hours=chosen_min / 60.0, **common)
    table = sim.interval_table(intervals_minutes=intervals, **common)
    return {"preset": preset.name, "version": preset.version,
            "price_per_hour_all_nodes": price, "price_source": prices.cheapest_spot.source,
            "work_hours": e.compute_hours, "restart_minutes": a.restart_minutes,
            "checkpoint_stall_seconds": e.checkpoint_stall_seconds,
            "preemptions_per_hour": a.preemptions_per_hour,
            "closed_form_cost_usd": e.cost_usd, "budget_usd": preset.published_budget_usd,
            "chosen": chosen.to_dict(), "intervals": [r.to_dict() for r in table]}
