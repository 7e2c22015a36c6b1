"""Actual spend of a run (or of every run in a bucket), from its ledger segments.

The bill, line by line (README "How cost is counted"):
- node: per segment, billed hours (VM boot -> end or last heartbeat) x $/hour x nodes;
  an AWS spot VM that AWS interrupted within its first hour costs $0 (billing.py);
- disk: per segment, the same hours x the disk's $/hour (type, size, IOPS) x nodes;
- egress: per segment, bytes moved x the route's $/GB (node region vs bucket region);
- controller: the managed-jobs controller VM from launch to the job's end + 10 min;
- unledgered VM time: what SkyPilot's job duration or recovery count shows beyond the
  ledger, a placeholder priced at the fallback price.
Wasted spend splits into setup (boot -> first step), lost work (steps trained after the
checkpoint a later segment resumed from) and checkpoint stalls.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Callable, Optional

from vicuna_cloud import billing, bucket_keys
from vicuna_cloud.ledger import UNKNOWN_END, Ledger, LedgerUnreadable, Segment, read_ledger
from vicuna_cloud.runspec import Cloud, RunSpec
from vicuna_cloud.storage import Bucket, NotFoundError, StorageError

RUNNING = "running"
# A segment without end whose heartbeat is younger than this many intervals is alive.
ALIVE_INTERVALS = 3


def _iso(t: Optional[float]) -> Optional[str]:
    if t is None:
        return None
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


@dataclass
class SegmentCost:
    segment_id: str
    attempt: int                      # 0-based, as the trainer's log and supervisor number it
    where: str
    instance_type: Optional[str]
    nodes: int
    spot: bool
    price_per_hour: Optional[float]
    price_source: str
    price_flags: list
    started: Optional[str]            # VM boot (billing start)
    ended: Optional[str]
    opened_by: str                    # "setup": the task's own script, at VM start
    billed_hours: float
    node_usd: float
    disk_usd: float
    egress_usd: float
    cost_usd: float                   # node + disk + egress
    egress_gb_up: float
    egress_gb_down: float
    egress_route: str
    setup_hours: float
    first_step: int                   # steps already done when it started (resumed from)
    last_step: int                    # last step it trained
    steps_trained: int                # steps first_step+1 .. last_step
    steps_lost: int                   # trained after the checkpoint the next attempt resumed
    steps_gained: int                 # kept: steps_trained - steps_lost
    tokens: int
    end_reason: str
    lost_work_usd: float
    setup_usd: float
    checkpoint_usd: float
    notes: list = field(default_factory=list)


@dataclass
class BillLine:
    line: str          # node | disk | egress | controller | unledgered VM time
    usd: float
    source: str


@dataclass
class RunCost:
    run_id: str
    preset: Optional[str]
    segments: list[SegmentCost]
    lines: list[BillLine]
    spend_usd: float
    useful_usd: float
    wasted_usd: float
    wasted_lost_work_usd: float
    wasted_setup_usd: float
    wasted_checkpoint_usd: float
    tokens_trained: int
    tokens_useful: int
    usd_per_million_tokens: Optional[float]
    step: int
    total_steps: Optional[int]
    projected_total_usd: Optional[float]
    budget_usd: Optional[float]
    verdict: str
    stopped_budget: bool
    status: str
    recoveries: int
    skypilot: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bill"] = {ln.line: round(ln.usd, 4) for ln in self.lines}
        return d

    def line(self, name: str) -> float:
        return sum(ln.usd for ln in self.lines if ln.line == name)


def _round(x: Optional[float], nd: int = 4) -> Optional[float]:
    return None if x is None else round(x, nd)


def _read_spec(bucket: Bucket, run_id: str) -> Optional[RunSpec]:
    try:
        return RunSpec.from_json(bucket.get_bytes(bucket_keys.run_spec(run_id)))
    except (NotFoundError, ValueError, StorageError):
        return None


def _reprice(seg: Segment, notes: list[str]) -> None:
    """A segment whose node could not price itself is priced now from the catalog (its
    fallback price stays the charge when the catalog has no row either), and flagged."""
    if seg.price_per_hour is not None or seg.cloud not in Cloud.priced():
        return
    try:
        from vicuna_cloud import pricing

        p = pricing.price_at(seg.cloud, seg.region, seg.zone, seg.accelerators,
                             seg.instance_type, zone_id=seg.zone_id)
        seg.price_per_hour = p.price(seg.use_spot)
        seg.price_source = f"priced at report time: {p.source}"
        notes.append(f"segment {seg.segment_id}: no price recorded on the node; priced from "
                     "today's catalog")
    except Exception as e:  # pricing needs the catalog; say what failed
        if seg.price_fallback_per_hour is not None:
            notes.append(f"segment {seg.segment_id}: no price recorded and none found ({e}); "
                         f"charged its fallback ${seg.price_fallback_per_hour:.2f}/h "
                         f"({seg.price_fallback_source})")
        else:
            notes.append(f"segment {seg.segment_id}: no price recorded and none found ({e}); "
                         "counted as $0")


def _steps(s: Segment, nxt: Optional[Segment], reason: str) -> tuple[int, int]:
    """(steps trained, steps lost) of one attempt, the way the trainer's log counts them.

    Trained: first_step+1 .. last_step. Lost: those after the checkpoint the next attempt
    resumed from (its first_step), or, for the last attempt, after its last committed
    checkpoint. A next attempt that resumed *past* our last recorded step proves we
    trained at least to there (the heartbeat had not caught up when the VM died)."""
    last = s.last_step
    if nxt is not None and nxt.first_step > last:
        last = nxt.first_step
    trained = max(0, last - s.first_step)
    if reason in ("completed", RUNNING):
        return trained, 0
    if nxt is not None:
        resume = nxt.first_step
    elif s.last_checkpoint_step is not None:
        resume = s.last_checkpoint_step
    else:
        resume = s.first_step
    return trained, min(trained, max(0, last - max(resume, s.first_step)))


def _segment(s: Segment, i: int, nxt: Optional[Segment], now: float, hb: float,
             tot: dict) -> SegmentCost:
    alive = (nxt is None and not s.ended and now - s.last_heartbeat <= ALIVE_INTERVALS * hb)
    reason = RUNNING if alive else s.reason
    trained, lost = _steps(s, nxt, reason)
    end = now if alive else s.ended_at
    lines = s.lines(end)
    billed_s = lines["billed_seconds"]
    node = lines["node"] or 0.0
    cost = node + lines["disk"] + lines["egress"]
    rate = cost / billed_s if billed_s > 0 else 0.0  # $ per second, every line
    # The first update() comes after the first step: take one mean step off setup.
    first = s.first_step_time if s.first_step_time is not None else end
    if s.first_step_time is not None and trained > 1:
        first -= max(0.0, end - s.first_step_time) / (trained - 1)
    setup_s = min(billed_s, max(0.0, first - s.vm_boot_time))
    train_s = max(0.0, end - max(first, s.vm_boot_time))
    lost_s = train_s * lost / trained if trained else 0.0
    ckpt_s = min(s.checkpoint_seconds, max(0.0, train_s - lost_s))
    for k, v in (("spend", cost), ("node", node), ("disk", lines["disk"]),
                 ("egress", lines["egress"]), ("lost", lost_s * rate),
                 ("setup", setup_s * rate), ("ckpt", ckpt_s * rate)):
        tot[k] += v
    tot["tokens"] += s.tokens
    tot["useful_tokens"] += s.tokens * (trained - lost) / trained if trained else 0.0
    route, _, _ = billing.egress_route(s.cloud, s.region, s.bucket_cloud, s.bucket_region)
    where = "/".join(x for x in (s.cloud, s.region, s.zone) if x and x != "local") or s.cloud
    notes = list(lines["notes"])
    if s.price_per_hour is None and s.price_fallback_per_hour is not None:
        notes.append(f"no node price: charged the fallback ${s.price_fallback_per_hour:.2f}/h "
                     f"({s.price_fallback_source})")
    if reason == UNKNOWN_END and s.cloud == "aws" and s.use_spot and billed_s < 3600:
        notes.append("ended without a notice: charged, though AWS may not have (first-hour "
                     "rule applies only to interruptions by AWS)")
    if s.budget_note:
        notes.append(f"budget: {s.budget_note}")
    return SegmentCost(
        segment_id=s.segment_id, attempt=s.attempt if s.attempt is not None else i,
        where=where, instance_type=s.instance_type, nodes=s.nodes, spot=s.use_spot,
        price_per_hour=s.price_per_hour if s.price_per_hour is not None
        else s.price_fallback_per_hour,
        price_source=lines["node_price_source"], price_flags=list(s.price_flags),
        started=_iso(s.vm_boot_time), ended=_iso(None if alive else s.ended_at),
        opened_by=s.opened_by, billed_hours=_round(billed_s / 3600.0),
        node_usd=_round(node), disk_usd=_round(lines["disk"]),
        egress_usd=_round(lines["egress"]), cost_usd=_round(cost),
        egress_gb_up=_round(s.bytes_up / billing.GB, 3),
        egress_gb_down=_round((s.bytes_down + s.bytes_copied) / billing.GB, 3),
        egress_route=route, setup_hours=_round(setup_s / 3600.0),
        first_step=s.first_step, last_step=s.first_step + trained, steps_trained=trained,
        steps_lost=lost, steps_gained=trained - lost, tokens=s.tokens, end_reason=reason,
        lost_work_usd=_round(lost_s * rate), setup_usd=_round(setup_s * rate),
        checkpoint_usd=_round(ckpt_s * rate), notes=notes,
    )


def _controller(spec: Optional[RunSpec], segs: list[Segment], sky: dict, ended: bool,
                now: float) -> Optional[BillLine]:
    """The managed-jobs controller VM from launch to the job's end + its idle autostop."""
    if spec is None or spec.billing.controller_price_per_hour is None:
        why = "local run: no controller" if segs[0].cloud == "local" else \
            "not priced: run.json has no launch record of the controller"
        return BillLine("controller", 0.0, why)
    b = spec.billing
    start = b.launched_at or segs[0].vm_boot_time
    end_at = sky.get("end_at")
    if end_at:
        end, how = float(end_at) + b.controller_idle_minutes * 60, "SkyPilot's job end"
    elif ended:
        end, how = segs[-1].ended_at + b.controller_idle_minutes * 60, "the ledger's last end"
    else:
        end, how = now, "now (job running)"
    usd = billing.controller_cost(b.model_dump(), start, min(end, max(now, start)))
    return BillLine("controller", usd, f"{b.controller_source}; from launch to {how}"
                    + (f" + {b.controller_idle_minutes:g} min idle autostop" if end != now else "")
                    + "; shared by the controller's other jobs, all charged here")


