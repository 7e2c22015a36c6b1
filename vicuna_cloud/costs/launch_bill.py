"""What launch writes into run.json's ``billing``: the facts every later dollar needs.

The node cannot always price itself (no catalog, an unknown zone), and the cap must
still hold: so launch records the optimizer's price and a fail-closed fallback (the
highest catalog price of the instance type on every allowed cloud, under the task's
``max_hourly_cost`` when a cap is set), each disk SkyPilot will attach (type and IOPS
from SkyPilot's own disk-tier mapping, priced from vicuna_cloud.billing.RATES), the
bucket's cloud and region (for the egress route), and the managed-jobs controller VM.
"""

from __future__ import annotations

import logging
import time
from typing import Optional

from vicuna_cloud import billing, pricing
from vicuna_cloud.runspec import Billing, DiskBill

log = logging.getLogger(__name__)

#: SkyPilot 0.14's managed-jobs controller: cpus 4+, memory 4x, a 50 GB disk of the
#: default (medium) tier, autostop after 10 idle minutes (sky/jobs/constants.py).
CONTROLLER_DISK_GB = 50
CONTROLLER_DISK = {"aws": ("gp3", 3000), "gcp": ("pd-balanced", None)}
CONTROLLER_IDLE_MINUTES = 10.0


def disk_spec(cloud: str, tier: Optional[str], instance_type: str) -> tuple[Optional[str], Optional[int]]:
    """(disk type, IOPS) SkyPilot provisions for ``disk_tier`` on ``cloud`` (its own code)."""
    try:
        from sky.utils import resources_utils

        t = resources_utils.DiskTier(tier or "medium")
        if cloud == "aws":
            from sky.clouds import AWS

            specs = AWS._get_disk_specs(t)  # noqa: SLF001 - SkyPilot's mapping, not ours
        else:
            from sky.clouds import GCP

            specs = GCP._get_disk_specs(instance_type, t)  # noqa: SLF001
        return specs.get("disk_tier"), specs.get("disk_iops")
    except Exception as e:  # noqa: BLE001 - then the node is charged the priciest disk
        log.warning("disk spec for %s %s unknown (%s)", cloud, tier, e)
        return None, None


def bucket_region(uri: str) -> tuple[Optional[str], Optional[str]]:
    """(cloud, region) of the bucket; region None when it cannot be asked (multi-region
    GCS, no permission): egress to it is then charged as another region's."""
    from vicuna_cloud.storage.uri import parse_bucket_uri

    u = parse_bucket_uri(uri)
    if u.scheme == "s3":
        try:
            from vicuna_cloud.storage import open_bucket

            loc = open_bucket(uri).client.get_bucket_location(Bucket=u.bucket)
            return "aws", loc.get("LocationConstraint") or "us-east-1"
        except Exception:  # noqa: BLE001
            return "aws", None
    if u.scheme == "gs":
        try:
            from vicuna_cloud.storage.gcs import _client

            b = _client().lookup_bucket(u.bucket)
            loc = (b.location or "").lower() if b is not None else ""
            return "gcp", loc if "-" in loc else None  # "us" is multi-region
        except Exception:  # noqa: BLE001
            return "gcp", None
    return None, None


def bearable_price(preset, cap: float, launch_price: float) -> Optional[float]:
    """$/node-hour at which the whole estimated run fits the cap (None: no estimate)."""
    from vicuna_cloud.costs import estimate as est

    try:
        e = est.estimate(preset, est.reference_workload(preset), launch_price)
    except (est.EstimateError, ZeroDivisionError):
        return None
    return cap / (e.billed_hours * preset.hardware.nodes) if e.billed_hours > 0 else None


