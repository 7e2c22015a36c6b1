"""Runs already launched: find one, its status, its logs, cancel it.

The run index (vicuna_cloud.run_index) says where a run launched here lives; the bucket
says how far it got (vicuna_cloud.run_progress); SkyPilot's API server says the job's
state, when it can be reached.
"""

from __future__ import annotations

from typing import Optional

from vicuna_cloud import run_index
from vicuna_cloud.errors import BackendError, ConfigError, RunNotFound
from vicuna_cloud.run_index import RunRecord
from vicuna_cloud.runspec import check_run_id
from vicuna_cloud.sdk import options
from vicuna_cloud.sdk.models import RunStatus, StatusReport

_API_FIX = "start it with `sky api start` or set SKYPILOT_API_SERVER_ENDPOINT"


def find_run(run_id: str, bucket: Optional[str] = None) -> RunRecord:
    """The run's record: --bucket wins (keeping what the index knows), else the index."""
    check_run_id(run_id)
    rec = run_index.lookup(run_id)
    if rec is None and bucket is None:
        raise RunNotFound(f"unknown run {run_id!r} on this machine; pass --bucket URI where it "
                          "was launched (or list runs with `vicuna-cloud status`)")
    if bucket is None:
        return rec
    options.bucket_uri(bucket, cloud_only=False)
    return RunRecord(run_id=run_id, bucket_uri=bucket,
                     backend=rec.backend if rec else "skypilot",
                     job_id=rec.job_id if rec else None,
                     job_name=rec.job_name if rec else None,
                     preset=rec.preset if rec else None)


def _state(rec: RunRecord, job, api_error: Optional[str]) -> str:
    if rec.backend != "skypilot":
        return rec.backend
    if job is not None:
        return job.status
    if api_error:
        return "unknown (API server unreachable)"
    return "not in SkyPilot's queue"


def status(run_id: Optional[str] = None, bucket: Optional[str] = None) -> StatusReport:
    """One run (``run_id``), or every run launched from this machine."""
    from vicuna_cloud.run_progress import read_progress
    from vicuna_cloud.skypilot import submit
    from vicuna_cloud.storage import open_bucket

    records = [find_run(run_id, bucket)] if run_id else run_index.all_runs()
    jobs: dict = {}
    api_error = None
    job_ids = [r.job_id for r in records if r.job_id is not None and r.backend == "skypilot"]
    if job_ids:
        try:
            jobs = submit.queue(job_ids)
        except submit.ApiUnreachable as e:
            api_error = str(e)
    rows = []
    for rec in records:
        prog = read_progress(open_bucket(rec.bucket_uri), rec.run_id)
        job = jobs.get(rec.job_id) if rec.job_id is not None else None
        state = _state(rec, job, api_error)
        if prog.last_end_reason == "budget":  # exported or not, a stop is a stop
            state = f"{state}; stopped: budget"
        rows.append(RunStatus(
            run_id=rec.run_id, job_id=rec.job_id, state=state,
            # SkyPilot's count when it answers, else the ledger's (as `cost` shows it)
            recoveries=job.recovery_count if job else (
                prog.segments - 1 if prog.segments else None),
            recoveries_from="skypilot" if job else ("ledger" if prog.segments else None),
            progress=prog.summary,
            checkpoints=prog.checkpoints, segments=prog.segments,
            last_end_reason=prog.last_end_reason, last_metrics=prog.last_metrics,
            bucket=rec.bucket_uri, eval={"first": prog.first_eval, "last": prog.last_eval}))
    return StatusReport(api_error=api_error, runs=rows)


def job_id(run_id: str, bucket: Optional[str] = None) -> int:
    rec = find_run(run_id, bucket)
    if rec.job_id is None:
        raise ConfigError(f"run {run_id!r} has no SkyPilot job id on this machine (launched "
                          "elsewhere or with --local); use `sky jobs queue` to find it")
    return rec.job_id


def _local(run_id: str, bucket: Optional[str]) -> bool:
    rec = find_run(run_id, bucket)
    return rec.backend == "local"


def logs(run_id: str, bucket: Optional[str] = None, follow: bool = True) -> int:
    """Stream the run's logs to stdout (train.log for a local run, the managed job's log
    for a cloud run); returns 0 or the job's exit code."""
    from vicuna_cloud.skypilot import submit

    if _local(run_id, bucket):
        from vicuna_cloud.local import control

        try:
            control.follow_log(run_id, follow=follow)
        except FileNotFoundError:
            raise RunNotFound(f"no log for local run {run_id!r} at {control.log_path(run_id)}: "
                              "it was launched on another machine or its files were "
                              "removed") from None
        return 0
    jid = job_id(run_id, bucket)
    try:
        return submit.tail_logs(jid, follow=follow) or 0
    except submit.ApiUnreachable as e:
        raise BackendError(f"SkyPilot API server unreachable ({e}); {_API_FIX}") from None


def cancel_local(run_id: str, timeout: float = 120.0) -> int:
    """Stop a local run's launcher as Ctrl-C would (checkpoint, segment "cancelled");
    returns the launcher's pid."""
    from vicuna_cloud.local import control

    try:
        pid = control.cancel(run_id, timeout)
    except TimeoutError as e:
        raise BackendError(str(e)) from None
    if pid is None:
        raise ConfigError(f"local run {run_id!r} is not running on this machine (nothing to "
                          f"cancel); resume it with `vicuna-cloud launch tiny --local --run-id "
                          f"{run_id}`")
    return pid


def cancel(run_id: str, bucket: Optional[str] = None) -> int:
    """Cancel gracefully (the trainer checkpoints on SIGTERM); returns the job id (the
    launcher's pid for a local run)."""
    from vicuna_cloud.skypilot import submit

    if _local(run_id, bucket):
        return cancel_local(run_id)
    jid = job_id(run_id, bucket)
    try:
        submit.cancel(jid)
    except submit.ApiUnreachable as e:
        raise BackendError(f"SkyPilot API server unreachable ({e}); {_API_FIX}") from None
    return jid