def _unledgered(spec: Optional[RunSpec], segs: list[Segment], sky: dict,
                notes: list[str]) -> Optional[BillLine]:
    """VM time SkyPilot saw and the ledger lacks, priced at the fallback and labelled."""
    dur = sky.get("job_duration_hours")
    recov = sky.get("recovery_count")
    if not sky.get("reachable") or (dur is None and recov is None):
        return None
    ledger_h = sum(s.billed_seconds() for s in segs) / 3600.0
    missing_h, why = 0.0, ""
    if dur is not None and dur > ledger_h + 1e-6:
        missing_h = dur - ledger_h
        why = f"SkyPilot's job duration {dur:.3f} h exceeds the ledger's {ledger_h:.3f} h"
    missing_vms = (recov - (len(segs) - 1)) if recov is not None else 0
    if missing_vms > 0 and missing_h == 0.0:
        from vicuna_cloud.nodeside import SETUP_RESERVE_S

        missing_h = missing_vms * SETUP_RESERVE_S / 3600.0
        why = (f"SkyPilot counts {recov} recoveries, the ledger {len(segs) - 1}: "
               f"{missing_vms} VM(s) assumed {SETUP_RESERVE_S / 60:.0f} min each")
    if missing_h <= 0:
        return None
    price = None
    if spec is not None:
        price = spec.billing.fallback_price_per_hour or spec.billing.launch_price_per_hour
        cloud = spec.billing.launch_cloud
        disk = spec.billing.disks.get(cloud) if cloud else None
        price = (price or 0.0) + (disk.price_per_hour if disk else 0.0)
    nodes = segs[-1].nodes
    if not price:
        price = max((s.price_per_hour or s.price_fallback_per_hour or 0.0) + s.disk_price_per_hour
                    for s in segs)
    notes.append(f"placeholder: {why}; priced at ${price:.2f}/node-hour (fallback + disk)")
    return BillLine("unledgered VM time", missing_h * price * nodes,
                    f"placeholder: {why}, at the fallback price")


