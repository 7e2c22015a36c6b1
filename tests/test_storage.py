"""The Bucket contract on a local directory, S3 (moto server) and GCS (fake-gcs-server),
URI errors, access errors, and retries through a fault-injecting proxy."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys

import pytest

from vicuna_cloud.storage import (
    BucketAccessError, NotFoundError, ObjectInfo, StorageError, open_bucket, parse_bucket_uri,
)
from vicuna_cloud.storage.gcs import GCSBucket
from vicuna_cloud.storage.retry import RetryPolicy, is_transient, retry_stats
from vicuna_cloud.storage.s3 import S3Bucket
from vicuna_cloud.storage.uri import InvalidBucketURI

MiB = 1 << 20


def _small_parts(uri: str):
    """The same bucket with multipart/resumable thresholds small enough to exercise them."""
    parsed = parse_bucket_uri(uri)
    if parsed.scheme == "s3":  # S3 parts must be >= 5 MiB except the last
        return S3Bucket(parsed, multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    if parsed.scheme == "gs":
        return GCSBucket(parsed, chunk_size=1 * MiB, resumable_threshold=1 * MiB)
    return open_bucket(uri)


# --- the contract, on all three backends ------------------------------------------------
def test_bytes_roundtrip_list_stat_delete(bucket_uri):
    b = open_bucket(bucket_uri)
    b.put_bytes("runs/r1/run.json", b'{"a": 1}')
    b.put_bytes("runs/r1/checkpoints/step-00000010/COMMIT.json", b"{}")
    b.put_bytes("runs/r2/run.json", b"x" * 1000)
    b.put_bytes("datasets/abc/train.jsonl", b"")

    assert b.get_bytes("runs/r1/run.json") == b'{"a": 1}'
    assert b.get_bytes("datasets/abc/train.jsonl") == b""
    assert b.list("runs/") == [
        ObjectInfo("runs/r1/checkpoints/step-00000010/COMMIT.json", 2),
        ObjectInfo("runs/r1/run.json", 8),
        ObjectInfo("runs/r2/run.json", 1000),
    ]
    assert [o.key for o in b.list()] == [
        "datasets/abc/train.jsonl", "runs/r1/checkpoints/step-00000010/COMMIT.json",
        "runs/r1/run.json", "runs/r2/run.json",
    ]
    assert b.list("runs/r1/run") == [ObjectInfo("runs/r1/run.json", 8)]
    assert b.list("nothing/") == []
    assert b.stat("runs/r2/run.json") == ObjectInfo("runs/r2/run.json", 1000)
    assert b.exists("runs/r1/run.json") and not b.exists("runs/r1/missing")

    b.put_bytes("runs/r1/run.json", b"replaced")  # overwrite is whole
    assert b.get_bytes("runs/r1/run.json") == b"replaced"

    b.delete("runs/r2/run.json")
    b.delete("runs/r2/run.json")  # deleting a missing key is fine
    assert not b.exists("runs/r2/run.json")
    with pytest.raises(NotFoundError, match="does not exist"):
        b.get_bytes("runs/r2/run.json")
    with pytest.raises(NotFoundError):
        b.stat("runs/r2/run.json")

    assert b.delete_prefix("runs/r1/") == 2
    assert [o.key for o in b.list()] == ["datasets/abc/train.jsonl"]
    assert b.sha256("datasets/abc/train.jsonl") == hashlib.sha256(b"").hexdigest()


def test_large_file_roundtrip_with_progress(bucket_uri, tmp_path):
    """An 11 MiB file: three S3 parts, eleven GCS resumable chunks; progress adds up."""
    b = _small_parts(bucket_uri)
    data = random.Random(1).randbytes(11 * MiB + 123)
    src = tmp_path / "shard.bin"
    src.write_bytes(data)
    up: list[int] = []
    b.put_file("ckpt/shard.bin", str(src), progress=up.append)
    assert sum(up) >= len(data)
    assert b.stat("ckpt/shard.bin").size == len(data)

    down: list[int] = []
    dest = tmp_path / "out" / "shard.bin"
    b.get_file("ckpt/shard.bin", str(dest), progress=down.append)
    assert dest.read_bytes() == data
    assert sum(down) == len(data)
    assert os.listdir(dest.parent) == ["shard.bin"]  # no temp leftovers

    with pytest.raises(NotFoundError):
        b.get_file("ckpt/missing.bin", str(tmp_path / "out" / "missing.bin"))
    assert sorted(os.listdir(dest.parent)) == ["shard.bin"]


def test_check_access_ok(bucket_uri):
    b = open_bucket(bucket_uri)
    b.check_access()
    assert b.list() == []  # the probe object is gone
