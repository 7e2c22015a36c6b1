"""The Bucket contract every backend implements."""

from __future__ import annotations

import abc
import hashlib
import os
import tempfile
import uuid
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from vicuna_cloud.storage.uri import BucketURI

ProgressFn = Callable[[int], None]  # called with bytes transferred since the last call


class StorageError(RuntimeError):
    """A storage call that failed for good (after retries where retrying made sense)."""


class NotFoundError(StorageError):
    """The key does not exist."""


class AlreadyExistsError(StorageError):
    """A create-only write (``if_absent=True``) found the key already there."""


class BucketAccessError(StorageError):
    """The bucket is missing, unreachable, or our credentials may not use it."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


class Bucket(abc.ABC):
    """A prefix in an object store. Keys are relative, '/'-separated.

    Writes are whole-object (S3/GCS semantics): a reader sees the old object or the new
    one, never a partial one. Transient faults are retried inside each call.
    """

    def __init__(self, uri: BucketURI):
        self.location = uri

    @property
    def uri(self) -> str:
        return str(self.location)

    def child_uri(self, key: str) -> str:
        return str(self.location.child(key))

    @abc.abstractmethod
    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        """Write a whole object. ``if_absent``: create-only (S3 If-None-Match, GCS
        generation 0, local hard link); raises AlreadyExistsError if the key holds other
        bytes. The same bytes count as success, so that a retried write whose first try
        landed (response lost) does not fail."""

    @abc.abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abc.abstractmethod
    def put_file(self, key: str, path: str, progress: Optional[ProgressFn] = None) -> None:
        """Upload a local file (multipart/resumable for large files)."""

    @abc.abstractmethod
    def get_file(self, key: str, path: str, progress: Optional[ProgressFn] = None) -> None:
        """Download to ``path`` atomically (temp file + rename)."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """All objects whose key starts with ``prefix``, recursively, sorted by key."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Delete one object; deleting a missing key is not an error."""

    @abc.abstractmethod
    def check_access(self) -> None:
        """Raise BucketAccessError with a fix-it message unless we can read and write."""

    def cleanup_incomplete_uploads(self, older_than_s: float = 6 * 3600) -> int:
        """Remove the leftovers of uploads killed mid-way (a preempted VM): S3 multipart
        uploads (billed until aborted), local temp files. Returns how many were removed.
        Only those older than ``older_than_s``, so live uploads of other nodes are spared.
        GCS resumable sessions cost nothing and expire by themselves: nothing to do."""
        return 0

    # --- conveniences shared by all backends -----------------------------------------
    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
            return True
        except NotFoundError:
            return False

    def stat(self, key: str) -> ObjectInfo:
        for info in self.list(key):
            if info.key == key:
                return info
        raise NotFoundError(f"{self.child_uri(key)} does not exist")

    def delete_prefix(self, prefix: str) -> int:
        items = self.list(prefix)
        for info in items:
            self.delete(info.key)
        return len(items)

    def sha256(self, key: str) -> str:
        return hashlib.sha256(self.get_bytes(key)).hexdigest()


class ObjectStoreBucket(Bucket):
    """What the cloud backends (S3, GCS) share: object names under the URI's prefix, and
    every SDK call retried by ``self.policy`` with its errors put in our words by
    ``_translate``. Subclasses set ``self.policy`` in ``__init__``."""

    @property
    def name(self) -> str:
        return self.location.bucket

    def _key(self, key: str) -> str:
        key = key.strip("/")
        if not key:
            raise ValueError("empty object key")
        return f"{self.location.prefix}/{key}" if self.location.prefix else key

    def _base(self) -> str:
        return f"{self.location.prefix}/" if self.location.prefix else ""

    def _run(self, fn, what: str, key: Optional[str] = None):
        from vicuna_cloud.storage.retry import call_with_retry  # retry imports this module

        return call_with_retry(fn, what=what, policy=self.policy,
                               translate=lambda exc: self._translate(exc, what, key))

    @abc.abstractmethod
    def _translate(self, exc: BaseException, what: str, key: Optional[str]) -> StorageError:
        """The StorageError (with a fix-it message) that an SDK exception stands for."""

    @abc.abstractmethod
    def _list_objects(self, full_prefix: str) -> Iterable[tuple[str, int]]:
        """(full object name, size) of every object whose name starts with ``full_prefix``."""

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        base = self._base()
        full_prefix = base + prefix.lstrip("/")

        def list_all() -> list[ObjectInfo]:
            out = [ObjectInfo(name[len(base):], size) for name, size in self._list_objects(full_prefix)]
            return sorted(out, key=lambda o: o.key)

        return self._run(list_all, f"list {self.uri}/{prefix}", None)

    def _download_atomically(self, key: str, path: str, fetch: Callable[[int, str], None]) -> None:
        """Retried as one operation: ``fetch(fd, tmp)`` fills a fresh temp file beside
        ``path`` (and owns ``fd``), which is renamed into place only if fetch returns."""
        dest_dir = os.path.dirname(os.path.abspath(path))
        os.makedirs(dest_dir, exist_ok=True)

        def download() -> None:
            fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=f".{os.path.basename(path)}.part-")
            try:
                fetch(fd, tmp)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)

        self._run(download, f"download {self.child_uri(key)}", key)

    def _check_round_trip(self) -> None:
        """Write, read back and delete a small probe object."""
        probe = f".vicuna-access-check-{uuid.uuid4().hex[:12]}"
        self.put_bytes(probe, b"ok")
        if self.get_bytes(probe) != b"ok":
            raise BucketAccessError(f"{self.uri} returned different bytes than were written")
        self.delete(probe)
