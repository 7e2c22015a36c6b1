"""Every line of a run's bill, from ledger segments as plain dicts: node, disk, egress.

Why a module of its own, standard library only (and Python 3.10 syntax): the node-side
check (``vicuna_cloud.nodeside``) runs in the task's ``setup`` with the image's system
``python3`` before anything is installed, and must add up the spend exactly as the
trainer's ledger and ``vicuna-cloud cost`` do. So the arithmetic lives here once.

Prices that SkyPilot's catalog lacks (disks, data transfer) come from ``RATES``, the one
table of such prices in the project: each row names its source page and the day it was
written down. Node and controller VM prices come from SkyPilot's catalog (pricing.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

#: AWS and GCP turn monthly disk prices into per-second charges over a 730-hour month.
HOURS_PER_MONTH = 730.0
GB = 1e9

#: AWS Linux spot instances interrupted by AWS within their first hour are not charged.
AWS_FIRST_HOUR_RULE = (
    "AWS does not charge a Linux spot instance that it interrupts within its first hour "
    "(https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/billing-for-interrupted-spot-"
    "instances.html); the disk is still charged"
)
#: End reasons that prove the cloud took the VM (a notice was seen).
CLOUD_INTERRUPTED = ("preempted",)

_AWS_EBS = "https://aws.amazon.com/ebs/pricing/ (us-east-1)"
_AWS_DT = "https://aws.amazon.com/ec2/pricing/on-demand/#Data_Transfer (us-east-1)"
_GCP_PD = "https://cloud.google.com/compute/disks-image-pricing (us-central1)"
_GCP_NET = "https://cloud.google.com/vpc/network-pricing (premium tier, 0-1 TiB)"
_DAY = "2026-12-01"  # written down that day from the pages named (US list prices)


@dataclass(frozen=True)
class Rate:
    """One price SkyPilot's catalog does not carry, with where it came from."""

    key: str
    usd: float
    unit: str
    source: str
    date: str = _DAY


RATES: Dict[str, Rate] = {r.key: r for r in (
    # Disks: per GB-month of provisioned size, per provisioned IOPS-month.
    Rate("disk aws io2 gb", 0.125, "GB-month", _AWS_EBS),
    Rate("disk aws io2 iops", 0.065, "IOPS-month (first 32,000)", _AWS_EBS),
    Rate("disk aws gp3 gb", 0.08, "GB-month", _AWS_EBS),
    Rate("disk aws gp3 iops", 0.005, "IOPS-month above 3,000 free", _AWS_EBS),
    Rate("disk aws standard gb", 0.05, "GB-month", _AWS_EBS),
    Rate("disk gcp pd-ssd gb", 0.17, "GB-month", _GCP_PD),
    Rate("disk gcp pd-balanced gb", 0.10, "GB-month", _GCP_PD),
    Rate("disk gcp pd-standard gb", 0.04, "GB-month", _GCP_PD),
    Rate("disk gcp pd-extreme gb", 0.125, "GB-month", _GCP_PD),
    Rate("disk gcp pd-extreme iops", 0.065, "IOPS-month", _GCP_PD),
    Rate("disk gcp hyperdisk-balanced gb", 0.08, "GB-month (baseline IOPS/throughput)",
         _GCP_PD),
    # Data transfer, per GB, charged by the side the bytes leave.
    Rate("egress aws same-region", 0.0, "GB", _AWS_DT),
    Rate("egress aws inter-region", 0.02, "GB", _AWS_DT),
    Rate("egress aws internet", 0.09, "GB (first 10 TB/month)", _AWS_DT),
    Rate("egress gcp same-region", 0.0, "GB", _GCP_NET),
    Rate("egress gcp inter-region", 0.02, "GB (same continent)", _GCP_NET),
    Rate("egress gcp inter-continent", 0.08, "GB", _GCP_NET),
    Rate("egress gcp internet", 0.12, "GB", _GCP_NET),
)}

