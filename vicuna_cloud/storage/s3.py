"""Amazon S3 (and S3-compatible endpoints) as a Bucket, through boto3.

The endpoint comes from AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL when set (a local moto
server in tests, or an S3-compatible store), else AWS. Credentials come from boto3's usual
chain; they are never read or logged here.
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
    RetryPolicy, TransientStorageError, _short,
)
from vicuna_cloud.storage.uri import BucketURI

MiB = 1 << 20
_clients: dict = {}
_clients_lock = threading.Lock()

_BAD_CREDENTIAL_CODES = {
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
    "TokenRefreshRequired", "UnrecognizedClientException", "InvalidClientTokenId",
}


def _code(exc: BaseException) -> str:
    resp = getattr(exc, "response", None)
    return str(resp.get("Error", {}).get("Code", "")) if isinstance(resp, dict) else ""


def _botocore_root(exc: BaseException) -> BaseException:
    """boto3's transfer manager wraps the ClientError that says what went wrong
    (S3UploadFailedError): find it, so a 403 during an upload reads as a 403."""
    seen, cur = set(), exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if (type(cur).__module__ or "").startswith("botocore"):
            return cur
        cur = cur.__cause__ or cur.__context__
    return exc


def _endpoint_from_env() -> Optional[str]:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _client(endpoint: Optional[str], policy: RetryPolicy):
    """One boto3 client per (endpoint, region, policy): clients are thread-safe, and
    making one costs ~100 ms, so they are shared."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    # Credentials are part of the key only through identity, never stored in the key.
    cred_key = (os.environ.get("AWS_PROFILE"), hash(os.environ.get("AWS_ACCESS_KEY_ID")),
                os.environ.get("AWS_SHARED_CREDENTIALS_FILE"), os.environ.get("AWS_CONFIG_FILE"))
    key = (endpoint, region, policy, cred_key)
    with _clients_lock:
        if key not in _clients:
            import boto3
            from botocore.config import Config

            config = Config(
                retries={"mode": "standard", "total_max_attempts": policy.request_attempts},
                connect_timeout=policy.connect_timeout_s,
                read_timeout=policy.read_timeout_s,
                max_pool_connections=32,
                s3={"addressing_style": "path"} if endpoint else {},
            )
            session = boto3.session.Session()
            _clients[key] = session.client("s3", endpoint_url=endpoint, region_name=region, config=config)
        return _clients[key]


