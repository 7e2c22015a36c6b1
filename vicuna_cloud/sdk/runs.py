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


def _job_states(records) -> tuple[dict, dict, Optional[str]]:
    """(job by id, job by name, API error): one queue_v2 call for every SkyPilot run."""
    from vicuna_cloud.skypilot import submit

    if not any(r.backend == "skypilot" for r in records):
        return {}, {}, None
    try:
        jobs = submit.queue()
    except submit.ApiUnreachable as e:
        return {}, {}, str(e)
    by_name = {j.name: j for j in sorted(jobs.values(), key=lambda j: j.job_id)}  # newest wins
    return jobs, by_name, None


def _state(rec: RunRecord, job, api_error: Optional[str]) -> str:
    if rec.backend != "skypilot":
        return rec.backend
    if job is not None:
        failed = job.finished and job.status != "SUCCEEDED" and job.failure_reason
        return job.status + (f" ({job.failure_reason})" if failed else "")
    if api_error:
        return "unknown (API server unreachable)"
    return "not in SkyPilot's queue"


def status(run_id: Optional[str] = None, bucket: Optional[str] = None) -> StatusReport:
    """One run (``run_id``), or every run launched from this machine."""
    from vicuna_cloud.run_progress import read_progress
    from vicuna_cloud.storage import open_bucket

    records = [find_run(run_id, bucket)] if run_id else run_index.all_runs()
    jobs, by_name, api_error = _job_states(records)
    rows = []
    for rec in records:
        prog = read_progress(open_bucket(rec.bucket_uri), rec.run_id)
        job = jobs.get(rec.job_id) if rec.job_id is not None else \
            by_name.get(rec.job_name or rec.run_id)  # launched elsewhere: job name = run id
        state = _state(rec, job, api_error)
        if prog.last_end_reason == "budget":  # exported or not, a stop is a stop
            state = f"{state}; stopped: budget"
        rows.append(RunStatus(
            run_id=rec.run_id, job_id=job.job_id if job else rec.job_id, state=state,
            # SkyPilot's count when it answers, else the ledger's (as `cost` shows it)
            recoveries=job.recovery_count if job else (
                prog.segments - 1 if prog.segments else None),
            recoveries_from="skypilot" if job else ("ledger" if prog.segments else None),
            cloud=job.cloud if job else None, region=job.region if job else None,
            failure_reason=job.failure_reason if job else None, progress=prog.summary,
            checkpoints=prog.checkpoints, segments=prog.segments,
            last_end_reason=prog.last_end_reason, last_metrics=prog.last_metrics,
            bucket=rec.bucket_uri, eval={"first": prog.first_eval, "last": prog.last_eval}))
    return StatusReport(api_error=api_error, runs=rows)


def job(run_id: str, bucket: Optional[str] = None):
    """The run's managed job (submit.JobRecord): by the id recorded at launch, else by its
    job name (= run id, for a run launched from another machine)."""
    from vicuna_cloud.skypilot import submit

    rec = find_run(run_id, bucket)
    if rec.backend != "skypilot":
        raise ConfigError(f"run {run_id!r} ran with --local; it has no SkyPilot job")
    try:
        return submit.find(rec.job_id, None if rec.job_id is not None
                           else (rec.job_name or rec.run_id))
    except submit.ApiUnreachable as e:
        raise BackendError(f"SkyPilot API server unreachable ({e}); {_API_FIX}") from None
    except submit.JobNotFound as e:
        raise RunNotFound(f"run {run_id!r}: {e}; `sky jobs queue` lists the jobs there "
                          "are") from None


def job_id(run_id: str, bucket: Optional[str] = None) -> int:
    return job(run_id, bucket).job_id


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
    except submit.JobNotFound as e:  # SkyPilot itself would print nothing and exit 0
        raise RunNotFound(f"run {run_id!r}: {e}") from None


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
        submit.cancel(jid)  # reads the state first: a finished job is not "cancelled"
    except submit.JobFinished as e:
        raise ConfigError(f"run {run_id!r}: {e}; nothing to cancel") from None
    except submit.JobNotFound as e:
        raise RunNotFound(f"run {run_id!r}: {e}") from None
    except submit.ApiUnreachable as e:
        raise BackendError(f"SkyPilot API server unreachable ({e}); {_API_FIX}") from None
    return jid
