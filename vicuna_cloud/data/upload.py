"""Content-addressed upload of a prepared dataset.

Layout: ``<bucket>/datasets/<sha256 of train.jsonl>/train.jsonl`` then ``manifest.json``,
the manifest written last: its presence means the upload completed. An upload whose
objects are already there (manifest present, train.jsonl of the right size, manifest
naming the same sha256) is a no-op. After uploading, train.jsonl is verified by reading
it back and hashing it; a mismatch deletes the object and fails. Multipart/resumable
transfer and retries are the storage backend's job.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable, Optional

from vicuna_cloud import bucket_keys
from vicuna_cloud.data.manifest import EVAL_FILE, MANIFEST_FILE, TRAIN_FILE, read_manifest
from vicuna_cloud.data.reader import DataError
from vicuna_cloud.hashing import sha256_file


@dataclass
class UploadResult:
    uri: str          # pass to `vicuna-cloud launch --data`
    sha256: str
    bytes: int
    uploaded: bool    # False: it was already there


dataset_key = bucket_keys.dataset_prefix


def check_local(local_dir: str) -> tuple[dict, str, str, int]:
    """Manifest, train.jsonl path, its sha256 and size; they must agree."""
    if not os.path.isdir(local_dir):
        raise DataError(f"{local_dir}: not a directory; give the --out directory of `data prepare`")
    manifest = read_manifest(local_dir)
    train = os.path.join(local_dir, manifest["output"].get("file", TRAIN_FILE))
    if not os.path.isfile(train):
        raise DataError(f"{train}: missing; re-run `vicuna-cloud data prepare`")
    sha, size = sha256_file(train), os.path.getsize(train)
    if sha != manifest["output"].get("sha256") or size != manifest["output"].get("bytes"):
        raise DataError(
            f"{train} does not match {MANIFEST_FILE} (sha256 {sha[:12]}... vs "
            f"{str(manifest['output'].get('sha256'))[:12]}...): it changed after `data prepare`; "
            "re-run prepare"
        )
    return manifest, train, sha, size


def upload_dataset(local_dir: str, bucket_uri: str,
                   progress: Optional[Callable[[int], None]] = None,
                   on_size: Optional[Callable[[int], None]] = None) -> UploadResult:
    """Upload ``local_dir`` (train.jsonl + manifest.json) under datasets/<sha256>/."""
    from vicuna_cloud.storage import StorageError, open_bucket
    from vicuna_cloud.storage.uri import InvalidBucketURI

    manifest, train, sha, size = check_local(local_dir)
    if on_size:
        on_size(size)
    prefix = dataset_key(sha)
    try:
        bucket = open_bucket(bucket_uri)
        bucket.check_access()
        if _already_there(bucket, prefix, sha, size, local_dir):
            if progress:
                progress(size)
            return UploadResult(bucket.child_uri(prefix), sha, size, uploaded=False)
        key = f"{prefix}/{TRAIN_FILE}"
        bucket.put_file(key, train, progress=progress)
        remote = bucket.stat(key).size
        remote_sha = _remote_sha256(bucket, key, local_dir) if remote == size else ""
        if remote != size or remote_sha != sha:
            bucket.delete(key)
            raise DataError(
                f"{bucket.child_uri(key)}: verification failed after upload (size {remote} vs "
                f"{size}); the object was deleted, run `data upload` again"
            )
        _upload_eval(bucket, prefix, local_dir, manifest)
        with open(os.path.join(local_dir, MANIFEST_FILE), "rb") as f:
            bucket.put_bytes(f"{prefix}/{MANIFEST_FILE}", f.read())
        return UploadResult(bucket.child_uri(prefix), sha, size, uploaded=True)
    except InvalidBucketURI as e:
        raise DataError(str(e)) from None
    except StorageError as e:
        raise DataError(f"{bucket_uri}: {str(e).splitlines()[0]}") from None


def _upload_eval(bucket, prefix: str, local_dir: str, manifest: dict) -> None:
    """The held-out split (at most a few hundred conversations), verified by its sha256."""
    import hashlib

    entry = manifest.get("eval")
    if not entry:
        return
    path = os.path.join(local_dir, entry.get("file", EVAL_FILE))
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        raise DataError(f"{path}: missing but named in {MANIFEST_FILE}; re-run prepare") from None
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise DataError(f"{path} does not match {MANIFEST_FILE}: it changed after `data "
                        "prepare`; re-run prepare")
    key = f"{prefix}/{EVAL_FILE}"
    bucket.put_bytes(key, data)
    if hashlib.sha256(bucket.get_bytes(key)).hexdigest() != entry["sha256"]:
        bucket.delete(key)
        raise DataError(f"{bucket.child_uri(key)}: verification failed after upload; the "
                        "object was deleted, run `data upload` again")


def _remote_sha256(bucket, key: str, near: str) -> str:
    """Download to a temp file and hash it: memory stays flat for multi-GB datasets."""
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=".verify-", dir=near)
    os.close(fd)
    try:
        bucket.get_file(key, tmp)
        return sha256_file(tmp)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _already_there(bucket, prefix: str, sha: str, size: int,
                   local_dir: Optional[str] = None) -> bool:
    from vicuna_cloud.storage import NotFoundError

    try:
        if bucket.stat(f"{prefix}/{TRAIN_FILE}").size != size:
            return False
        remote_manifest = json.loads(bucket.get_bytes(f"{prefix}/{MANIFEST_FILE}"))
    except NotFoundError:
        return False
    except (ValueError, UnicodeDecodeError):
        return False  # a corrupt manifest: upload again, which rewrites it
    if remote_manifest.get("output", {}).get("sha256") != sha:
        return False
    want_eval = (read_manifest(local_dir).get("eval") or {}).get("sha256") if local_dir else None
    return (remote_manifest.get("eval") or {}).get("sha256") == want_eval