class S3Bucket(ObjectStoreBucket):
    """A prefix in an S3 bucket.

    Large files go up and down in parts (boto3's transfer manager, parts in parallel);
    an interrupted multipart upload is aborted, so no partial object is ever visible.
    """

    def __init__(
        self,
        uri: BucketURI,
        *,
        endpoint_url: Optional[str] = None,
        policy: Optional[RetryPolicy] = None,
        multipart_threshold: int = 64 * MiB,
        multipart_chunksize: int = 64 * MiB,
        max_concurrency: int = 8,
        page_size: int = 1000,
    ):
        super().__init__(uri)
        self.endpoint_url = endpoint_url or _endpoint_from_env()
        self.policy = policy or RetryPolicy.from_env()
        self.multipart_threshold = multipart_threshold
        self.multipart_chunksize = multipart_chunksize
        self.max_concurrency = max_concurrency
        self.page_size = page_size
        self._bucket_seen = False

    # --- plumbing ----------------------------------------------------------------------
    @property
    def client(self):
        return _client(self.endpoint_url, self.policy)

    def _translate(self, exc: BaseException, what: str, key: Optional[str]) -> StorageError:
        from botocore import exceptions as be

        bucket = f"s3://{self.name}"
        exc = _botocore_root(exc)
        if isinstance(exc, (be.NoCredentialsError, be.PartialCredentialsError)):
            return BucketAccessError(
                "no AWS credentials found: run `aws configure`, set AWS_PROFILE, or set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            )
        if isinstance(exc, be.ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket" or (code in ("404", "NotFound") and key is None):
                return self._missing_bucket()
            if code in ("NoSuchKey", "404", "NotFound") or status == 404:
                if code != "NoSuchKey" and not self._bucket_exists():
                    return self._missing_bucket()
                return NotFoundError(f"{self.child_uri(key or '')} does not exist")
            if code == "PreconditionFailed" or status == 412:
                return AlreadyExistsError(f"{self.child_uri(key or '')} already exists")
            if code in _BAD_CREDENTIAL_CODES:
                return BucketAccessError(
                    f"AWS rejected the credentials ({code}) for {bucket}: check them with "
                    f"`aws sts get-caller-identity`, refresh them (e.g. `aws sso login`) or set AWS_PROFILE"
                )
            if code in ("AccessDenied", "403", "Forbidden", "AllAccessDisabled") or status == 403:
                return BucketAccessError(
                    f"access denied to {bucket} ({what}): grant your AWS identity "
                    f"s3:ListBucket, s3:GetObject, s3:PutObject and s3:DeleteObject on it, "
                    f"or pass another --bucket"
                )
            return StorageError(f"{what} failed: {code or status}: {_short(exc)}")
        if isinstance(exc, be.EndpointConnectionError):
            return StorageError(f"{what} failed: cannot reach the S3 endpoint ({_short(exc)}); "
                                f"check the network or AWS_ENDPOINT_URL")
        return StorageError(f"{what} failed: {_short(exc)}")

    def _missing_bucket(self) -> BucketAccessError:
        b = f"s3://{self.name}"
        return BucketAccessError(
            f"bucket {b} does not exist: create it with `aws s3 mb {b}` or pass another --bucket")

    def _bucket_exists(self) -> bool:
        """Asked only after a bare 404 (HEAD has no error body): key or bucket missing?"""
        if self._bucket_seen:
            return True
        from botocore import exceptions as be

        try:
            self.client.head_bucket(Bucket=self.name)
        except be.ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return False
            return True  # 403 and the like: reported by the original error
        except Exception:  # noqa: BLE001 - unreachable now: keep the original error
            return True
        self._bucket_seen = True
        return True

    def _transfer_config(self):
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(
            multipart_threshold=self.multipart_threshold,
            multipart_chunksize=self.multipart_chunksize,
            max_concurrency=self.max_concurrency,
            num_download_attempts=self.policy.request_attempts,
        )

    # --- the contract ------------------------------------------------------------------
    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        full = self._key(key)
        extra = {"IfNoneMatch": "*"} if if_absent else {}

        def put() -> None:
            try:
                self.client.put_object(Bucket=self.name, Key=full, Body=data, **extra)
            except Exception as exc:  # noqa: BLE001
                # A retried create-only write (here or inside the SDK) may find the object
                # its lost first try made: the same bytes count as success.
                if not (if_absent and _code(exc) == "PreconditionFailed"
                        and self._read(full) == data):
                    raise

        self._run(put, f"put {self.child_uri(key)}", key)

    def _read(self, full: str) -> Optional[bytes]:
        try:
            return self.client.get_object(Bucket=self.name, Key=full)["Body"].read()
        except Exception:  # noqa: BLE001 - only used to confirm our own write
            return None

    def get_bytes(self, key: str) -> bytes:
        full = self._key(key)

        def get() -> bytes:
            resp = self.client.get_object(Bucket=self.name, Key=full)
            body = resp["Body"].read()
            if len(body) != resp["ContentLength"]:
                raise TransientStorageError(
                    f"short read of {self.child_uri(key)}: {len(body)} of {resp['ContentLength']} bytes")
            return body

        return self._run(get, f"get {self.child_uri(key)}", key)

    def put_file(self, key: str, path: str, progress: Optional[ProgressFn] = None) -> None:
        full = self._key(key)
        if not os.path.isfile(path):
            raise StorageError(f"cannot upload {path}: no such file")
        self._run(
            lambda: self.client.upload_file(path, self.name, full, Config=self._transfer_config(),
                                            Callback=progress),
            f"upload {path} to {self.child_uri(key)}", key,
        )

    def get_file(self, key: str, path: str, progress: Optional[ProgressFn] = None) -> None:
        full = self._key(key)

        def fetch(fd: int, tmp: str) -> None:
            os.close(fd)  # boto3 writes by path
            size = self.client.head_object(Bucket=self.name, Key=full)["ContentLength"]
            self.client.download_file(self.name, full, tmp, Config=self._transfer_config(),
                                      Callback=progress)
            got = os.path.getsize(tmp)
            if got != size:
                raise TransientStorageError(
                    f"short download of {self.child_uri(key)}: {got} of {size} bytes")

        self._download_atomically(key, path, fetch)

    def _list_objects(self, full_prefix: str):
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.name, Prefix=full_prefix, PaginationConfig={"PageSize": self.page_size})
        return [(obj["Key"], int(obj["Size"])) for page in pages for obj in page.get("Contents", [])]

    def stat(self, key: str) -> ObjectInfo:
        full = self._key(key)
        resp = self._run(lambda: self.client.head_object(Bucket=self.name, Key=full),
                         f"stat {self.child_uri(key)}", key)
        return ObjectInfo(key.strip("/"), int(resp["ContentLength"]))

    def delete(self, key: str) -> None:
        full = self._key(key)
        self._run(lambda: self.client.delete_object(Bucket=self.name, Key=full),
                  f"delete {self.child_uri(key)}", key)

    def delete_prefix(self, prefix: str) -> int:
        """Batch delete (1,000 keys a request) instead of one request per object."""
        items = self.list(prefix)
        base = self._base()
        for i in range(0, len(items), 1000):
            batch = [{"Key": base + o.key} for o in items[i:i + 1000]]

            def delete_batch(batch=batch):
                resp = self.client.delete_objects(Bucket=self.name, Delete={"Objects": batch, "Quiet": True})
                errors = resp.get("Errors") or []
                if errors:
                    raise StorageError(f"could not delete {len(errors)} objects under "
                                       f"{self.child_uri(prefix)}: {errors[0].get('Code')}")

            self._run(delete_batch, f"delete {self.child_uri(prefix)}*", key=prefix or "")
        return len(items)

    def cleanup_incomplete_uploads(self, older_than_s: float = 6 * 3600) -> int:
        """Abort multipart uploads under our prefix started more than ``older_than_s`` ago."""
        import datetime as dt

        cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=older_than_s)

        def stale() -> list[tuple[str, str]]:
            out = []
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.name, Prefix=self._base())
            for page in pages:
                for up in page.get("Uploads", []):
                    if up["Initiated"] <= cutoff:
                        out.append((up["Key"], up["UploadId"]))
            return out

        uploads = self._run(stale, f"list incomplete uploads under {self.uri}", None)
        for key, upload_id in uploads:
            def abort(key=key, upload_id=upload_id):
                try:
                    self.client.abort_multipart_upload(Bucket=self.name, Key=key, UploadId=upload_id)
                except Exception as exc:  # noqa: BLE001 - already gone (another node) is fine
                    if _code(exc) != "NoSuchUpload":
                        raise

            self._run(abort, f"abort upload of s3://{self.name}/{key}", key)
        return len(uploads)

    def check_access(self) -> None:
        # ListObjectsV2 rather than HeadBucket: HEAD answers carry no error code, and the
        # code is what tells a bad key (InvalidAccessKeyId) from a missing permission.
        self._run(lambda: self.client.list_objects_v2(Bucket=self.name, Prefix=self._base(), MaxKeys=1),
                  f"open s3://{self.name}", None)
        self._check_round_trip()
