"""One run in detail, for `vicuna-cloud status RUN`: where it is, how fast, what it costs.

Steps, recoveries and spend come from the same ledger report `vicuna-cloud cost RUN` prints
(vicuna_cloud.costs.report.run_cost), so the two commands cannot disagree; loss, eval loss,
tokens/s and MFU come from the newest lines of metrics.jsonl; the job's state from
SkyPilot when it can be asked (vicuna_cloud.sdk.runs.status).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Optional

from pydantic import BaseModel, Field, JsonValue

from vicuna_cloud.errors import StorageUnavailable


class SegmentLine(BaseModel):
    index: int
    where: str
    steps: str = Field(description="first..last optimizer step of this attempt")
    hours: float
    cost_usd: float
    end: str


class RunDetail(BaseModel):
    run_id: str
    backend: str
    state: str = Field(description="SkyPilot's job state, or the local/bucket view")
    phase: str
    step: int = Field(description="steps kept (as `cost RUN` counts them)")
    total_steps: Optional[int]
    loss: Optional[float]
    eval_loss: Optional[float]
    tokens_per_s: Optional[float]
    mfu: Optional[float]
    eta_seconds: Optional[float]
    spend_usd: float
    projected_total_usd: Optional[float]
    budget_usd: Optional[float]
    verdict: str
    recoveries: int = Field(description="segments - 1, as `cost RUN` counts them")
    skypilot_recoveries: Optional[int]
    checkpoints: int
    segments: list[SegmentLine]
    last_heartbeat: Optional[str]
    heartbeat_age_seconds: Optional[float]
    bucket: str
    api_error: Optional[str] = Field(None, description="SkyPilot unreachable: the state is "
                                     "what the bucket knows")
    notes: list[str] = Field(default_factory=list)
    overrides: dict[str, JsonValue] = Field(default_factory=dict, description="what `launch "
                                            "--set/--config` changed from the preset (run.json)")


def _metrics(bucket, run_id: str) -> tuple[Optional[dict], Optional[float], Optional[float]]:
    """Newest step line, newest eval loss, and mean seconds per step of the last 10 steps."""
    from vicuna_cloud import bucket_keys
    from vicuna_cloud.reports.plot import _eval_value
    from vicuna_cloud.run_progress import jsonl_records
    from vicuna_cloud.storage import NotFoundError, StorageError

    try:
        raw = bucket.get_bytes(bucket_keys.metrics(run_id))
    except (NotFoundError, StorageError):
        return None, None, None
    last, eval_loss, secs = None, None, []
    for rec in jsonl_records(raw, newest_first=True):
        if eval_loss is None:
            eval_loss = _eval_value(rec)
        if "event" not in rec and isinstance(rec.get("step"), int):
            last = last or rec
            if isinstance(rec.get("step_seconds"), (int, float)) and len(secs) < 10:
                secs.append(float(rec["step_seconds"]))
        if last is not None and eval_loss is not None and len(secs) >= 10:
            break
    return last, eval_loss, (sum(secs) / len(secs) if secs else None)


def _overrides(bucket, run_id: str) -> dict:
    """run.json's record of --set/--config ({} for a run without, or an unreadable spec:
    status reports what it can)."""
    from vicuna_cloud import bucket_keys
    from vicuna_cloud.runspec import RunSpec
    from vicuna_cloud.storage import StorageError

    try:
        return dict(RunSpec.from_json(bucket.get_bytes(bucket_keys.run_spec(run_id))).overrides)
    except (StorageError, ValueError):
        return {}


def _phase(rc, final: bool, has_step: bool) -> str:
    if final:
        return "finished: model exported"
    if rc.status == "completed":
        return "completed"
    if rc.status == "running":
        return "training" if has_step else "starting (loading data and model)"
    if rc.stopped_budget or rc.status in ("budget", "stopped: budget"):
        return "stopped: budget"
    return f"not running (last attempt ended: {rc.status})"


def run_detail(run_id: str, bucket: Optional[str] = None, *, now: Optional[float] = None) -> RunDetail:
    """Everything `status RUN` shows (RunNotFound for a run neither indexed nor in --bucket)."""
    from vicuna_cloud.costs import report
    from vicuna_cloud.ledger import read_ledger
    from vicuna_cloud.run_progress import read_progress
    from vicuna_cloud.sdk.runs import find_run, status
    from vicuna_cloud.storage import NotFoundError, StorageError, open_bucket

    now = time.time() if now is None else now
    rec = find_run(run_id, bucket)
    bkt = open_bucket(rec.bucket_uri)
    try:
        rc = report.run_cost(bkt, run_id, now=now)
        segs = read_ledger(bkt, run_id).segments
    except NotFoundError:  # no segment yet: what metrics.jsonl says, nothing spent
        rc, segs = None, []
    except StorageError as e:
        raise StorageUnavailable(f"cannot read {rec.bucket_uri}: {str(e).splitlines()[0]}") from None
    prog = read_progress(bkt, run_id)
    rep = status(run_id, bucket)
    row = rep.runs[0]
    last, eval_loss, step_s = _metrics(bkt, run_id)
    if rc is None:
        d = _before_ledger(rec, row, prog, last, eval_loss, rep.api_error)
        d.overrides = _overrides(bkt, run_id)
        return d
    hb = segs[-1].last_heartbeat if segs else None
    eta = None
    if rc.status == "running" and rc.total_steps and step_s:
        eta = max(0, rc.total_steps - rc.step) * step_s
    num = lambda k: float(last[k]) if last and isinstance(last.get(k), (int, float)) else None  # noqa: E731
    # Numbered and counted as cost RUN and the trainer's log do: attempt N, steps a-b.
    lines = [SegmentLine(index=s.attempt, where=s.where,
                         steps=f"{s.first_step + 1}-{s.last_step}" if s.steps_trained else "-",
                         hours=s.billed_hours, cost_usd=s.cost_usd, end=s.end_reason)
             for s in rc.segments]
    return RunDetail(
        run_id=run_id, backend=rec.backend, state=row.state,
        phase=_phase(rc, prog.final, last is not None), step=rc.step,
        total_steps=rc.total_steps, loss=num("loss"), eval_loss=eval_loss,
        tokens_per_s=num("tokens_per_s"), mfu=num("mfu"), eta_seconds=eta,
        spend_usd=rc.spend_usd, projected_total_usd=rc.projected_total_usd,
        budget_usd=rc.budget_usd, verdict=rc.verdict, recoveries=rc.recoveries,
        skypilot_recoveries=row.recoveries, checkpoints=prog.checkpoints, segments=lines,
        last_heartbeat=(datetime.fromtimestamp(hb, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
                        if hb else None),
        heartbeat_age_seconds=round(now - hb, 1) if hb else None,
        bucket=rec.bucket_uri, api_error=rep.api_error, notes=rc.notes,
        overrides=_overrides(bkt, run_id))


def _before_ledger(rec, row, prog, last, eval_loss, api_error) -> RunDetail:
    """A run whose trainer has written no ledger segment yet (or never will: no run.json)."""
    step = last.get("step") if last else None
    total = last.get("total_steps") if last else None
    loss = last.get("loss") if last else None
    return RunDetail(
        run_id=rec.run_id, backend=rec.backend, state=row.state,
        phase="starting (no ledger segment yet)" if prog.has_spec else prog.summary,
        step=step if isinstance(step, int) else 0,
        total_steps=total if isinstance(total, int) else None,
        loss=float(loss) if isinstance(loss, (int, float)) else None, eval_loss=eval_loss,
        tokens_per_s=None, mfu=None, eta_seconds=None, spend_usd=0.0,
        projected_total_usd=None, budget_usd=None, verdict="nothing spent yet",
        recoveries=0, skypilot_recoveries=row.recoveries, checkpoints=prog.checkpoints,
        segments=[], last_heartbeat=None, heartbeat_age_seconds=None, bucket=rec.bucket_uri,
        api_error=api_error)
