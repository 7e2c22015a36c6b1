"""Actual spend of a run (or of every run in a bucket), from its ledger segments.

spend = sum over segments of billed hours (VM boot -> end or last heartbeat) x $/hour x
nodes. Wasted spend splits into setup (boot -> first step), lost work (steps trained
after the last checkpoint that a later segment resumed from, charged at the segment's
mean seconds per step) and checkpoint stalls (when the trainer recorded them).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Callable, Optional

from vicuna_cloud import bucket_keys
from vicuna_cloud.ledger import Ledger, Segment, read_ledger
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
    where: str
    instance_type: Optional[str]
    nodes: int
    spot: bool
    price_per_hour: Optional[float]
    price_source: str
    price_flags: list
    started: Optional[str]
    ended: Optional[str]
    billed_hours: float
    cost_usd: float
    setup_hours: float
    steps_gained: int
    steps_lost: int
    tokens: int
    end_reason: str
    lost_work_usd: float
    setup_usd: float
    checkpoint_usd: float


@dataclass
class RunCost:
    run_id: str
    preset: Optional[str]
    segments: list[SegmentCost]
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
        return asdict(self)


def _round(x: Optional[float], nd: int = 4) -> Optional[float]:
    return None if x is None else round(x, nd)


def _read_spec(bucket: Bucket, run_id: str) -> Optional[RunSpec]:
    try:
        return RunSpec.from_json(bucket.get_bytes(bucket_keys.run_spec(run_id)))
    except (NotFoundError, ValueError, StorageError):
        return None


def _reprice(seg: Segment, notes: list[str]) -> None:
    """A segment whose node could not price itself is priced now, and flagged."""
    if seg.price_per_hour is not None or seg.cloud not in Cloud.priced():
        return
    try:
        from vicuna_cloud import pricing

        p = pricing.price_at(seg.cloud, seg.region, seg.zone, seg.accelerators, seg.instance_type)
        seg.price_per_hour = p.price(seg.use_spot)
        seg.price_source = f"priced at report time: {p.source}"
        notes.append(f"segment {seg.segment_id}: no price recorded on the node; priced from "
                     "today's catalog")
    except Exception as e:  # pricing needs the catalog; say what failed
        notes.append(f"segment {seg.segment_id}: no price recorded and none found ({e}); "
                     "counted as $0")


def run_cost(bucket: Bucket, run_id: str, *, now: Optional[float] = None,
             skypilot: Optional[dict] = None) -> RunCost:
    now = time.time() if now is None else now
    ledger: Ledger = read_ledger(bucket, run_id)
    spec = _read_spec(bucket, run_id)
    notes = list(ledger.problems)
    if not ledger.segments:
        raise NotFoundError(f"{bucket.child_uri(bucket_keys.ledger_prefix(run_id))} holds no segments")
    hb = spec.budget.heartbeat_seconds if spec else 60.0
    segs = ledger.segments
    out: list[SegmentCost] = []
    tot = dict(spend=0.0, lost=0.0, setup=0.0, ckpt=0.0, tokens=0, useful_tokens=0.0)
    for i, s in enumerate(segs):
        _reprice(s, notes)
        nxt = segs[i + 1] if i + 1 < len(segs) else None
        alive = (nxt is None and not s.ended and now - s.last_heartbeat <= ALIVE_INTERVALS * hb)
        reason = RUNNING if alive else s.reason
        gained = max(0, s.last_step - s.first_step)
        if reason in ("completed", RUNNING):
            lost = 0
        else:
            if nxt is not None:
                resume = nxt.first_step
            elif s.last_checkpoint_step is not None:
                resume = s.last_checkpoint_step
            else:
                resume = s.first_step
            lost = min(gained, max(0, s.last_step - max(resume, s.first_step)))
        end = now if alive else s.ended_at
        billed_s = max(0.0, end - s.vm_boot_time)
        rate = (s.price_per_hour or 0.0) * s.nodes / 3600.0  # $ per second
        cost = billed_s * rate
        # The first update() comes after the first step: take one mean step off setup.
        first = s.first_step_time if s.first_step_time is not None else end
        if s.first_step_time is not None and gained > 1:
            first -= max(0.0, end - s.first_step_time) / (gained - 1)
        setup_s = min(billed_s, max(0.0, first - s.vm_boot_time))
        train_s = max(0.0, end - max(first, s.vm_boot_time))
        lost_s = train_s * lost / gained if gained else 0.0
        ckpt_s = min(s.checkpoint_seconds, max(0.0, train_s - lost_s))
        tot["spend"] += cost
        tot["lost"] += lost_s * rate
        tot["setup"] += setup_s * rate
        tot["ckpt"] += ckpt_s * rate
        tot["tokens"] += s.tokens
        tot["useful_tokens"] += s.tokens * (gained - lost) / gained if gained else 0.0
        where = "/".join(x for x in (s.cloud, s.region, s.zone) if x and x != "local") or s.cloud
        out.append(SegmentCost(
            segment_id=s.segment_id, where=where, instance_type=s.instance_type,
            nodes=s.nodes, spot=s.use_spot, price_per_hour=s.price_per_hour,
            price_source=s.price_source, price_flags=list(s.price_flags),
            started=_iso(s.start_time), ended=_iso(None if alive else s.ended_at),
            billed_hours=_round(billed_s / 3600.0), cost_usd=_round(cost),
            setup_hours=_round(setup_s / 3600.0), steps_gained=gained, steps_lost=lost,
            tokens=s.tokens, end_reason=reason, lost_work_usd=_round(lost_s * rate),
            setup_usd=_round(setup_s * rate), checkpoint_usd=_round(ckpt_s * rate),
        ))
    last = segs[-1]
    last_cost = out[-1]
    step = last.last_step - last_cost.steps_lost
    total_steps = next((s.total_steps for s in reversed(segs) if s.total_steps), None)
    completed = last_cost.end_reason == "completed"
    spend = tot["spend"]
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
    status = "completed" if completed else last_cost.end_reason
    wasted = tot["lost"] + tot["setup"] + tot["ckpt"]
    useful_tokens = int(round(tot["useful_tokens"]))
    if any(s.price_flags for s in segs):
        notes.append("some prices are flagged by the catalog (e.g. spot above on-demand)")
    return RunCost(
        run_id=run_id, preset=spec.preset if spec else None, segments=out,
        spend_usd=_round(spend), useful_usd=_round(spend - wasted), wasted_usd=_round(wasted),
        wasted_lost_work_usd=_round(tot["lost"]), wasted_setup_usd=_round(tot["setup"]),
        wasted_checkpoint_usd=_round(tot["ckpt"]), tokens_trained=tot["tokens"],
        tokens_useful=useful_tokens,
        usd_per_million_tokens=_round(spend / useful_tokens * 1e6) if useful_tokens else None,
        step=step, total_steps=total_steps, projected_total_usd=_round(projected),
        budget_usd=budget, verdict=verdict, stopped_budget=stopped_budget, status=status,
        recoveries=len(segs) - 1, skypilot=skypilot or {}, notes=notes,
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
        except NotFoundError:
            spec = _read_spec(bucket, rid)
            lines.append(RunLine(rid, spec.preset if spec else None, 0, None, None, None,
                                 None, "not started", "no ledger"))
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
    """Compare our segment count with SkyPilot's recovery count for the job named run_id."""
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
