"""One retry policy for every object-store call.

Why a layer of our own on top of the SDKs' retries: the SDKs retry single HTTP requests,
but a whole operation (a streamed download cut short, a multipart upload whose part
failed after the SDK gave up) must be retried as a unit, and permanent failures (403,
missing bucket, bad credentials) must stop at once with a message a user can act on.

Transient: throttling (429, SlowDown), 5xx, connection resets and timeouts, short reads,
checksum mismatches on download (S3 flexible checksums, GCS CRC32C).
Permanent: everything else. Attempts and total time are bounded; the bounds come from
``RetryPolicy`` (defaults suit a cloud VM; tests shrink them through the environment, so
subprocesses such as torchrun inherit the same small bounds).
"""

from __future__ import annotations

import http.client
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional, TypeVar

import tenacity

from vicuna_cloud.storage.errors import StorageError

log = logging.getLogger("vicuna_cloud.storage")
T = TypeVar("T")

_RETRYABLE_HTTP = {408, 429, 500, 502, 503, 504}
_RETRYABLE_S3_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
    "ServiceUnavailable", "RequestLimitExceeded", "TooManyRequestsException",
    "BadDigest",  # body damaged in flight: resend
}


class TransientStorageError(StorageError):
    """A failure worth retrying that our own checks found (e.g. a short read)."""


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds on retrying one storage operation.

    attempts: tries of the whole operation (ours), each of which may itself make up to
    ``request_attempts`` HTTP tries inside the SDK. Backoff is exponential with full
    jitter, from ``base_s`` up to ``max_backoff_s``; ``deadline_s`` caps the total.
    """

    attempts: int = 6
    base_s: float = 0.5
    max_backoff_s: float = 20.0
    deadline_s: float = 600.0
    request_attempts: int = 3
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0

    @classmethod
    def from_env(cls) -> "RetryPolicy":
        """Defaults, overridden by VICUNA_STORAGE_RETRY_{ATTEMPTS,BASE_S,MAX_BACKOFF_S,
        DEADLINE_S,REQUEST_ATTEMPTS} and VICUNA_STORAGE_{CONNECT,READ}_TIMEOUT_S."""
        d = cls()

        def get(name: str, default, typ):
            raw = os.environ.get(name)
            if raw is None or raw == "":
                return default
            try:
                return typ(raw)
            except ValueError:
                raise StorageError(f"{name}={raw!r} is not a number: unset it or give a number") from None

        return cls(
            attempts=max(1, get("VICUNA_STORAGE_RETRY_ATTEMPTS", d.attempts, int)),
            base_s=get("VICUNA_STORAGE_RETRY_BASE_S", d.base_s, float),
            max_backoff_s=get("VICUNA_STORAGE_RETRY_MAX_BACKOFF_S", d.max_backoff_s, float),
            deadline_s=get("VICUNA_STORAGE_RETRY_DEADLINE_S", d.deadline_s, float),
            request_attempts=max(1, get("VICUNA_STORAGE_RETRY_REQUEST_ATTEMPTS", d.request_attempts, int)),
            connect_timeout_s=get("VICUNA_STORAGE_CONNECT_TIMEOUT_S", d.connect_timeout_s, float),
            read_timeout_s=get("VICUNA_STORAGE_READ_TIMEOUT_S", d.read_timeout_s, float),
        )


def _status_of(exc: BaseException) -> Optional[int]:
    """HTTP status carried by an SDK exception, if any."""
    resp = getattr(exc, "response", None)
    if isinstance(resp, dict):  # botocore ClientError
        status = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(status) if status else None
    code = getattr(exc, "code", None)  # google.api_core GoogleAPICallError
    if isinstance(code, int):
        return code
    status = getattr(resp, "status_code", None)  # google InvalidResponse (requests response)
    return int(status) if isinstance(status, int) else None


def is_transient(exc: BaseException) -> bool:
    """True when trying the same operation again may well succeed."""
    if isinstance(exc, TransientStorageError):
        return True
    if isinstance(exc, StorageError):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError, http.client.IncompleteRead,
                        http.client.BadStatusLine, http.client.ResponseNotReady)):
        return True
    mod = type(exc).__module__ or ""
    if mod.startswith("botocore"):
        from botocore import exceptions as be

        if isinstance(exc, be.ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            return code in _RETRYABLE_S3_CODES or (_status_of(exc) or 0) in _RETRYABLE_HTTP
        if isinstance(exc, (be.NoCredentialsError, be.PartialCredentialsError,
                            be.UnknownCredentialError, be.ParamValidationError)):
            return False
        if isinstance(exc, be.FlexibleChecksumError):  # damaged in flight: fetch again
            return True
        return isinstance(exc, (be.ConnectionError, be.HTTPClientError,
                                be.IncompleteReadError, be.CredentialRetrievalError))
    if mod.startswith("s3transfer"):
        from s3transfer.exceptions import RetriesExceededError

        return isinstance(exc, RetriesExceededError)
    if mod.startswith("urllib3"):
        import urllib3.exceptions as ue

        return isinstance(exc, (ue.ProtocolError, ue.TimeoutError, ue.NewConnectionError,
                                ue.IncompleteRead, ue.MaxRetryError))
    if mod.startswith("requests"):
        import requests.exceptions as re_

        return isinstance(exc, (re_.ConnectionError, re_.Timeout, re_.ChunkedEncodingError))
    if mod.startswith("google"):
        from google.api_core import exceptions as ge
        from google.auth import exceptions as gae
        from google.cloud.storage import exceptions as gse

        if isinstance(exc, ge.GoogleAPICallError):
            return (_status_of(exc) or 0) in _RETRYABLE_HTTP
        if isinstance(exc, gse.DataCorruption):
            return True
        if isinstance(exc, gse.InvalidResponse):
            return (_status_of(exc) or 0) in _RETRYABLE_HTTP
        if isinstance(exc, gae.TransportError):
            return True
        if isinstance(exc, ge.RetryError):
            return True
    cause = exc.__cause__ or exc.__context__
    return cause is not None and cause is not exc and is_transient(cause)


# Counters for tests and benchmarks: how many retries were taken, process-wide.
_stats_lock = threading.Lock()
_stats = {"calls": 0, "retries": 0, "gave_up": 0}


def retry_stats() -> dict:
    with _stats_lock:
        return dict(_stats)


def _bump(key: str) -> None:
    with _stats_lock:
        _stats[key] += 1


def call_with_retry(
    fn: Callable[[], T],
    *,
    what: str,
    translate: Callable[[BaseException], StorageError],
    policy: Optional[RetryPolicy] = None,
) -> T:
    """Run ``fn`` under the policy; raise a StorageError (from ``translate``) on failure.

    ``what`` names the operation for messages ("get s3://b/k"). ``translate`` turns an SDK
    exception into our error type with a fix-it message.
    """
    policy = policy or RetryPolicy.from_env()
    _bump("calls")

    def before_sleep(state: tenacity.RetryCallState) -> None:
        _bump("retries")
        exc = state.outcome.exception() if state.outcome else None
        log.warning("%s: transient failure (%s), attempt %d/%d, retrying",
                    what, _short(exc), state.attempt_number, policy.attempts)

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(policy.attempts) | tenacity.stop_after_delay(policy.deadline_s),
        wait=tenacity.wait_random_exponential(multiplier=policy.base_s, max=policy.max_backoff_s),
        retry=tenacity.retry_if_exception(is_transient),
        before_sleep=before_sleep,
        reraise=True,
    )
    start = time.monotonic()
    try:
        return retrying(fn)
    except StorageError as exc:
        if not isinstance(exc, TransientStorageError):
            raise
        _bump("gave_up")
        raise StorageError(_gave_up(what, exc, retrying, start)) from exc
    except Exception as exc:  # noqa: BLE001 - every SDK error becomes ours, with context
        if is_transient(exc):
            _bump("gave_up")
            raise StorageError(_gave_up(what, exc, retrying, start)) from exc
        raise translate(exc) from exc


def _gave_up(what: str, exc: BaseException, retrying: tenacity.Retrying, start: float) -> str:
    attempts = retrying.statistics.get("attempt_number", "?")
    return (f"{what} gave up after {attempts} attempts in {time.monotonic() - start:.1f}s "
            f"({_short(exc)}): the store may be down or throttling; retry later")


def _short(exc: Optional[BaseException]) -> str:
    if exc is None:
        return "?"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}"
