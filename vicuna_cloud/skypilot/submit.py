"""Managed jobs through SkyPilot 0.14.1's Python SDK: launch, queue, cancel, logs.

Every SDK call returns a request id; we resolve it with ``sky.stream_and_get`` (launch:
shows SkyPilot's own progress) or ``sky.get`` (quick queries). What 0.14.1 does, read in
its source (sky/jobs/client/sdk.py, sky/server/common.py):
- every SDK call is wrapped in ``check_server_healthy_or_start``: with a local endpoint
  and no server running it *starts* one (about 12 s, left running). We never let it do
  that silently: ``require_server`` checks the health endpoint first and says how to start
  one (``sky api start``) or where to point (SKYPILOT_API_SERVER_ENDPOINT).
- ``sky.jobs.queue`` (v1) is deprecated; ``queue_v2`` takes the fields to return, and its
  default fields omit cloud, region and failure_reason, so we name ours (QUEUE_FIELDS).
- an empty queue on a controller that is not up answers ClusterNotUpError ("No
  in-progress managed jobs."): that is an empty queue, not an unreachable server.
- ``cancel`` of an unknown or finished job returns None and says nothing, and
  ``tail_logs`` of an unknown job prints nothing and exits 0: so the job's state is read
  before either, and an unknown or finished job is a clear error.
An unreachable API server becomes ``ApiUnreachable`` so callers can say so and carry on
with what the bucket knows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from vicuna_cloud.errors import BackendError, RunNotFound

#: What status shows, asked of queue_v2 by name (its defaults omit cloud/region/reason).
QUEUE_FIELDS = ("job_id", "task_id", "job_name", "task_name", "status", "recovery_count",
                "cloud", "region", "zone", "failure_reason", "cluster_resources",
                "submitted_at", "end_at", "job_duration")
#: ManagedJobStatus values after which nothing runs (sky/jobs/state.py terminal_statuses).
TERMINAL = frozenset({"SUCCEEDED", "CANCELLED", "FAILED", "FAILED_SETUP",
                      "FAILED_PRECHECKS", "FAILED_NO_RESOURCE", "FAILED_CONTROLLER"})


class ApiUnreachable(BackendError, RuntimeError):
    """SkyPilot's API server could not be reached (or is not running locally)."""


class SubmitError(BackendError, RuntimeError):
    """SkyPilot refused or failed the request."""


class JobNotFound(RunNotFound):
    """No managed job with that id (or name) in SkyPilot's queue."""


class JobFinished(BackendError):
    """The job has already ended; there is nothing to cancel."""

    def __init__(self, record: "JobRecord"):
        super().__init__(f"job {record.job_id} already ended ({record.status})")
        self.record = record


@dataclass(frozen=True)
class JobRecord:
    job_id: int
    name: str
    status: str
    recovery_count: int
    cloud: Optional[str] = None
    region: Optional[str] = None
    resources: Optional[str] = None
    failure_reason: Optional[str] = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def from_sky(cls, rec: Any) -> "JobRecord":
        get = rec.get if isinstance(rec, dict) else (lambda k, d=None: getattr(rec, k, d))
        status = get("status")
        status = getattr(status, "value", status)
        return cls(
            job_id=int(get("job_id")),
            name=str(get("job_name") or get("task_name") or ""),
            status=str(status),
            recovery_count=int(get("recovery_count") or 0),
            cloud=get("cloud"),
            region=get("region"),
            resources=get("cluster_resources") or get("resources"),
            failure_reason=get("failure_reason"),
        )


def _unreachable(e: BaseException) -> ApiUnreachable:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return ApiUnreachable(first)


def _server_url() -> str:
    """SkyPilot's endpoint as the environment says now (its get_server_url is lru-cached
    for the process: an endpoint set after the first call would be ignored)."""
    from sky.server import common

    common.get_server_url.cache_clear()
    return common.get_server_url()


