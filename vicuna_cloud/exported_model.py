"""Finding an exported model (runs/<id>/final/) and bringing it to local disk."""

from __future__ import annotations

import os
from typing import Optional

from vicuna_cloud import bucket_keys
from vicuna_cloud import paths
from vicuna_cloud.storage import Bucket, NotFoundError
from vicuna_cloud.errors import RunNotFound

FINAL = bucket_keys.FINAL_DIR


class ExportNotFound(RunNotFound):
    pass


final_prefix = bucket_keys.final_prefix


def local_export_dir(bucket: Bucket, run_id: str, dest: Optional[str] = None) -> str:
    """A local directory holding the run's exported model.

    For a local bucket that is the bucket's own directory; for S3/GCS the files are
    downloaded (each atomically) into ``dest`` (default: the run's local dir), skipping
    files already there with the right size.
    """
    prefix = final_prefix(run_id)
    items = [i for i in bucket.list(prefix) if not i.key.endswith("/")]
    if not any(i.key.endswith("config.json") for i in items):
        raise ExportNotFound(
            f"{bucket.child_uri(prefix)} holds no exported model (no config.json): the run "
            "has not finished; check `vicuna-cloud cost RUN` or relaunch with the same --run-id"
        )
    if bucket.location.scheme == "file":
        return bucket.child_uri(prefix.rstrip("/"))
    dest = dest or os.path.join(paths.run_dir(run_id), FINAL)
    for info in items:
        rel = info.key[len(prefix):]
        target = os.path.join(dest, *rel.split("/"))
        if os.path.isfile(target) and os.path.getsize(target) == info.size:
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            bucket.get_file(info.key, target)
        except NotFoundError as e:  # deleted while we looked: the export is not whole
            raise ExportNotFound(f"{bucket.child_uri(info.key)} vanished during download") from e
    return dest
