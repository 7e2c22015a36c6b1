"""Parsing and validating bucket URIs, with errors a user can act on."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from vicuna_cloud.errors import ConfigError

# S3 and GCS bucket naming rules share this core (3-63 chars, lowercase, digits, . and -).
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.\-_]{1,61}[a-z0-9]$")


class InvalidBucketURI(ConfigError):
    pass


@dataclass(frozen=True)
class BucketURI:
    scheme: str  # "s3" | "gs" | "file"
    bucket: str  # bucket name; for "file", the absolute root directory
    prefix: str  # no leading or trailing '/', may be empty

    def __str__(self) -> str:
        if self.scheme == "file":
            return os.path.join(self.bucket, self.prefix) if self.prefix else self.bucket
        tail = f"/{self.prefix}" if self.prefix else ""
        return f"{self.scheme}://{self.bucket}{tail}"

    def child(self, key: str) -> "BucketURI":
        key = key.strip("/")
        prefix = f"{self.prefix}/{key}" if self.prefix and key else (self.prefix or key)
        return BucketURI(self.scheme, self.bucket, prefix)


def parse_bucket_uri(uri: str) -> BucketURI:
    if not isinstance(uri, str) or not uri.strip():
        raise InvalidBucketURI("empty bucket URI: give s3://BUCKET[/prefix], gs://BUCKET[/prefix] or a directory")
    uri = uri.strip()
    if uri.startswith(("s3://", "gs://")):
        scheme, rest = uri.split("://", 1)
        bucket, _, prefix = rest.partition("/")
        if not _BUCKET_NAME.match(bucket) or ".." in bucket:
            raise InvalidBucketURI(
                f"malformed bucket URI {uri!r}: bucket name {bucket!r} must be 3-63 lowercase "
                f"letters, digits, '.', '-' (e.g. {scheme}://my-bucket/vicuna)"
            )
        prefix = prefix.strip("/")
        if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
            raise InvalidBucketURI(f"malformed bucket URI {uri!r}: empty or relative path segment")
        return BucketURI(scheme, bucket, prefix)
    if "://" in uri and not uri.startswith("file://"):
        scheme = uri.split("://", 1)[0]
        raise InvalidBucketURI(
            f"unsupported bucket URI scheme {scheme!r} in {uri!r}: use s3://, gs:// or a local directory"
        )
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    return BucketURI("file", os.path.abspath(os.path.expanduser(path)), "")