def require_server() -> str:
    """The API server's URL if it answers; else ApiUnreachable saying how to get one.
    Never starts a server (SkyPilot's SDK would, silently, for a local endpoint)."""
    from sky.server import common

    url = _server_url()
    info = common.get_api_server_status(url)
    if info.status == common.ApiServerStatus.HEALTHY:
        return url
    if info.status != common.ApiServerStatus.UNHEALTHY:
        raise ApiUnreachable(f"SkyPilot API server at {common.redact_url_password(url)}: "
                             f"{info.status.value}")
    if common.is_api_server_local(url):
        raise ApiUnreachable(f"no SkyPilot API server runs at {url}; vicuna-cloud does not "
                             "start one for you: run `sky api start`")
    raise ApiUnreachable(f"Could not connect to the SkyPilot API server at "
                         f"{common.redact_url_password(url)}")


def local_server_will_start() -> Optional[str]:
    """The local URL where SkyPilot's SDK is about to start an API server, or None (one
    answers, or the endpoint is remote). launch says so before submitting."""
    from sky.server import common

    url = _server_url()
    if common.is_api_server_local(url) and \
            common.get_api_server_status(url).status == common.ApiServerStatus.UNHEALTHY:
        return url
    return None


def launch(task, name: str) -> int:
    """Submit ``task`` (a parsed sky.Task) as managed job ``name``; return its job id."""
    import sky
    from sky import exceptions

    try:
        request_id = sky.jobs.launch(task, name=name)
        job_ids, _handle = sky.stream_and_get(request_id)
    except (exceptions.ApiServerConnectionError, ConnectionError) as e:
        raise _unreachable(e) from None
    if not job_ids:
        raise SubmitError("SkyPilot accepted the request but returned no job id")
    return int(job_ids[0])


def queue(job_ids: Optional[list[int]] = None,
          name: Optional[str] = None) -> dict[int, JobRecord]:
    """Managed jobs by id (all of this user's when ``job_ids`` is None), optionally only
    those named ``name``. An empty queue (controller not up) is {}, not an error."""
    import sky
    from sky import exceptions

    require_server()
    try:
        request_id = sky.jobs.queue_v2(refresh=False, skip_finished=False, job_ids=job_ids,
                                       fields=list(QUEUE_FIELDS))
        answer = sky.get(request_id)
    except exceptions.ClusterNotUpError:
        return {}  # "No in-progress managed jobs.": the controller is down, nothing runs
    except (exceptions.ApiServerConnectionError, ConnectionError) as e:
        raise _unreachable(e) from None
    records = answer[0] if isinstance(answer, tuple) else answer
    out: dict[int, JobRecord] = {}
    for rec in records or []:
        r = JobRecord.from_sky(rec)
        if name is None or r.name == name:
            out[r.job_id] = r
    return out


def find(job_id: Optional[int], name: Optional[str]) -> JobRecord:
    """The job by id, else the newest job named ``name`` (launch names jobs by run id)."""
    if job_id is not None:
        rec = queue([job_id]).get(job_id)
    else:
        jobs = queue(name=name) if name else {}
        rec = jobs[max(jobs)] if jobs else None
    if rec is None:
        what = f"job {job_id}" if job_id is not None else f"job named {name!r}"
        raise JobNotFound(f"SkyPilot's queue has no {what} (it may have been cleaned up, or "
                          "launched under another SkyPilot user or API server)")
    return rec


def cancel(job_id: int) -> JobRecord:
    """Cancel a job that is still running; returns its record as the queue shows it after
    the request. The trainer's SIGTERM handler checkpoints."""
    import sky
    from sky import exceptions

    rec = find(job_id, None)
    if rec.finished:
        raise JobFinished(rec)
    try:
        sky.get(sky.jobs.cancel(job_ids=[job_id], graceful=True))
    except exceptions.ClusterNotUpError:
        raise JobNotFound(f"job {job_id}: the jobs controller is not up (no in-progress "
                          "managed jobs)") from None
    except (exceptions.ApiServerConnectionError, ConnectionError) as e:
        raise _unreachable(e) from None
    return queue([job_id]).get(job_id, rec)


def tail_logs(job_id: int, follow: bool = True) -> Optional[int]:
    """Stream a known job's logs (an unknown id is JobNotFound, not silence)."""
    import sky
    from sky import exceptions

    find(job_id, None)
    try:
        return sky.jobs.tail_logs(job_id=job_id, follow=follow)
    except exceptions.ClusterNotUpError:
        raise JobNotFound(f"job {job_id}: the jobs controller is not up (no in-progress "
                          "managed jobs)") from None
    except (exceptions.ApiServerConnectionError, ConnectionError) as e:
        raise _unreachable(e) from None