def run_cost(bucket: Bucket, run_id: str, *, now: Optional[float] = None,
             skypilot: Optional[dict] = None) -> RunCost:
    now = time.time() if now is None else now
    ledger: Ledger = read_ledger(bucket, run_id)
    spec = _read_spec(bucket, run_id)
    notes = list(ledger.problems)
    if not ledger.segments and ledger.problems:
        raise LedgerUnreadable(f"the ledger of run {run_id} is unreadable: {ledger.problems[0]}"
                               + (f" (and {len(ledger.problems) - 1} more)"
                                  if len(ledger.problems) > 1 else ""))
    if not ledger.segments:
        raise NotFoundError(f"{bucket.child_uri(bucket_keys.ledger_prefix(run_id))} holds no segments")
    hb = spec.budget.heartbeat_seconds if spec else 60.0
    segs = ledger.segments
    tot = dict(spend=0.0, node=0.0, disk=0.0, egress=0.0, lost=0.0, setup=0.0, ckpt=0.0,
               tokens=0, useful_tokens=0.0)
    out: list[SegmentCost] = []
    for i, s in enumerate(segs):
        _reprice(s, notes)
        out.append(_segment(s, i, segs[i + 1] if i + 1 < len(segs) else None, now, hb, tot))
    sky = skypilot or {}
    last, last_cost = segs[-1], out[-1]
    lines = [BillLine("node", tot["node"], "ledger segments x catalog price (VM boot -> end)"),
             BillLine("disk", tot["disk"], "ledger segments x disk rate (vicuna_cloud.billing)"),
             BillLine("egress", tot["egress"], "bytes moved per segment x route rate")]
    ended = last_cost.end_reason not in (RUNNING,)
    for extra in (_controller(spec, segs, sky, ended, now), _unledgered(spec, segs, sky, notes)):
        if extra is not None:
            lines.append(extra)
    spend = sum(ln.usd for ln in lines)
    step = last_cost.last_step - last_cost.steps_lost
    total_steps = next((s.total_steps for s in reversed(segs) if s.total_steps), None)
    completed = last_cost.end_reason == "completed"
    if completed:
        projected = spend
    elif total_steps and step > 0:
        projected = spend / step * total_steps
    else:
        projected = None
    budget = spec.budget.max_cost_usd if spec else None
    stopped_budget = last_cost.end_reason == "budget"
    if stopped_budget:
        verdict = "stopped: budget"
    elif budget is None:
        verdict = "no budget set"
    elif spend > budget:
        verdict = "over budget"
    elif projected is not None and projected > budget and not completed:
        verdict = "projected over budget"
    else:
        verdict = "within budget"
    status = "completed" if completed else ("stopped: budget" if stopped_budget
                                            else last_cost.end_reason)
    wasted = tot["lost"] + tot["setup"] + tot["ckpt"]
    useful_tokens = int(round(tot["useful_tokens"]))
    if any(s.price_flags for s in segs):
        notes.append("some prices are flagged by the catalog (e.g. spot above on-demand)")
    del last
    return RunCost(
        run_id=run_id, preset=spec.preset if spec else None, segments=out, lines=lines,
        spend_usd=_round(spend), useful_usd=_round(spend - wasted), wasted_usd=_round(wasted),
        wasted_lost_work_usd=_round(tot["lost"]), wasted_setup_usd=_round(tot["setup"]),
        wasted_checkpoint_usd=_round(tot["ckpt"]), tokens_trained=tot["tokens"],
        tokens_useful=useful_tokens,
        usd_per_million_tokens=_round(spend / useful_tokens * 1e6) if useful_tokens else None,
        step=step, total_steps=total_steps, projected_total_usd=_round(projected),
        budget_usd=budget, verdict=verdict, stopped_budget=stopped_budget, status=status,
        recoveries=len(segs) - 1, skypilot=sky, notes=notes,
    )


