"""Where this machine keeps things: the default local bucket, the run index, logs, exports.

Root: ``$VICUNA_CLOUD_HOME`` if set (tests set it), else platformdirs' user data dir. The
one place that reads that variable, so the run index and the local backend agree.
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


def run_index_dir() -> str:
    """One JSON file per run launched here (vicuna_cloud.run_index)."""
    return os.path.join(home(), "runs")


def run_dir(run_id: str) -> str:
    """Local-only files of a run (supervisor log, downloaded export)."""
    return os.path.join(home(), "local", run_id)
