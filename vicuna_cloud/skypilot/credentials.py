"""Cloud credential checks before a launch: fail early with how to fix it.

Only the presence of usable credentials is checked (no API call that costs money or time):
AWS through boto3's credential chain, GCP through google.auth.default (which also finds
a GCE VM's service account).
"""

from __future__ import annotations
from vicuna_cloud import errors
from vicuna_cloud.runspec import Cloud


class CredentialsError(errors.CredentialsError, RuntimeError):
    pass


def aws_ok() -> bool:
    import boto3

    try:
        return boto3.Session().get_credentials() is not None
    except Exception:  # a malformed profile counts as none
        return False


def gcp_ok() -> bool:
    import google.auth
    from google.auth import exceptions

    try:
        google.auth.default()
        return True
    except exceptions.DefaultCredentialsError:
        return False


_FIX = {
    "aws": "run `aws configure` (or set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)",
    "gcp": "run `gcloud auth application-default login` (or set GOOGLE_APPLICATION_CREDENTIALS)",
}


def check(cloud: str) -> list[str]:
    """Clouds usable for ``--cloud cloud``; raise CredentialsError when there is none."""
    wanted = list(Cloud.priced()) if cloud == Cloud.ANY.value else [cloud]
    have = [c for c in wanted if {"aws": aws_ok, "gcp": gcp_ok}[c]()]
    if have:
        return have
    if cloud == "any":
        raise CredentialsError(
            f"no AWS or GCP credentials found; {_FIX['aws']}, or {_FIX['gcp']}"
        )
    raise CredentialsError(f"no {cloud.upper()} credentials found; {_FIX[cloud]}")
