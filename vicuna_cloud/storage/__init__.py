"""One object-store interface over local directories, S3 and GCS.

Every key is relative to the bucket URI's prefix and uses '/' separators. See
``base.Bucket`` for the contract; ``open_bucket`` picks the backend from the URI scheme.
"""

from vicuna_cloud.storage.base import (
    AlreadyExistsError,
    Bucket,
    BucketAccessError,
    NotFoundError,
    ObjectInfo,
    StorageError,
)
from vicuna_cloud.storage.uri import BucketURI, parse_bucket_uri


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
    "AlreadyExistsError", "Bucket", "BucketAccessError", "BucketURI", "NotFoundError", "ObjectInfo",
    "StorageError", "open_bucket", "parse_bucket_uri",
]
