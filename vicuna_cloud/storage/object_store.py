"""What the cloud backends (S3, GCS) share on top of the Bucket contract: object names
under the URI's prefix, every SDK call retried as a unit (``retry.call_with_retry``),
atomic downloads and the access probe."""

from __future__ import annotations

import abc
import os
import tempfile
import uuid
from typing import Callable, Iterable, Optional

from vicuna_cloud.storage.base import Bucket, ObjectInfo
from vicuna_cloud.storage.errors import BucketAccessError, StorageError
from vicuna_cloud.storage.retry import call_with_retry


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