def list_run_ids(bucket: Bucket) -> list[str]:
    ids = set()
    for info in bucket.list("runs/"):
        parts = info.key.split("/")
        if len(parts) >= 3 and parts[0] == "runs":
            ids.add(parts[1])
    return sorted(ids)


@dataclass
class RunLine:
    run_id: str
    preset: Optional[str]
    segments: int
    spend_usd: Optional[float]
    step: Optional[int]
    total_steps: Optional[int]
    tokens_useful: Optional[int]
    status: str
    verdict: str


def all_runs(bucket: Bucket, *, now: Optional[float] = None) -> list[RunLine]:
    lines = []
    for rid in list_run_ids(bucket):
        try:
            rc = run_cost(bucket, rid, now=now)
        except (NotFoundError, LedgerUnreadable) as e:
            spec = _read_spec(bucket, rid)
            bad = isinstance(e, LedgerUnreadable)
            lines.append(RunLine(rid, spec.preset if spec else None, 0, None, None, None,
                                 None, "ledger unreadable" if bad else "not started",
                                 "ledger unreadable" if bad else "no ledger"))
            continue
        lines.append(RunLine(rid, rc.preset, len(rc.segments), rc.spend_usd, rc.step,
                             rc.total_steps, rc.tokens_useful, rc.status, rc.verdict))
    return lines