#: The priciest disk each cloud offers here: what an unknown disk is charged (fail closed).
_WORST_DISK = {"aws": ("io2", 20000), "gcp": ("pd-ssd", None)}


def rate(key: str) -> Rate:
    return RATES[key]


def disk_price_per_hour(cloud: str, disk_type: Optional[str], size_gb: Optional[float],
                        iops: Optional[int] = None) -> Tuple[float, str]:
    """$/hour of one node's disk, and how it was priced. Local and unknown clouds: 0."""
    cloud = (cloud or "").lower()
    if cloud not in ("aws", "gcp") or not size_gb:
        return 0.0, "no cloud disk"
    note = ""
    if not disk_type or f"disk {cloud} {disk_type} gb" not in RATES:
        worst, worst_iops = _WORST_DISK[cloud]
        note = f" (disk type {disk_type or 'unknown'}: priced as {worst})"
        disk_type, iops = worst, iops or worst_iops
    monthly = size_gb * RATES[f"disk {cloud} {disk_type} gb"].usd
    parts = [f"{size_gb:g} GB x ${RATES[f'disk {cloud} {disk_type} gb'].usd}/GB-month"]
    iops_rate = RATES.get(f"disk {cloud} {disk_type} iops")
    if iops_rate is not None and iops:
        billable = max(0, iops - 3000) if disk_type == "gp3" else iops
        monthly += billable * iops_rate.usd
        parts.append(f"{billable:,} IOPS x ${iops_rate.usd}/IOPS-month")
    src = (f"{cloud} {disk_type}: " + " + ".join(parts) + f" / {HOURS_PER_MONTH:g} h"
           + note + f"; rates {RATES[f'disk {cloud} {disk_type} gb'].source}, {_DAY}")
    return monthly / HOURS_PER_MONTH, src


def continent(region: Optional[str]) -> str:
    r = (region or "").lower()
    for prefix, name in (("us", "na"), ("ca", "na"), ("northamerica", "na"), ("eu", "eu"),
                         ("europe", "eu"), ("ap", "asia"), ("asia", "asia"),
                         ("australia", "oceania"), ("me", "me"), ("sa", "sa"),
                         ("southamerica", "sa"), ("af", "af"), ("il", "me")):
        if r.startswith(prefix):
            return name
    return "?"


def egress_route(node_cloud: Optional[str], node_region: Optional[str],
                 bucket_cloud: Optional[str], bucket_region: Optional[str]) -> Tuple[str, float, float]:
    """(route label, $/GB node -> bucket, $/GB bucket -> node).

    The side the bytes leave pays: an upload is priced at the node's cloud, a download at
    the bucket's. An unknown bucket region is charged as another region (fail closed)."""
    nc, bc = (node_cloud or "").lower(), (bucket_cloud or "").lower()
    if nc not in ("aws", "gcp") or bc not in ("aws", "gcp"):
        return "local", 0.0, 0.0
    if nc != bc:
        return (f"{nc} -> {bc} (internet)", RATES[f"egress {nc} internet"].usd,
                RATES[f"egress {bc} internet"].usd)
    if bucket_region and node_region and bucket_region == node_region:
        return f"{nc} same region", 0.0, 0.0
    kind = "inter-region"
    if nc == "gcp" and bucket_region and continent(node_region) != continent(bucket_region):
        kind = "inter-continent"
    usd = RATES[f"egress {nc} {kind}"].usd
    label = f"{nc} {kind}" + ("" if bucket_region else " (bucket region unknown)")
    return label, usd, usd


# --- one segment ---------------------------------------------------------------------
def billed_end(seg: Mapping) -> float:
    """End of billing as far as the record knows: the end, else the last heartbeat."""
    end = seg.get("end_time")
    return float(end if end is not None else seg.get("last_heartbeat") or 0.0)


