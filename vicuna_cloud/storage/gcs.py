"""Google Cloud Storage as a Bucket, through google-cloud-storage.

With STORAGE_EMULATOR_HOST set (fake-gcs-server in tests) the client is anonymous and
talks to the emulator; otherwise it uses Application Default Credentials, and their
absence is reported with the command that fixes it.
"""

from __future__ import annotations

import os
import threading
from typing import Optional

from vicuna_cloud.storage.base import ObjectInfo, ProgressFn
from vicuna_cloud.storage.errors import (
    AlreadyExistsError, BucketAccessError, NotFoundError, StorageError,
)
from vicuna_cloud.storage.object_store import ObjectStoreBucket
from vicuna_cloud.storage.retry import (
    RetryPolicy, _short,
)
from vicuna_cloud.storage.uri import BucketURI

MiB = 1 << 20
_clients: dict = {}
_clients_lock = threading.Lock()

NO_CREDENTIALS = (
    "no Google Cloud credentials found: run `gcloud auth application-default login` or set "
    "GOOGLE_APPLICATION_CREDENTIALS to a service-account key file"
)


def _client():
    """One client per emulator host / project (clients are thread-safe and costly to make)."""
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    project = os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("CLOUDSDK_CORE_PROJECT")
    key = (emulator, project)
    with _clients_lock:
        if key not in _clients:
            from google.cloud import storage

            if emulator:
                from google.auth.credentials import AnonymousCredentials

                _clients[key] = storage.Client(project=project or "test",
                                               credentials=AnonymousCredentials())
            else:
                from google.auth import exceptions as gae

                try:
                    _clients[key] = storage.Client(project=project)
                except gae.DefaultCredentialsError:
                    raise BucketAccessError(NO_CREDENTIALS) from None
        return _clients[key]


class _ProgressReader:
    """A file wrapper that reports bytes read, so uploads can drive a progress bar."""

    def __init__(self, f, progress: ProgressFn):
        self._f, self._progress = f, progress

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        if data:
            self._progress(len(data))
        return data

    def __getattr__(self, name):
        return getattr(self._f, name)


class _ProgressWriter:
    def __init__(self, f, progress: ProgressFn):
        self._f, self._progress = f, progress

    def write(self, data: bytes) -> int:
        n = self._f.write(data)
        self._progress(len(data))
        return n

    def __getattr__(self, name):
        return getattr(self._f, name)


