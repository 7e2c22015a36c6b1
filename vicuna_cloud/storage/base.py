"""The Bucket contract every backend implements.

Imports only ``errors`` and ``uri``: the retry layer and the cloud backends build on it
(``object_store.py``), never the reverse.
"""

from __future__ import annotations

import abc
import functools
import hashlib
import os
import threading
from dataclasses import dataclass
from typing import Callable, Optional

from vicuna_cloud.storage.errors import NotFoundError
from vicuna_cloud.storage.uri import BucketURI

ProgressFn = Callable[[int], None]  # called with bytes transferred since the last call


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


class TransferCounter:
    """Bytes this process moved to (up) and from (down) every bucket it opened.

    Why: data transfer is a line of the cloud bill (a checkpoint to a bucket in another
    region costs $0.02/GB on AWS); the trainer sums it over ranks into the ledger."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.up = 0
        self.down = 0
        self._depth = threading.local()

    def add(self, up: int = 0, down: int = 0) -> None:
        with self._lock:
            self.up += int(up)
            self.down += int(down)

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self.up, self.down


TRANSFERS = TransferCounter()


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _counted(name: str, fn):
    """Wrap a transfer method so each outermost call adds its bytes to TRANSFERS."""

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        depth = getattr(TRANSFERS._depth, "n", 0)
        TRANSFERS._depth.n = depth + 1
        try:
            out = fn(self, *args, **kwargs)
        finally:
            TRANSFERS._depth.n = depth
        if depth == 0:
            if name == "put_bytes":
                TRANSFERS.add(up=len(args[1] if len(args) > 1 else kwargs.get("data", b"")))
            elif name == "get_bytes":
                TRANSFERS.add(down=len(out or b""))
            elif name == "put_file":
                TRANSFERS.add(up=_size(args[1] if len(args) > 1 else kwargs["path"]))
            elif name == "get_file":
                TRANSFERS.add(down=_size(args[1] if len(args) > 1 else kwargs["path"]))
        return out

    wrapper.__counted__ = True
    return wrapper


class Bucket(abc.ABC):
    """A prefix in an object store. Keys are relative, '/'-separated.

    Writes are whole-object (S3/GCS semantics): a reader sees the old object or the new
    one, never a partial one. Transient faults are retried inside each call. Every
    backend's transfers are counted in ``TRANSFERS`` (see ``__init_subclass__``).
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in ("put_bytes", "get_bytes", "put_file", "get_file"):
            fn = cls.__dict__.get(name)
            if fn is not None and not getattr(fn, "__counted__", False) \
                    and not getattr(fn, "__isabstractmethod__", False):
                setattr(cls, name, _counted(name, fn))

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