def plan(preset, spec, config: dict, choice, *, clouds: list[str],
         now: Optional[float] = None) -> tuple[Billing, Optional[float]]:
    """run.json's billing section and the task's max_hourly_cost (None without a cap)."""
    now = time.time() if now is None else now
    res = config.get("resources") or {}
    accel, spot = preset.hardware.accelerators, spec.resources.use_spot
    launch = float(choice.price_per_node_hour)
    highest = None
    for c in clouds:
        try:
            p = pricing.highest_price(accel, c, spot)
        except pricing.PricingError:
            continue
        highest = max(highest or 0.0, p.price(spot))
    cap = spec.budget.max_cost_usd
    ceiling = None
    if cap is not None:
        bear = bearable_price(preset, cap, launch)
        ceiling = launch if bear is None else max(launch, min(bear, highest or bear))
    fallback, fsrc = launch, f"launch price (optimizer: {choice.cloud} {choice.region or ''})"
    for c in clouds:  # the priciest node SkyPilot may still pick, on any allowed cloud
        try:
            p = pricing.highest_price(accel, c, spot, ceiling=ceiling)
        except pricing.PricingError:
            continue
        price = p.price(spot) if ceiling is None else min(p.price(spot), ceiling)
        if price > fallback:
            fallback = price
            fsrc = ("highest catalog price" + (f" under max_hourly_cost {ceiling:.2f}"
                                               if ceiling is not None else "") + f": {p.source}")
    size, tier = res.get("disk_size"), res.get("disk_tier")
    disks = {}
    for c in clouds:
        try:
            itype = pricing.instance_type_for(accel, c)
        except pricing.PricingError:
            continue
        dtype, iops = disk_spec(c, tier, itype)
        per_h, dsrc = billing.disk_price_per_hour(c, dtype, size, iops)
        disks[c] = DiskBill(disk_type=dtype, iops=iops, price_per_hour=round(per_h, 6),
                            source=dsrc)
    bcloud, bregion = bucket_region(spec.bucket_uri)
    ctl, ctl_disk, csrc = None, 0.0, "controller not priced"
    try:
        cp = pricing.controller_price(str(choice.cloud).lower())
        dtype, iops = CONTROLLER_DISK.get(cp.cloud, (None, None))
        ctl_disk, _ = billing.disk_price_per_hour(cp.cloud, dtype, CONTROLLER_DISK_GB, iops)
        ctl, csrc = cp.on_demand, f"{cp.instance_type} on-demand: {cp.source}"
    except pricing.PricingError as e:
        csrc = f"controller not priced: {e}"
    b = Billing(
        launched_at=now, launch_cloud=str(choice.cloud).lower(), launch_region=choice.region,
        launch_zone=choice.zone, launch_instance_type=choice.instance_type,
        launch_price_per_hour=launch, launch_price_source="SkyPilot optimizer at launch",
        fallback_price_per_hour=fallback, fallback_price_source=fsrc,
        max_hourly_cost=None if ceiling is None else round(ceiling, 4),
        disk_size_gb=size, disk_tier=tier, disks=disks, bucket_cloud=bcloud,
        bucket_region=bregion, controller_instance_type=None if ctl is None else csrc.split()[0],
        controller_price_per_hour=ctl, controller_disk_price_per_hour=round(ctl_disk, 6),
        controller_source=csrc, controller_idle_minutes=CONTROLLER_IDLE_MINUTES,
    )
    return b, b.max_hourly_cost


def apply(p, choice) -> None:
    """Put billing into the plan's run.json and max_hourly_cost into its task (re-checked
    by SkyPilot's parser). ``p`` is an sdk LaunchPlan, changed in place."""
    import os

    from vicuna_cloud.skypilot.task import validate_task_config

    b, ceiling = plan(p.preset, p.spec, p.task_config, choice, clouds=list(p.clouds))
    if ceiling is not None:
        config = {**p.task_config, "resources": {**p.task_config["resources"],
                                                 "max_hourly_cost": ceiling}}
        secrets = {k: os.environ[k] for k in p.secret_names if os.environ.get(k)}
        p._task = validate_task_config(config, secrets=secrets)
        p.task_config = config
    p.spec = p.spec.model_copy(update={"billing": b})
