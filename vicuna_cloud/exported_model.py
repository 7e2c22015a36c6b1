"""Finding an exported model (runs/<id>/final/) and bringing it to local disk."""

from __future__ import annotations

import os
from typing import Optional

from vicuna_cloud import bucket_keys
from vicuna_cloud import paths
from vicuna_cloud.records import ExportRecord, InvalidRecord, parse
from vicuna_cloud.storage import Bucket, NotFoundError
from vicuna_cloud.errors import RunNotFound

FINAL = bucket_keys.FINAL_DIR
EXPORT_MARKER = "EXPORT.json"  # train/export.py writes it last


class ExportNotFound(RunNotFound):
    pass


final_prefix = bucket_keys.final_prefix


def read_export_marker(bucket: Bucket, run_id: str) -> Optional[ExportRecord]:
    """final/EXPORT.json, validated; None if missing or invalid (= not exported)."""
    key = final_prefix(run_id) + EXPORT_MARKER
    try:
        return parse(ExportRecord, bucket.get_bytes(key), bucket.child_uri(key))
    except NotFoundError:
        return None
    except InvalidRecord:
        return None


def local_export_dir(bucket: Bucket, run_id: str, dest: Optional[str] = None) -> str:
    """A local directory holding the run's exported model.

    Only a final/ with a valid EXPORT.json (written last, after every file) counts; only
    the files it lists (plain names) are used, with the sizes it gives. For a local
    bucket that is the bucket's own directory; for S3/GCS the files are downloaded (each
    atomically) into ``dest`` (default: the run's local dir), skipping files already
    there with the right size.
    """
    prefix = final_prefix(run_id)
    marker = read_export_marker(bucket, run_id)
    if marker is None or "config.json" not in marker.files:
        raise ExportNotFound(
            f"{bucket.child_uri(prefix)} holds no finished export (no valid {EXPORT_MARKER}): "
            "the run has not finished; check `vicuna-cloud status RUN` or relaunch with the "
            "same --run-id")
    sizes = {i.key[len(prefix):]: i.size for i in bucket.list(prefix)}
    wrong = [n for n, size in marker.files.items() if sizes.get(n) != size]
    if wrong:
        raise ExportNotFound(f"{bucket.child_uri(prefix)}: {', '.join(sorted(wrong)[:5])} "
                             f"missing or not the size {EXPORT_MARKER} gives; relaunch the run "
                             "with the same --run-id to export again")
    if bucket.location.scheme == "file":
        return bucket.child_uri(prefix.rstrip("/"))
    dest = dest or os.path.join(paths.run_dir(run_id), FINAL)
    for rel, size in marker.files.items():
        target = os.path.join(dest, *rel.split("/"))
        if os.path.isfile(target) and os.path.getsize(target) == size:
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            bucket.get_file(prefix + rel, target)
        except NotFoundError as e:  # deleted while we looked: the export is not whole
            raise ExportNotFound(f"{bucket.child_uri(prefix + rel)} vanished during download") from e
    return dest
