"""One object-store interface over local directories, S3 and GCS.

Every key is relative to the bucket URI's prefix and uses '/' separators. See
``base.Bucket`` for the contract; ``open_bucket`` picks the backend from the URI scheme.

Environment (read when a bucket is opened, so child processes inherit it):
- AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3: another S3 endpoint (moto in tests, or an
  S3-compatible store); credentials come from boto3's usual chain.
- STORAGE_EMULATOR_HOST: a GCS emulator (anonymous credentials); GOOGLE_CLOUD_PROJECT.
- VICUNA_STORAGE_RETRY_{ATTEMPTS,BASE_S,MAX_BACKOFF_S,DEADLINE_S,REQUEST_ATTEMPTS},
  VICUNA_STORAGE_{CONNECT,READ}_TIMEOUT_S: retry bounds (``retry.RetryPolicy``).
Errors: NotFoundError (key), AlreadyExistsError (create-only write), BucketAccessError
(missing bucket, no or bad credentials, access denied: the message says the fix),
StorageError (gave up on a transient failure); a malformed URI raises InvalidBucketURI
(a ValueError).
"""

from vicuna_cloud.storage.base import Bucket, ObjectInfo
from vicuna_cloud.storage.errors import (
    AlreadyExistsError,
    BucketAccessError,
    NotFoundError,
    StorageError,
)
from vicuna_cloud.storage.uri import BucketURI, InvalidBucketURI, parse_bucket_uri


def open_bucket(uri: str) -> Bucket:
    """Open ``s3://bucket/prefix``, ``gs://bucket/prefix``, ``file:///dir`` or a path."""
    parsed = parse_bucket_uri(uri)
    if parsed.scheme == "file":
        from vicuna_cloud.storage.local import LocalBucket

        return LocalBucket(parsed)
    if parsed.scheme == "s3":
        from vicuna_cloud.storage.s3 import S3Bucket

        return S3Bucket(parsed)
    from vicuna_cloud.storage.gcs import GCSBucket

    return GCSBucket(parsed)


__all__ = [
    "AlreadyExistsError", "Bucket", "BucketAccessError", "BucketURI", "InvalidBucketURI",
    "NotFoundError", "ObjectInfo", "StorageError", "open_bucket", "parse_bucket_uri",
]
