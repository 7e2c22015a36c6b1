"""Where the nodes run, relative to the bucket: by default, next to it.

Every checkpoint (81 GB of state for 7B) goes to the bucket and every recovery reads one
back. A node in another cloud pays egress on every save and may not be able to read the
bucket at all; a node in another region of the same cloud pays inter-region transfer. So
the default cloud is the bucket's, and the default region is the bucket's when launch can
read it; anything else is an explicit ``--cloud any|aws|gcp`` / ``--region any|NAME``
that comes with a warning.

What SkyPilot 0.14.1 gives a node to read a bucket with (checked in its source):
- AWS nodes get the ``skypilot-v1`` instance role with AmazonS3FullAccess
  (sky/provision/aws/config.py, ``attach_policy_arns``): an AWS node reads s3:// always.
- A node on another cloud gets ``~/.aws/credentials`` only when the launching identity is
  that shared credentials file (sky/clouds/aws.py, ``get_credential_file_mounts``):
  environment-variable credentials are never shipped.
- GCP credential files under ``~/.config/gcloud`` and the application-default key are
  shipped when they exist (sky/clouds/gcp.py, ``get_credential_file_mounts``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

CLOUD_OF_SCHEME = {"s3": "aws", "gs": "gcp"}


class LocalityError(ValueError):
    """The placement cannot work (a node could not read the bucket)."""


@dataclass(frozen=True)
class Placement:
    cloud: str                       # aws, gcp or any
    region: Optional[str]            # pinned region, or None
    bucket_cloud: str
    bucket_region: Optional[str]
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def bucket_region(uri: str) -> Optional[str]:
    """The bucket's region, or None when it cannot be read (no credentials, multi-region
    GCS location, network). Never raises: locality is a default, not a requirement."""
    from vicuna_cloud.storage.uri import parse_bucket_uri

    try:
        loc = parse_bucket_uri(uri)
        if loc.scheme == "s3":
            import boto3
            from botocore.config import Config

            client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3")
                                  or os.environ.get("AWS_ENDPOINT_URL"),
                                  config=Config(retries={"max_attempts": 2},
                                                connect_timeout=5, read_timeout=10))
            answer = client.get_bucket_location(Bucket=loc.bucket)
            return answer.get("LocationConstraint") or "us-east-1"
        if loc.scheme == "gs":
            from google.cloud import storage

            b = storage.Client().get_bucket(loc.bucket, timeout=10)
            if (b.location_type or "").lower() == "region" and b.location:
                return b.location.lower()
            return None
    except Exception:  # noqa: BLE001 - any failure means "unknown", said by the caller
        return None
    return None


def _ships_credentials_for(bucket_cloud: str) -> bool:
    """Whether SkyPilot would ship credentials for ``bucket_cloud`` to a foreign node."""
    if bucket_cloud == "aws":
        path = os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials"
        return Path(path).expanduser().is_file()
    adc = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS") or \
        "~/.config/gcloud/application_default_credentials.json"
    return Path(adc).expanduser().is_file()


def resolve(bucket_uri: str, cloud: Optional[str], region: Optional[str], *,
            look_up_region: bool = True, check_credentials: bool = True) -> Placement:
    """Default placement next to the bucket; explicit crossings warned about."""
    scheme = bucket_uri.split("://", 1)[0]
    bcloud = CLOUD_OF_SCHEME.get(scheme)
    if bcloud is None:
        raise LocalityError(f"bucket {bucket_uri!r} is not s3:// or gs://")
    warnings: list[str] = []
    notes: list[str] = []
    chosen = (cloud or bcloud).lower()
    if chosen != bcloud:
        where = "AWS or GCP" if chosen == "any" else chosen.upper()
        warnings.append(
            f"--cloud {chosen}: nodes may run on {where} while the bucket is on "
            f"{bcloud.upper()}: every checkpoint save and every resume crosses clouds "
            "(egress billed per GB); omit --cloud to stay next to the bucket")
        if check_credentials and not _ships_credentials_for(bcloud):
            fix = ("write them to ~/.aws/credentials (`aws configure`)" if bcloud == "aws"
                   else "run `gcloud auth application-default login`")
            raise LocalityError(
                f"a node outside {bcloud.upper()} could not read {bucket_uri}: SkyPilot "
                f"ships only credential files to nodes, and none for {bcloud.upper()} were "
                f"found here; {fix}, or omit --cloud to run next to the bucket")
    bregion = bucket_region(bucket_uri) if look_up_region else None
    pinned: Optional[str] = None
    if chosen == bcloud:
        if region is None:
            pinned = bregion
            if bregion is None:
                notes.append("region not pinned: the bucket's region could not be read "
                             "(recoveries may move to another region)")
        elif region.lower() == "any":
            if bregion:
                warnings.append(
                    f"--region any: recoveries may land outside the bucket's region "
                    f"{bregion}; checkpoints then cross regions (transfer billed per GB)")
        else:
            pinned = region
            if bregion and region != bregion:
                warnings.append(f"--region {region} differs from the bucket's region "
                                f"{bregion}: checkpoints cross regions (billed per GB)")
    elif region and region.lower() != "any":
        if chosen == "any":
            raise LocalityError(f"--region {region} needs one cloud: add --cloud aws or "
                                "--cloud gcp")
        pinned = region
    return Placement(chosen, pinned, bcloud, bregion, warnings, notes)
