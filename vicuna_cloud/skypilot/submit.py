"""Managed jobs through SkyPilot's Python SDK: launch, queue, cancel, logs.

Every SDK call returns a request id; we resolve it with ``sky.stream_and_get`` (launch:
shows SkyPilot's own progress) or ``sky.get`` (quick queries). An unreachable API server
becomes ``ApiUnreachable`` so callers can say so and carry on with what the bucket knows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from vicuna_cloud.errors import BackendError


class ApiUnreachable(BackendError, RuntimeError):
    """SkyPilot's API server could not be reached."""


class SubmitError(BackendError, RuntimeError):
    """SkyPilot refused or failed the request."""


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


def queue(job_ids: Optional[list[int]] = None) -> dict[int, JobRecord]:
    import sky
    from sky import exceptions

    try:
        request_id = sky.jobs.queue(refresh=False, skip_finished=False, job_ids=job_ids)
        records = sky.get(request_id)
    except (exceptions.ApiServerConnectionError, ConnectionError) as e:
        raise _unreachable(e) from None
    except exceptions.ClusterNotUpError as e:
        raise ApiUnreachable(f"the jobs controller is not up: {str(e).splitlines()[0]}") from None
    if isinstance(records, tuple):  # queue_v2-shaped answer
        records = records[0]
    out: dict[int, JobRecord] = {}
    for rec in records or []:
        r = JobRecord.from_sky(rec)
        out[r.job_id] = r
    return out


def cancel(job_id: int) -> None:
    """Cancel: SkyPilot stops the run (the trainer's SIGTERM handler checkpoints)."""
    import sky
    from sky import exceptions

    try:
        sky.get(sky.jobs.cancel(job_ids=[job_id], graceful=True))
    except (exceptions.ApiServerConnectionError, ConnectionError) as e:
        raise _unreachable(e) from None


def tail_logs(job_id: int, follow: bool = True) -> Optional[int]:
    import sky
    from sky import exceptions

    try:
        return sky.jobs.tail_logs(job_id=job_id, follow=follow)
    except (exceptions.ApiServerConnectionError, ConnectionError) as e:
        raise _unreachable(e) from None