def node_price(seg: Mapping) -> Tuple[Optional[float], str]:
    """The segment's node price: its own, else its fail-closed fallback (labelled)."""
    p = seg.get("price_per_hour")
    if p is not None:
        return float(p), str(seg.get("price_source") or "")
    fb = seg.get("price_fallback_per_hour")
    if fb is not None:
        return float(fb), f"fallback: {seg.get('price_fallback_source') or 'run.json'}"
    return None, "unpriced"


def first_hour_free(seg: Mapping, billed_s: float) -> bool:
    return (str(seg.get("cloud") or "").lower() == "aws" and bool(seg.get("use_spot"))
            and seg.get("end_reason") in CLOUD_INTERRUPTED and billed_s < 3600.0)


def segment_lines(seg: Mapping, *, end: Optional[float] = None,
                  apply_first_hour: bool = True) -> Dict[str, object]:
    """The node, disk and egress dollars of one segment up to ``end`` (default: its end).

    ``apply_first_hour=False`` for the budget: a cap never counts on a refund."""
    end = billed_end(seg) if end is None else max(end, billed_end(seg))
    boot = float(seg.get("vm_boot_time") or 0.0)
    billed_s = max(0.0, end - boot)
    nodes = int(seg.get("nodes") or 1)
    price, source = node_price(seg)
    notes: List[str] = []
    node = None if price is None else billed_s / 3600.0 * price * nodes
    if node is not None and apply_first_hour and first_hour_free(seg, billed_s):
        notes.append("node not charged: " + AWS_FIRST_HOUR_RULE)
        node = 0.0
    disk_h = float(seg.get("disk_price_per_hour") or 0.0)
    disk = billed_s / 3600.0 * disk_h * nodes
    _, up_rate, down_rate = egress_route(seg.get("cloud"), seg.get("region"),
                                         seg.get("bucket_cloud"), seg.get("bucket_region"))
    up = float(seg.get("bytes_up") or 0)
    down = float(seg.get("bytes_down") or 0) + float(seg.get("bytes_copied") or 0)
    egress = up / GB * up_rate + down / GB * down_rate
    return {"billed_seconds": billed_s, "node": node, "node_price": price,
            "node_price_source": source, "disk": disk, "egress": egress, "notes": notes}


def segment_total(seg: Mapping, *, end: Optional[float] = None,
                  apply_first_hour: bool = True) -> Optional[float]:
    lines = segment_lines(seg, end=end, apply_first_hour=apply_first_hour)
    if lines["node"] is None:
        return None
    return float(lines["node"]) + float(lines["disk"]) + float(lines["egress"])


def controller_cost(billing: Mapping, start: Optional[float], end: Optional[float]) -> float:
    """The managed-jobs controller VM (and its disk) from ``start`` to ``end``."""
    if start is None or end is None or end <= start:
        return 0.0
    per_h = float(billing.get("controller_price_per_hour") or 0.0) \
        + float(billing.get("controller_disk_price_per_hour") or 0.0)
    return (end - start) / 3600.0 * per_h


def spend_for_budget(segments: List[Mapping], *, at: float, current_id: Optional[str] = None,
                     billing: Optional[Mapping] = None, launched_at: Optional[float] = None
                     ) -> Tuple[Optional[float], List[str]]:
    """Spend by ``at`` counted the way the cap counts it: every line, no refunds, every
    unpriced segment at its fallback. None when a segment has no price at all."""
    total, problems = 0.0, []
    for s in segments:
        end = at if s.get("segment_id") == current_id else None
        t = segment_total(s, end=end, apply_first_hour=False)
        if t is None:
            problems.append(f"segment {s.get('segment_id')} has no price and no fallback")
            return None, problems
        total += t
    if billing and launched_at is not None:  # the controller, to its idle autostop
        idle = float(billing.get("controller_idle_minutes") or 0.0) * 60.0
        total += controller_cost(billing, launched_at, at + idle)
    return total, problems
