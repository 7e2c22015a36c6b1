"""What runs cost (from the ledger), what a preset will cost (estimate), and a Monte
Carlo over preemptions and checkpoint intervals (simulate)."""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field

from vicuna_cloud import run_index
from vicuna_cloud.costs import report
from vicuna_cloud.costs.estimate import (
    Assumptions, BillRates, Estimate, LmsysAsRun, Number, Sensitivity, Workload,
)
from vicuna_cloud.costs.simulate import SimResult
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
    from vicuna_cloud.ledger import LedgerUnreadable
    from vicuna_cloud.storage import NotFoundError, StorageError

    check_run_id(run_id)
    rec = run_index.lookup(run_id)
    if bucket is None:
        if rec is None:
            raise RunNotFound(f"unknown run {run_id!r} on this machine; pass --bucket URI where "
                              "it was launched")
        bucket = rec.bucket_uri
    bkt = _open(bucket)
    from vicuna_cloud.ledger import read_ledger

    try:
        n_segments = len(read_ledger(bkt, run_id).segments)
        spec = report._read_spec(bkt, run_id)  # noqa: SLF001 - same module family
    except StorageError as e:
        raise StorageUnavailable(f"cannot read {bkt.uri}: {str(e).splitlines()[0]}") from None
    backend = rec.backend if rec else None
    if backend == "local" or (spec is not None and spec.resources.cloud == "local"):
        sky = {"reachable": None, "note": "local run: no SkyPilot records"}
    elif skypilot and n_segments:
        # Asked first: run_cost puts SkyPilot's job duration and recoveries beside the
        # ledger's and prices any VM time the ledger lacks as a placeholder line.
        job_name = rec.job_name if rec and rec.job_name else run_id
        sky = report.reconcile_with_skypilot(job_name, n_segments)
        if sky.get("reachable") is False:
            sky["note"] += "; figures come from the ledger alone"
    else:
        sky = {"reachable": None, "note": "SkyPilot not asked (--no-skypilot)"}
    try:
        return report.run_cost(bkt, run_id, skypilot=sky)
    except NotFoundError:
        raise RunNotFound(f"no ledger for run {run_id!r} in {bkt.uri}: check the run id and "
                          "--bucket (the ledger appears once training starts)") from None
    except StorageError as e:
        raise StorageUnavailable(f"cannot read {bkt.uri}: {str(e).splitlines()[0]}") from None
    except LedgerUnreadable as e:
        raise RunNotFound(f"{e}; fix or delete that file (a segment is JSON written by the "
                          "trainer)") from None


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
    mfu_from: Optional[str] = Field(None, description="a run's metrics.jsonl or a JSON "
                                    "with an 'mfu' field (bench/gpu_check.py's output)")
    preemptions_per_hour: Optional[float] = None
    restart_minutes: Optional[float] = None
    checkpoint_minutes: Optional[float] = None
    price_per_hour: Optional[float] = Field(None, description="one node's spot $/hour, in "
                                            "place of the catalog's (e.g. offline)")


class EstimateInputs(BaseModel):
    """What an estimate or a simulation prices: the preset, the workload, the prices."""

    preset: Preset
    assumptions: Assumptions
    workload: Workload
    prices: PriceSummary
    cloud: str
    mfu_source: str = "default 0.40"


def estimate_inputs(req: EstimateRequest) -> EstimateInputs:
    from vicuna_cloud import pricing
    from vicuna_cloud.costs import estimate as est

    cloud = options.cloud(req.cloud) or "any"  # an estimate has no bucket to follow
    preset = options.preset(req.preset, req.version)
    if preset.hardware.bf16_peak_tflops <= 0:
        raise ConfigError(f"preset {preset.name} trains on the CPU: nothing to price; estimate "
                          "7b, 13b or 33b")
    mfu, mfu_source = req.mfu, ("--mfu" if req.mfu is not None else "default 0.40")
    if req.mfu_from is not None:
        if req.mfu is not None:
            raise ConfigError("give either --mfu or --mfu-from, not both")
        mfu, mfu_source = est.mfu_from_file(req.mfu_from)
    given = {"mfu": mfu, "preemptions_per_hour": req.preemptions_per_hour,
             "restart_minutes": req.restart_minutes,
             "checkpoint_interval_minutes": req.checkpoint_minutes}
    a = replace(Assumptions(), **{k: v for k, v in given.items() if v is not None})
    a.validate()
    if req.data:
        manifest, src = est.load_manifest(req.data)
        work = est.workload_from_manifest(manifest, preset, src)
    else:
        work = est.reference_workload(preset)
    prices = _prices(preset, cloud, req.price_per_hour)
    return EstimateInputs(preset=preset, assumptions=a, workload=work, prices=prices, cloud=cloud,
                          mfu_source=mfu_source)


