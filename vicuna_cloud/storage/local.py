"""A local directory as a bucket: the default for `--local` runs and the simplest test bed."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Optional

from vicuna_cloud.storage.base import Bucket, ObjectInfo, ProgressFn
from vicuna_cloud.storage.errors import AlreadyExistsError, BucketAccessError, NotFoundError


class LocalBucket(Bucket):
    @property
    def root(self) -> str:
        return self.location.bucket

    def _path(self, key: str) -> str:
        key = key.strip("/")
        path = os.path.normpath(os.path.join(self.root, key))
        if not (path == self.root or path.startswith(self.root + os.sep)):
            raise ValueError(f"key {key!r} escapes the bucket root")
        return path

    @staticmethod
    def _mkstemp(dest: str) -> tuple[int, str]:
        """A temp file beside ``dest``; the directory is made again if a delete of its
        last file removed it in between."""
        for _ in range(3):
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            try:
                return tempfile.mkstemp(dir=os.path.dirname(dest), prefix=".tmp-")
            except FileNotFoundError:
                continue
        return tempfile.mkstemp(dir=os.path.dirname(dest), prefix=".tmp-")

    def _atomic_write(self, dest: str, writer) -> None:
        fd, tmp = self._mkstemp(dest)
        try:
            with os.fdopen(fd, "wb") as f:
                writer(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        dest = self._path(key)
        if not if_absent:
            return self._atomic_write(dest, lambda f: f.write(data))
        # Create-only: write a temp file, then hard-link it into place (fails if present).
        fd, tmp = self._mkstemp(dest)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, dest)
        except FileExistsError:
            with open(dest, "rb") as f:
                if f.read() == data:
                    return
            raise AlreadyExistsError(f"{self.child_uri(key)} already exists") from None
        finally:
            os.unlink(tmp)

    def get_bytes(self, key: str) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                return f.read()
        except (FileNotFoundError, IsADirectoryError):
            raise NotFoundError(f"{self.child_uri(key)} does not exist") from None

    def put_file(self, key: str, path: str, progress: Optional[ProgressFn] = None) -> None:
        def copy(dst):
            with open(path, "rb") as src:
                while chunk := src.read(8 << 20):
                    dst.write(chunk)
                    if progress:
                        progress(len(chunk))
        self._atomic_write(self._path(key), copy)

    def get_file(self, key: str, path: str, progress: Optional[ProgressFn] = None) -> None:
        src = self._path(key)
        if not os.path.isfile(src):
            raise NotFoundError(f"{self.child_uri(key)} does not exist")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.part"
        shutil.copyfile(src, tmp)
        if progress:
            progress(os.path.getsize(tmp))
        os.replace(tmp, path)

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        out: list[ObjectInfo] = []
        # Walk only the prefix's directory, not the whole bucket (every run's checkpoints).
        sub = prefix.rpartition("/")[0]
        top = os.path.normpath(os.path.join(self.root, sub)) if sub else self.root
        if not (top == self.root or top.startswith(self.root + os.sep)):
            return out  # no key can start with a prefix that leaves the bucket
        if not os.path.isdir(top):
            return out
        for dirpath, _dirs, files in os.walk(top):
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                full = os.path.join(dirpath, name)
                key = os.path.relpath(full, self.root).replace(os.sep, "/")
                if key.startswith(prefix):
                    try:
                        out.append(ObjectInfo(key, os.path.getsize(full)))
                    except FileNotFoundError:
                        continue
        return sorted(out, key=lambda o: o.key)

    def stat(self, key: str) -> ObjectInfo:
        p = self._path(key)
        if not os.path.isfile(p):
            raise NotFoundError(f"{self.child_uri(key)} does not exist")
        return ObjectInfo(key.strip("/"), os.path.getsize(p))

    def delete(self, key: str) -> None:
        """Delete the file, then its directories left empty (an object store has no empty
        directories: a deleted checkpoint must not leave ``step-N/`` behind)."""
        path = self._path(key)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        parent = os.path.dirname(path)
        while parent != self.root and parent.startswith(self.root + os.sep):
            try:
                os.rmdir(parent)
            except OSError:  # not empty (or already gone): stop here
                break
            parent = os.path.dirname(parent)

    def cleanup_incomplete_uploads(self, older_than_s: float = 6 * 3600) -> int:
        removed = 0
        if not os.path.isdir(self.root):
            return 0
        cutoff = time.time() - older_than_s
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith(".tmp-"):
                    full = os.path.join(dirpath, name)
                    try:
                        if os.path.getmtime(full) <= cutoff:
                            os.unlink(full)
                            removed += 1
                    except FileNotFoundError:
                        continue
        return removed

    def check_access(self) -> None:
        try:
            os.makedirs(self.root, exist_ok=True)
            probe = os.path.join(self.root, ".tmp-access-check")
            with open(probe, "wb") as f:
                f.write(b"ok")
            os.unlink(probe)
        except OSError as e:
            raise BucketAccessError(
                f"cannot write to {self.root}: {e.strerror}; choose a writable --bucket directory"
            ) from None