# --- SkyPilot reconciliation ------------------------------------------------------------
def _query_skypilot_jobs(timeout: float) -> list[dict]:
    """The managed-job records from the SkyPilot API server (raises when unreachable)."""
    from sky.server import common as server_common

    url = server_common.get_server_url()
    resp = server_common.get_api_server_status_response(url)
    if resp is None or resp.status_code != 200:
        raise ConnectionError(f"SkyPilot API server at {server_common.redact_url_password(url)} "
                              "is not reachable")
    import sky

    records = sky.get(sky.jobs.queue(refresh=False, skip_finished=False))
    if isinstance(records, tuple):
        records = records[0]
    return [r.model_dump() if hasattr(r, "model_dump") else dict(r) for r in records]


def reconcile_with_skypilot(run_id: str, segments: int, *, timeout: float = 10.0,
                            query: Optional[Callable[[float], list[dict]]] = None) -> dict:
    """SkyPilot's record of the job named run_id: recovery count, job duration, end.

    run_cost puts them beside the ledger's and prices any VM time the ledger lacks."""
    query = query or _query_skypilot_jobs
    try:
        records = query(timeout)
    except Exception as e:
        return {"reachable": False,
                "note": f"SkyPilot records not checked: {str(e).splitlines()[0][:200]}"}
    mine = [r for r in records if r.get("job_name") == run_id]
    if not mine:
        return {"reachable": True, "note": f"no managed job named {run_id} on the API server"}
    rec = max(mine, key=lambda r: r.get("job_id") or 0)
    recov = rec.get("recovery_count")
    status = rec.get("status")
    out = {
        "reachable": True, "job_id": rec.get("job_id"),
        "status": getattr(status, "value", status),
        "recovery_count": recov, "job_duration_hours": _round(
            (rec.get("job_duration") or 0) / 3600.0),
        "submitted_at": rec.get("submitted_at"), "end_at": rec.get("end_at"),
        "ledger_recoveries": segments - 1,
    }
    if recov is None:
        out["note"] = "SkyPilot gave no recovery count"
    elif recov == segments - 1:
        out["note"] = "recovery count agrees with the ledger"
    else:
        out["note"] = (f"SkyPilot counts {recov} recoveries, the ledger {segments - 1} "
                       "segments after the first (a VM that died before its first heartbeat "
                       "is missing from the ledger)")
    return out


def dumps(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str)