def _prices(preset, cloud: str, price_per_hour: Optional[float]):
    """The catalog's spread of node prices, or the one given (--price-per-hour)."""
    from vicuna_cloud import pricing

    if price_per_hour is not None:
        return pricing.given_price(preset.hardware.accelerators, cloud, price_per_hour)
    try:
        with pricing.sky_catalog(fix="pass --price-per-hour USD (one node's spot price)"):
            return pricing.summarize(preset.hardware.accelerators, cloud)
    except pricing.CatalogUnavailable:
        raise
    except pricing.PricingError as e:
        raise ConfigError(f"{e}; check --cloud") from None


def bill_rates(preset, prices, work):
    """Disk, egress and controller rates for the cloud of the headline (cheapest) node."""
    from vicuna_cloud import billing, pricing
    from vicuna_cloud.costs import estimate as est
    from vicuna_cloud.costs.launch_bill import CONTROLLER_DISK, CONTROLLER_DISK_GB, disk_spec
    # The tier the task asks SkyPilot for: the estimate prices the disk the node gets.
    from vicuna_cloud.skypilot.task import DISK_TIER

    row = prices.cheapest_spot
    dtype, iops = disk_spec(row.cloud, DISK_TIER, row.instance_type)
    disk_h, dsrc = billing.disk_price_per_hour(row.cloud, dtype, preset.disk_size_gb, iops)
    eg = billing.rate(f"egress {row.cloud} inter-region")
    try:
        cp = pricing.controller_price(row.cloud)
        cdt, ciops = CONTROLLER_DISK[row.cloud]
        cdisk, _ = billing.disk_price_per_hour(row.cloud, cdt, CONTROLLER_DISK_GB, ciops)
        ctl = cp.on_demand + cdisk
        csrc = (f"controller {cp.instance_type} on-demand + {CONTROLLER_DISK_GB} GB {cdt}: "
                f"{cp.source}")
    except pricing.PricingError as e:
        ctl, csrc = None, f"controller billed but not priced ({e}): shown as unknown"
    return est.BillRates(
        disk_per_node_hour=disk_h, egress_per_gb=eg.usd, controller_per_hour=ctl,
        dataset_bytes=4.0 * work.tokens_per_epoch,
        sources=(f"disk: {dsrc}", f"egress: ${eg.usd}/GB {row.cloud} inter-region "
                 f"({eg.source}, {eg.date}) for the share after the first preemption",
                 csrc, "dataset bytes assumed 4 per token (JSONL text)"))


class Hardware(BaseModel):
    accelerators: str
    nodes: int
    bf16_peak_tflops_per_gpu: float


class AssumptionsUsed(BaseModel):
    """The estimate's assumptions (costs.estimate.Assumptions) and where the MFU came from."""

    mfu: float
    preemptions_per_hour: float
    restart_minutes: float
    checkpoint_interval_minutes: Optional[float]
    checkpoint_stall_seconds: Optional[float]
    mfu_source: str


class BillLines(BaseModel):
    """Dollars of each line of ours (packed), rounded to cents."""

    node: float
    disk: float
    egress: float
    controller: Optional[float]  # None: billed, but not priced


class SensitivityPair(BaseModel):
    ours: Sensitivity
    padded_ablation: Sensitivity


class BudgetReference(BaseModel):
    usd: Optional[float]
    how: str


class EstimateReport(BaseModel):
    """What `cost --estimate --json` prints: every line of the bill for ours (packed)
    beside a padding ablation, LMSYS 2023 as run, and the sensitivity tables."""

    preset: str
    version: str
    hardware: Hardware
    n_params: int
    epochs: Number
    max_length: int
    workload: Workload
    assumptions: AssumptionsUsed
    prices: PriceSummary
    price_source: str
    bill_rates: BillRates
    bill: BillLines
    ours: Estimate
    padded_ablation: Estimate
    lmsys_2023_as_run: Optional[LmsysAsRun]
    sensitivity: SensitivityPair
    published_budget_usd: Optional[float]
    budget_reference: BudgetReference


class SimulationReport(BaseModel):
    """What `cost --simulate --json` prints: the chosen interval and the interval table."""

    preset: str
    version: str
    price_per_hour_all_nodes: float
    price_source: str
    price_lines: str
    work_hours: float
    restart_minutes: float
    checkpoint_stall_seconds: float
    preemptions_per_hour: float
    closed_form_cost_usd: float
    budget_usd: Optional[float]
    chosen: SimResult
    intervals: list[SimResult]