class GCSBucket(ObjectStoreBucket):
    """A prefix in a GCS bucket.

    Files above 8 MiB (the library's threshold) go up as resumable uploads in
    ``chunk_size`` pieces; the object appears only when the last piece is in, so a failed upload leaves
    the previous object (or none). Downloads are checked by CRC32C (the library's
    default) and written to a temp file that is renamed into place.
    """

    def __init__(
        self,
        uri: BucketURI,
        *,
        policy: Optional[RetryPolicy] = None,
        chunk_size: int = 32 * MiB,
        page_size: int = 1000,
    ):
        super().__init__(uri)
        if chunk_size % (256 * 1024):
            raise ValueError("GCS chunk_size must be a multiple of 256 KiB")
        self.policy = policy or RetryPolicy.from_env()
        self.chunk_size = chunk_size
        self.page_size = page_size
        self._bucket_seen = False

    # --- plumbing ----------------------------------------------------------------------
    @property
    def bucket(self):
        return _client().bucket(self.name)

    def _timeout(self):
        return (self.policy.connect_timeout_s, self.policy.read_timeout_s)

    def _inner_retry(self):
        """The library's own per-request retry (e.g. for each chunk of a resumable upload),
        kept to ``request_attempts - 1`` retries per operation: google's Retry is bounded
        only by time, and the whole operation is retried by our policy around it."""
        from google.cloud.storage.retry import DEFAULT_RETRY, _should_retry

        budget = iter(range(self.policy.request_attempts - 1))

        def predicate(exc: Exception) -> bool:
            return _should_retry(exc) and next(budget, None) is not None

        return DEFAULT_RETRY.with_predicate(predicate).with_delay(
            initial=self.policy.base_s, maximum=self.policy.max_backoff_s
        ).with_timeout(min(self.policy.deadline_s, 120.0))

    def _bucket_exists(self) -> bool:
        if self._bucket_seen:
            return True
        exists = self._run(
            lambda: _client().lookup_bucket(self.name, timeout=self._timeout()) is not None,
            f"look up gs://{self.name}", None)
        self._bucket_seen = exists
        return exists

    def _missing_bucket(self) -> BucketAccessError:
        b = f"gs://{self.name}"
        return BucketAccessError(
            f"bucket {b} does not exist: create it with `gcloud storage buckets create {b}` "
            f"or pass another --bucket")

    def _translate(self, exc: BaseException, what: str, key: Optional[str]) -> StorageError:
        from google.api_core import exceptions as ge
        from google.auth import exceptions as gae

        b = f"gs://{self.name}"
        if isinstance(exc, gae.DefaultCredentialsError):
            return BucketAccessError(NO_CREDENTIALS)
        if isinstance(exc, gae.RefreshError):
            return BucketAccessError(
                f"Google rejected the credentials for {b} ({_short(exc)}): run "
                f"`gcloud auth application-default login` again or check GOOGLE_APPLICATION_CREDENTIALS")
        if isinstance(exc, ge.NotFound):
            if key is None or not self._bucket_exists():
                return self._missing_bucket()
            return NotFoundError(f"{self.child_uri(key)} does not exist")
        if isinstance(exc, ge.Unauthorized):
            return BucketAccessError(
                f"Google rejected the credentials for {b}: run `gcloud auth application-default login` "
                f"or set GOOGLE_APPLICATION_CREDENTIALS")
        if isinstance(exc, ge.Forbidden):
            return BucketAccessError(
                f"access denied to {b} ({what}): grant your Google identity "
                f"roles/storage.objectAdmin on it, or pass another --bucket")
        if isinstance(exc, ge.PreconditionFailed):
            return AlreadyExistsError(f"{self.child_uri(key or '')} already exists")
        return StorageError(f"{what} failed: {_short(exc)}")

    # --- the contract ------------------------------------------------------------------
    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        from google.api_core import exceptions as ge

        name = self._key(key)
        kwargs = {"if_generation_match": 0} if if_absent else {}

        def put() -> None:
            try:
                self.bucket.blob(name).upload_from_string(
                    data, retry=self._inner_retry(), timeout=self._timeout(), **kwargs)
            except ge.PreconditionFailed:
                # A retried create-only write (here or inside the SDK) may find the object
                # its lost first try made: the same bytes count as success.
                if self._read(name) != data:
                    raise

        self._run(put, f"put {self.child_uri(key)}", key)

    def _read(self, name: str) -> Optional[bytes]:
        try:
            return self.bucket.blob(name).download_as_bytes(timeout=self._timeout())
        except Exception:  # noqa: BLE001 - only used to confirm our own write
            return None

    def get_bytes(self, key: str) -> bytes:
        name = self._key(key)

        def get() -> bytes:
            blob = self.bucket.blob(name)
            return blob.download_as_bytes(retry=self._inner_retry(), timeout=self._timeout())

        return self._run(get, f"get {self.child_uri(key)}", key)

    def put_file(self, key: str, path: str, progress: Optional[ProgressFn] = None) -> None:
        name = self._key(key)
        if not os.path.isfile(path):
            raise StorageError(f"cannot upload {path}: no such file")
        size = os.path.getsize(path)

        def upload() -> None:
            blob = self.bucket.blob(name, chunk_size=self.chunk_size)
            with open(path, "rb") as f:
                src = _ProgressReader(f, progress) if progress else f
                blob.upload_from_file(src, size=size, retry=self._inner_retry(),
                                      timeout=self._timeout())

        self._run(upload, f"upload {path} to {self.child_uri(key)}", key)

    def get_file(self, key: str, path: str, progress: Optional[ProgressFn] = None) -> None:
        name = self._key(key)

        def fetch(fd: int, tmp: str) -> None:
            with os.fdopen(fd, "wb") as f:
                blob = self.bucket.blob(name)
                dst = _ProgressWriter(f, progress) if progress else f
                # Whole and intact: the library checks Content-Length and the CRC32C
                # in X-Goog-Hash, raising (retried) errors on a short or damaged body.
                blob.download_to_file(dst, retry=self._inner_retry(), timeout=self._timeout())

        self._download_atomically(key, path, fetch)

    def _list_objects(self, full_prefix: str):
        blobs = _client().list_blobs(self.name, prefix=full_prefix or None, page_size=self.page_size,
                                     retry=self._inner_retry(), timeout=self._timeout())
        return [(b.name, int(b.size or 0)) for b in blobs]

    def stat(self, key: str) -> ObjectInfo:
        name = self._key(key)
        blob = self._run(lambda: self.bucket.get_blob(name, retry=self._inner_retry(),
                                                      timeout=self._timeout()),
                         f"stat {self.child_uri(key)}", key)
        if blob is None:
            if not self._bucket_exists():
                raise self._missing_bucket()
            raise NotFoundError(f"{self.child_uri(key)} does not exist")
        return ObjectInfo(key.strip("/"), int(blob.size or 0))

    def delete(self, key: str) -> None:
        name = self._key(key)
        try:
            self._run(lambda: self.bucket.blob(name).delete(retry=self._inner_retry(),
                                                            timeout=self._timeout()),
                      f"delete {self.child_uri(key)}", key)
        except NotFoundError:
            pass  # deleting a missing object is fine (the bucket exists: checked in _translate)

    def check_access(self) -> None:
        if not self._bucket_exists():
            raise self._missing_bucket()
        self._check_round_trip()
