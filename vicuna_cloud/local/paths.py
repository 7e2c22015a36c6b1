"""Where local runs keep things: the default bucket, logs, downloaded models.

Root: ``$VICUNA_CLOUD_HOME`` if set (tests set it), else platformdirs' user data dir.
"""

from __future__ import annotations

import os

from platformdirs import user_data_dir


def home() -> str:
    return os.path.abspath(os.path.expanduser(
        os.environ.get("VICUNA_CLOUD_HOME") or user_data_dir("vicuna-cloud")))


def default_bucket_uri() -> str:
    """The local directory that stands in for a bucket when --bucket is not given."""
    return os.path.join(home(), "bucket")


def run_dir(run_id: str) -> str:
    """Local-only files of a run (supervisor log, downloaded export)."""
    return os.path.join(home(), "local", run_id)