def estimate(req: EstimateRequest) -> EstimateReport:
    """Every line of the bill (node, disk, egress, controller) for ours (packed) beside a
    padding ablation at equal MFU, LMSYS 2023 as run at today's catalog, a sensitivity
    table: the figures `cost --estimate --json` prints."""
    from vicuna_cloud.costs import estimate as est

    ctx = estimate_inputs(req)
    preset, a, work, prices = ctx.preset, ctx.assumptions, ctx.workload, ctx.prices
    spot = prices.cheapest_spot.spot
    rates = bill_rates(preset, prices, work)
    ours = est.estimate(preset, work, spot, a, "packed", rates)
    padded = est.estimate(preset, work, spot, a, "padded", rates)
    od = prices.cheapest_on_demand.on_demand
    columns = {
        f"spot min ${spot:.2f}": (spot, True),
        f"spot median ${prices.spot_median:.2f}": (prices.spot_median, True),
        f"on-demand min ${od:.2f}": (od, False),
    }
    lmsys = est.lmsys_as_run(preset, work, {"spot_min": spot, "spot_median": prices.spot_median,
                                            "on_demand_min": od}, rates)
    ref, ref_label = est.reference_budget(preset, work)
    return EstimateReport(
        preset=preset.name, version=preset.version,
        hardware=Hardware(accelerators=preset.hardware.accelerators,
                          nodes=preset.hardware.nodes,
                          bf16_peak_tflops_per_gpu=preset.hardware.bf16_peak_tflops),
        n_params=preset.arch.n_params, epochs=preset.hyper.epochs,
        max_length=preset.max_length, workload=work,
        assumptions=AssumptionsUsed(**asdict(a), mfu_source=ctx.mfu_source),
        prices=prices, price_source=prices.cheapest_spot.source, bill_rates=rates,
        bill=BillLines(**{k: None if getattr(ours, f"{k}_usd") is None
                          else round(getattr(ours, f"{k}_usd"), 2)
                          for k in ("node", "disk", "egress", "controller")}),
        ours=ours, padded_ablation=padded, lmsys_2023_as_run=lmsys,
        sensitivity=SensitivityPair(
            ours=est.sensitivity(preset, work, columns, a, "packed", rates),
            padded_ablation=est.sensitivity(preset, work, columns, a, "padded", rates)),
        published_budget_usd=preset.published_budget_usd,
        budget_reference=BudgetReference(usd=None if ref is None else round(ref, 2),
                                         how=ref_label),
    )


def simulate(req: EstimateRequest, trials: int = 2000, seed: int = 0) -> SimulationReport:
    """Monte Carlo of the preset's spot run: cost and hours p50/p90 at the chosen interval
    and across a range of intervals (the figures `cost --simulate --json` prints). The
    hourly price is every hourly line: node and disk per node, plus the controller."""
    from vicuna_cloud.costs import estimate as est
    from vicuna_cloud.costs import simulate as sim

    if trials <= 0 or trials > 1_000_000:
        raise ConfigError(f"--trials {trials} must be between 1 and 1,000,000")
    ctx = estimate_inputs(req)
    preset, a, work, prices = ctx.preset, ctx.assumptions, ctx.workload, ctx.prices
    rates = bill_rates(preset, prices, work)
    price = (prices.cheapest_spot.spot + rates.disk_per_node_hour) * preset.hardware.nodes \
        + (rates.controller_per_hour or 0.0)
    e = est.estimate(preset, work, prices.cheapest_spot.spot, a, "packed", rates)
    common = dict(work_hours=e.compute_hours, restart_hours=a.restart_minutes / 60.0,
                  stall_hours=e.checkpoint_stall_seconds / 3600.0,
                  rate_per_hour=a.preemptions_per_hour, price_per_hour=price, trials=trials,
                  seed=seed, budget=preset.published_budget_usd)
    chosen_min = round(e.checkpoint_interval_minutes, 1)
    intervals = sorted(set(sim.DEFAULT_INTERVALS_MIN) | {chosen_min})
    return SimulationReport(
        preset=preset.name, version=preset.version, price_per_hour_all_nodes=price,
        price_source=prices.cheapest_spot.source,
        price_lines=("node + disk per node, plus the controller; egress not simulated"
                     if rates.controller_per_hour is not None else
                     "node + disk per node; the controller is billed but not priced (unknown);"
                     " egress not simulated"),
        work_hours=e.compute_hours, restart_minutes=a.restart_minutes,
        checkpoint_stall_seconds=e.checkpoint_stall_seconds,
        preemptions_per_hour=a.preemptions_per_hour,
        closed_form_cost_usd=e.cost_usd - e.egress_usd,
        budget_usd=preset.published_budget_usd,
        chosen=sim.simulate(interval_hours=chosen_min / 60.0, **common),
        intervals=sim.interval_table(intervals_minutes=intervals, **common))
