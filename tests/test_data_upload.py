"""Upload to a local dir, moto S3 and fake-gcs-server: layout, no-op, verification."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from conftest import DUMMY_CONVERSATIONS

from vicuna_cloud.data.pipeline import PrepareOptions, prepare
from vicuna_cloud.data.reader import DataError
from vicuna_cloud.data.upload import upload_dataset
from vicuna_cloud.storage import open_bucket


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds")
    prepare([str(DUMMY_CONVERSATIONS)], str(out), PrepareOptions(blocked_words=()))
    return str(out)


def test_upload_layout_then_noop(dataset, bucket_uri):
    m = json.load(open(os.path.join(dataset, "manifest.json")))
    sha = m["output"]["sha256"]
    seen = []
    res = upload_dataset(dataset, bucket_uri, progress=seen.append)
    assert res.uploaded and res.sha256 == sha
    assert res.uri == open_bucket(bucket_uri).child_uri(f"datasets/{sha}")
    assert sum(seen) >= res.bytes == m["output"]["bytes"]
    b = open_bucket(bucket_uri)
    assert [o.key for o in b.list("datasets/")] == [
        f"datasets/{sha}/manifest.json", f"datasets/{sha}/train.jsonl"]
    assert b.sha256(f"datasets/{sha}/train.jsonl") == sha
    assert json.loads(b.get_bytes(f"datasets/{sha}/manifest.json")) == m
    # Second upload: nothing transferred.
    before = b.get_bytes(f"datasets/{sha}/train.jsonl")
    again = upload_dataset(dataset, bucket_uri)
    assert not again.uploaded and again.uri == res.uri
    assert b.get_bytes(f"datasets/{sha}/train.jsonl") == before


@pytest.mark.parametrize("bucket_uri", ["local", "s3"], indirect=True)
def test_interrupted_upload_is_completed(dataset, bucket_uri):
    """A train.jsonl without its manifest (a crash mid-upload) is uploaded again."""
    sha = json.load(open(os.path.join(dataset, "manifest.json")))["output"]["sha256"]
    b = open_bucket(bucket_uri)
    b.put_bytes(f"datasets/{sha}/train.jsonl", b"partial")
    res = upload_dataset(dataset, bucket_uri)
    assert res.uploaded
    assert b.sha256(f"datasets/{sha}/train.jsonl") == sha
    assert b.exists(f"datasets/{sha}/manifest.json")


@pytest.mark.parametrize("bucket_uri", ["local"], indirect=True)
def test_corrupted_upload_is_detected_and_removed(dataset, bucket_uri, monkeypatch):
    """The read-back check: a backend that stores wrong bytes fails the upload."""
    from vicuna_cloud.storage.local import LocalBucket

    real = LocalBucket.put_file

    def flip_a_byte(self, key, path, progress=None):
        real(self, key, path, progress)
        data = bytearray(self.get_bytes(key))
        data[len(data) // 2] ^= 1
        self.put_bytes(key, bytes(data))

    monkeypatch.setattr(LocalBucket, "put_file", flip_a_byte)
    with pytest.raises(DataError, match="verification failed"):
        upload_dataset(dataset, bucket_uri)
    assert open_bucket(bucket_uri).list("datasets/") == []


def test_local_tampering_and_bad_targets(dataset, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    with open(copy / "train.jsonl", "ab") as f:
        f.write(b'{"id": "sneaky", "conversations": []}\n')
    with pytest.raises(DataError, match="changed after `data prepare`"):
        upload_dataset(str(copy), str(tmp_path / "bucket"))
    (copy / "manifest.json").unlink()
    with pytest.raises(DataError, match="no manifest"):
        upload_dataset(str(copy), str(tmp_path / "bucket"))
    with pytest.raises(DataError, match="unsupported bucket URI scheme"):
        upload_dataset(dataset, "ftp://host/x")
    with pytest.raises(DataError, match="not a directory"):
        upload_dataset(str(tmp_path / "missing"), str(tmp_path / "bucket"))
