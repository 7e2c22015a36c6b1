"""Input checks every SDK call shares: each turns a bad value into a ConfigError whose
message names the flag and the fix (the CLI prints it as is)."""

from __future__ import annotations

import re
from typing import Optional

from vicuna_cloud.errors import ConfigError
from vicuna_cloud.recipes import Preset, get_preset
from vicuna_cloud.runspec import Cloud, check_run_id
from vicuna_cloud.storage.uri import BucketURI, parse_bucket_uri

_GPUS = re.compile(r"^([A-Za-z0-9][A-Za-z0-9-]*):([1-9][0-9]*)$")
_HF_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")


def preset(name: str, version: Optional[str], base_model: Optional[str] = None,
           gpus: Optional[str] = None, nodes: Optional[int] = None) -> Preset:
    """The preset with the caller's overrides (RecipeError is a ConfigError already)."""
    if nodes is not None and nodes < 1:
        raise ConfigError(f"--nodes must be at least 1 (got {nodes})")
    hw: dict[str, object] = {}
    if gpus is not None:
        m = _GPUS.match(gpus.strip())
        if not m:
            raise ConfigError(f"--gpus {gpus!r} must look like NAME:COUNT, e.g. A100-80GB:8")
        hw = {"accelerator": m.group(1), "gpus_per_node": int(m.group(2))}
    if base_model is not None and not _HF_ID.fullmatch(base_model):
        raise ConfigError(f"--base-model {base_model!r} must be a Hugging Face id like org/name")
    return get_preset(name, version, base_model=base_model, nodes=nodes, **hw)


def cloud(value: Optional[str]) -> Optional[str]:
    """--cloud: aws, gcp or any (Cloud.choosable); None follows the bucket
    (vicuna_cloud.skypilot.locality)."""
    if value is None:
        return None
    value = value.lower().strip()
    if value not in Cloud.choosable():
        raise ConfigError(f"unknown --cloud {value!r}; use aws, gcp or any (or omit it to run "
                          "next to the bucket)")
    return value


def placement(bucket: str, cloud: Optional[str], region: Optional[str], *,
              look_up_region: bool, check_credentials: bool):
    """Where the nodes run: next to the bucket unless told otherwise (locality.resolve)."""
    from vicuna_cloud.skypilot.locality import LocalityError, resolve

    if region is not None and not re.fullmatch(r"[a-z0-9-]{2,40}|any", region.strip()):
        raise ConfigError(f"--region {region!r} must be a region name like us-east-1, or any")
    try:
        return resolve(bucket, cloud, region and region.strip(), look_up_region=look_up_region,
                       check_credentials=check_credentials)
    except LocalityError as e:
        raise ConfigError(str(e)) from None


def bucket_uri(uri: str, flag: str = "--bucket", cloud_only: bool = True) -> BucketURI:
    """A parsed bucket URI; a cloud run refuses a local directory."""
    try:
        parsed = parse_bucket_uri(uri)
    except ConfigError as e:  # InvalidBucketURI
        raise ConfigError(f"{flag}: {e}") from None
    if cloud_only and parsed.scheme == "file":
        raise ConfigError(
            f"{flag} {uri!r} is a local directory; a cloud run needs s3://BUCKET[/prefix] or "
            "gs://BUCKET[/prefix] (local directories work with --local)"
        )
    return parsed


def run_id(value: Optional[str], flag: Optional[str] = "--run-id") -> Optional[str]:
    return None if value is None else check_run_id(value, flag)


def job_name(name: Optional[str]) -> Optional[str]:
    from vicuna_cloud.skypilot.task import check_name

    return None if name is None else check_name(name)


def positive_cost(max_cost: Optional[float]) -> Optional[float]:
    if max_cost is not None and max_cost <= 0:
        raise ConfigError(f"--max-cost must be a positive number of US dollars (got {max_cost})")
    return max_cost


def reject(flags: list[str], backend: str, fix: str) -> None:
    """Options that make no sense for the chosen backend: an error naming each one."""
    if flags:
        raise ConfigError(f"{', '.join(flags)} {'has' if len(flags) == 1 else 'have'} no "
                          f"effect {backend}; {fix}")
