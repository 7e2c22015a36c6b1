"""The Bucket contract on a local directory, S3 (moto server) and GCS (fake-gcs-server),
URI errors, access errors, and retries through a fault-injecting proxy."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vicuna_cloud.storage import (
    AlreadyExistsError, BucketAccessError, NotFoundError, ObjectInfo, StorageError, open_bucket, parse_bucket_uri,
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
        return GCSBucket(parsed, chunk_size=1 * MiB)
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



def test_create_only_writes(bucket_uri):
    b = open_bucket(bucket_uri)
    b.put_bytes("ledger/seg-1.json", b"first", if_absent=True)
    with pytest.raises(AlreadyExistsError, match="seg-1.json already exists"):
        b.put_bytes("ledger/seg-1.json", b"second", if_absent=True)
    b.put_bytes("ledger/seg-1.json", b"first", if_absent=True)  # same bytes: a retry, fine
    assert b.get_bytes("ledger/seg-1.json") == b"first"
    b.put_bytes("ledger/seg-1.json", b"second")  # a plain write still overwrites
    assert b.get_bytes("ledger/seg-1.json") == b"second"
    assert [o.key for o in b.list()] == ["ledger/seg-1.json"]  # no temp files


@pytest.mark.parametrize("bucket_uri", ["s3", "gcs"], indirect=True)
def test_list_follows_pagination(bucket_uri):
    parsed = parse_bucket_uri(bucket_uri)
    b = S3Bucket(parsed, page_size=7) if parsed.scheme == "s3" else GCSBucket(parsed, page_size=7)
    keys = [f"many/{i:03d}" for i in range(23)]
    for k in keys:
        b.put_bytes(k, k.encode())
    b.put_bytes("other/x", b"x")
    assert [o.key for o in b.list("many/")] == keys
    assert len(b.list()) == 24
    assert b.delete_prefix("many/") == 23 and [o.key for o in b.list()] == ["other/x"]


def test_local_list_walks_only_the_prefix_directory(local_bucket_uri):
    b = open_bucket(local_bucket_uri)
    for key in ("runs/r1/ledger/a.json", "runs/r1/ledger-old/b.json", "runs/r10/x.json",
                "datasets/d/train.jsonl"):
        b.put_bytes(key, b"{}")
    assert [o.key for o in b.list("runs/r1/ledger/")] == ["runs/r1/ledger/a.json"]
    assert [o.key for o in b.list("runs/r1/ledger")] == ["runs/r1/ledger-old/b.json",
                                                          "runs/r1/ledger/a.json"]
    assert [o.key for o in b.list("runs/r1")] == ["runs/r1/ledger-old/b.json",
                                                   "runs/r1/ledger/a.json", "runs/r10/x.json"]
    assert b.list("runs/none/") == [] and b.list("../") == [] and b.list("runs/../../") == []


def test_keys_with_unusual_characters(bucket_uri, tmp_path):
    """Spaces, '+', '%', '=', '&', '~', non-ASCII: URL-encoding bugs show up here."""
    b = open_bucket(bucket_uri)
    keys = sorted(["a b/c d.json", "plus+sign", "pct%41", "q=1&r=2", "tilde~x", "ünïcødé/文件.txt"])
    for k in keys:
        b.put_bytes(k, k.encode())
    assert [o.key for o in b.list()] == keys
    for k in keys:
        assert b.get_bytes(k) == k.encode() and b.stat(k).size == len(k.encode())
    b.get_file("plus+sign", str(tmp_path / "p"))
    assert (tmp_path / "p").read_bytes() == b"plus+sign"
    b.delete("plus+sign")
    assert not b.exists("plus+sign") and b.exists("pct%41")


def test_cleanup_of_killed_uploads(s3_bucket_uri, s3_server, local_bucket_uri, gcs_bucket_uri):
    """What a SIGKILL mid-upload leaves: an S3 multipart upload (billed until aborted),
    a local temp file. Fresh ones are spared (another node may be uploading)."""
    s3 = open_bucket(s3_bucket_uri)
    parsed = parse_bucket_uri(s3_bucket_uri)
    raw = s3_server.client()
    raw.create_multipart_upload(Bucket=parsed.bucket, Key=f"{parsed.prefix}/ckpt/shard.bin")
    raw.create_multipart_upload(Bucket=parsed.bucket, Key="elsewhere/other.bin")  # not ours
    # (moto reports every upload as initiated in 2010, so the age cut is tested locally only)
    assert s3.cleanup_incomplete_uploads(older_than_s=0) == 1
    left = raw.list_multipart_uploads(Bucket=parsed.bucket).get("Uploads", [])
    assert [u["Key"] for u in left] == ["elsewhere/other.bin"]

    local = open_bucket(local_bucket_uri)
    local.put_bytes("ckpt/a", b"a")
    leftover = os.path.join(local_bucket_uri, "ckpt", ".tmp-killed")
    with open(leftover, "wb") as f:
        f.write(b"partial")
    assert local.cleanup_incomplete_uploads() == 0
    assert local.cleanup_incomplete_uploads(older_than_s=0) == 1
    assert not os.path.exists(leftover) and local.get_bytes("ckpt/a") == b"a"
    assert open_bucket(gcs_bucket_uri).cleanup_incomplete_uploads(older_than_s=0) == 0

# --- URIs --------------------------------------------------------------------------------
@pytest.mark.parametrize("uri, message", [
    ("", "empty bucket URI"),
    ("s3://", "malformed bucket URI"),
    ("s3://Upper_Case/x", "malformed bucket URI"),
    ("gs://ab/x", "malformed bucket URI"),
    ("s3://good-bucket/a//b", "empty or relative path segment"),
    ("gs://good-bucket/a/../b", "empty or relative path segment"),
    ("azure://container/x", "unsupported bucket URI scheme 'azure'"),
    ("http://example.com/x", "unsupported bucket URI scheme 'http'"),
])
def test_bad_uris_say_what_is_wrong(uri, message):
    with pytest.raises(InvalidBucketURI, match=message) as err:
        open_bucket(uri)
    assert "\n" not in str(err.value)


def test_uri_parsing_and_keys(tmp_path):
    assert str(parse_bucket_uri("s3://my-bucket/a/b/")) == "s3://my-bucket/a/b"
    assert parse_bucket_uri("gs://my-bucket").prefix == ""
    assert parse_bucket_uri(f"file://{tmp_path}").bucket == str(tmp_path)
    b = open_bucket("s3://my-bucket/runs")
    assert isinstance(b, S3Bucket) and b.child_uri("r1/run.json") == "s3://my-bucket/runs/r1/run.json"
    assert isinstance(open_bucket("gs://my-bucket"), GCSBucket)
    local = open_bucket(str(tmp_path))
    with pytest.raises(ValueError, match="escapes"):
        local.put_bytes("../outside", b"x")



_SEGMENT = st.from_regex(r"[A-Za-z0-9_.\-]{1,8}", fullmatch=True).filter(lambda x: x not in (".", ".."))


@settings(max_examples=150, deadline=None)
@given(scheme=st.sampled_from(["s3", "gs"]),
       bucket=st.from_regex(r"[a-z0-9][a-z0-9\-]{1,20}[a-z0-9]", fullmatch=True),
       parts=st.lists(_SEGMENT, max_size=4), key=st.lists(_SEGMENT, min_size=1, max_size=3))
def test_uri_round_trip_property(scheme, bucket, parts, key):
    uri = f"{scheme}://{bucket}" + "".join(f"/{p}" for p in parts)
    parsed = parse_bucket_uri(uri)
    assert str(parsed) == uri and parse_bucket_uri(str(parsed)) == parsed
    child = parsed.child("/".join(key))
    assert str(child) == uri + "/" + "/".join(key)
    assert child.bucket == bucket and child.scheme == scheme


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=40) | st.builds(lambda s, t: s + t, st.sampled_from(["s3://", "gs://", "x://"]),
                                              st.text(max_size=30)))
def test_any_text_parses_or_says_why(text):
    try:
        parsed = parse_bucket_uri(text)
    except InvalidBucketURI as e:
        assert str(e) and "\n" not in str(e)
    else:
        assert parsed.scheme in ("s3", "gs", "file")

# --- access errors -------------------------------------------------------------------------
@pytest.mark.parametrize("server,bucket,fix", [
    ("s3_server", "s3://no-such-bucket-vc", r"`aws s3 mb s3://no-such-bucket-vc`"),
    ("gcs_server", "gs://no-such-bucket-vc", r"`gcloud storage buckets create"),
])
def test_missing_bucket(request, server, bucket, fix):
    request.getfixturevalue(server)
    b = open_bucket(f"{bucket}/x")
    for call in (b.check_access, lambda: b.get_bytes("k"), lambda: b.stat("k"),
                 lambda: b.put_bytes("k", b"v"), b.list):
        with pytest.raises(BucketAccessError, match=rf"bucket {bucket} does not exist: "
                                                    rf"create it with {fix}"):
            call()


def test_local_bucket_not_writable(tmp_path):
    """A bucket directory that cannot be created (a file is in the way; works as root too)."""
    (tmp_path / "afile").write_text("x")
    with pytest.raises(BucketAccessError, match="cannot write to .*afile/bucket: .*; choose a writable"):
        open_bucket(str(tmp_path / "afile" / "bucket")).check_access()


_NO_CREDENTIALS_SCRIPT = r"""
from vicuna_cloud.storage import open_bucket, BucketAccessError
for uri in ("s3://some-bucket/x", "gs://some-bucket/x"):
    try:
        open_bucket(uri).get_bytes("k")
    except BucketAccessError as e:
        print("ERR", e)
"""


def test_no_credentials_message(tmp_path):
    """A process with no cloud credentials at all (fresh environment, no config files,
    metadata servers switched off through the SDKs' own switches) gets fix-it messages."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "GOOGLE_", "CLOUDSDK_", "STORAGE_EMULATOR"))}
    env.update({
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true", "NO_GCE_CHECK": "true",
        "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"), "HOME": str(tmp_path),
    })
    out = subprocess.run([sys.executable, "-c", _NO_CREDENTIALS_SCRIPT], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines == [
        "ERR no AWS credentials found: run `aws configure`, set AWS_PROFILE, or set "
        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        "ERR no Google Cloud credentials found: run `gcloud auth application-default login` "
        "or set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file",
    ]
    assert "Traceback" not in out.stderr


@pytest.mark.servers  # starts its own moto server; its keys come from the session's S3 set-up
def test_bad_s3_credentials_against_moto_with_auth(tmp_path):
    """moto checks signatures and keys when INITIAL_NO_AUTH_ACTION_COUNT=0 (a process-wide
    setting, so this test runs its own moto server)."""
    from helpers.cloud_servers import FAKE_AWS_ENV, free_port

    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    server = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"),
                               "-H", "127.0.0.1", "-p", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import socket
        import time

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        assert FAKE_AWS_ENV["AWS_ACCESS_KEY_ID"] == "testing"
        b = S3Bucket(parse_bucket_uri("s3://auth-bucket/x"), endpoint_url=f"http://127.0.0.1:{port}")
        with pytest.raises(BucketAccessError, match=r"AWS rejected the credentials \(InvalidAccessKeyId\) "
                                                    r"for s3://auth-bucket: check them with `aws sts"):
            b.check_access()
    finally:
        server.terminate()
        server.wait(timeout=10)


# --- retries ---------------------------------------------------------------------------------
def test_transient_classification():
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError
    from google.api_core import exceptions as ge

    def s3err(code, status):
        return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")

    assert is_transient(s3err("SlowDown", 503)) and is_transient(s3err("InternalError", 500))
    assert is_transient(EndpointConnectionError(endpoint_url="http://x"))
    assert is_transient(ConnectionResetError()) and is_transient(ge.ServiceUnavailable("x"))
    assert is_transient(ge.TooManyRequests("x")) and is_transient(ge.InternalServerError("x"))
    assert not is_transient(s3err("AccessDenied", 403)) and not is_transient(s3err("NoSuchBucket", 404))
    assert not is_transient(s3err("InvalidAccessKeyId", 403)) and not is_transient(NoCredentialsError())
    assert not is_transient(ge.Forbidden("x")) and not is_transient(ge.NotFound("x"))
    assert not is_transient(ValueError("bad key"))


def test_retry_policy_from_env(monkeypatch):
    monkeypatch.setenv("VICUNA_STORAGE_RETRY_ATTEMPTS", "3")
    assert RetryPolicy.from_env().attempts == 3
    monkeypatch.setenv("VICUNA_STORAGE_RETRY_ATTEMPTS", "three")
    with pytest.raises(StorageError, match="VICUNA_STORAGE_RETRY_ATTEMPTS='three' is not a number"):
        RetryPolicy.from_env()


@pytest.mark.parametrize("backend", ["s3", "gcs"])
def test_hundreds_of_calls_through_ten_percent_faults(backend, faulty_s3_bucket_uri,
                                                      faulty_gcs_bucket_uri, tmp_path):
    make = faulty_s3_bucket_uri if backend == "s3" else faulty_gcs_bucket_uri
    uri, proxy = make(rate=0.1, seed=7)
    b = open_bucket(uri)
    rng = random.Random(3)
    before = retry_stats()["retries"]
    expected: dict[str, bytes] = {}
    for i in range(120):
        key = f"obj/{i:04d}"
        data = rng.randbytes(rng.randrange(1, 20_000))
        b.put_bytes(key, data)
        expected[key] = data
        assert b.get_bytes(key) == data
        if i % 10 == 0:
            assert {o.key: o.size for o in b.list("obj/")} == {k: len(v) for k, v in expected.items()}
    src = tmp_path / "f.bin"
    src.write_bytes(rng.randbytes(300_000))
    for i in range(10):
        b.put_file(f"files/{i}", str(src))
        b.get_file(f"files/{i}", str(tmp_path / "back.bin"))
        assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()
    assert proxy.stats["requests"] >= 120 * 2 + 12 + 10 * 2
    assert proxy.faults > 20, proxy.stats  # faults really happened...
    if backend == "s3":  # short reads are caught by our layer (GCS's library retries them itself)
        assert retry_stats()["retries"] > before
    assert sorted(os.listdir(tmp_path)) == ["back.bin", "f.bin"]


@pytest.mark.parametrize("backend", ["s3", "gcs"])
def test_permanent_403_is_not_retried(backend, faulty_s3_bucket_uri, faulty_gcs_bucket_uri, tmp_path):
    make = faulty_s3_bucket_uri if backend == "s3" else faulty_gcs_bucket_uri
    seen: list[tuple[str, str]] = []
    uri, proxy = make(forbid=True, match=lambda method, path: seen.append((method, path)) or True)
    b = open_bucket(uri)
    scheme = "s3" if backend == "s3" else "gs"
    src = tmp_path / "f.bin"
    src.write_bytes(b"data")
    for call in (lambda: b.get_bytes("k"), lambda: b.put_bytes("k", b"v"), b.list,
                 lambda: b.put_file("k", str(src)), lambda: b.get_file("k", str(tmp_path / "out"))):
        del seen[:]
        with pytest.raises(BucketAccessError, match=rf"access denied to {scheme}://vc-\w+ \(\w+ "):
            call()
        # No request is ever repeated: no retry at any layer. (GCS downloads first read the
        # bucket's metadata, a different request, hence up to two.)
        assert 1 <= len(seen) <= 2 and len(set(seen)) == len(seen), seen


def test_failed_multipart_upload_leaves_previous_object(faulty_s3_bucket_uri, s3_server, tmp_path):
    """Part 2 of every upload fails: the upload gives up, the old object stays whole, and
    no multipart upload is left behind (aborted, so no storage is billed for parts)."""
    uri, proxy = faulty_s3_bucket_uri(rate=1.0, kinds=("500",),
                                      match=lambda method, path: method == "PUT" and "partNumber=2" in path)
    parsed = parse_bucket_uri(uri)
    policy = RetryPolicy(attempts=2, base_s=0.01, max_backoff_s=0.02, request_attempts=2)
    b = S3Bucket(parsed, policy=policy, multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    b.put_bytes("shard.bin", b"old")
    src = tmp_path / "new.bin"
    src.write_bytes(b"n" * (11 * MiB))
    with pytest.raises(StorageError, match="upload .* gave up after 2 attempts"):
        b.put_file("shard.bin", str(src))
    assert proxy.stats["fault:500"] == 4  # 2 attempts x 2 requests of part 2
    assert b.get_bytes("shard.bin") == b"old"
    assert s3_server.client().list_multipart_uploads(Bucket=parsed.bucket).get("Uploads", []) == []


@pytest.mark.parametrize("backend", ["s3", "gcs"])
def test_failed_download_leaves_destination_alone(backend, faulty_s3_bucket_uri, faulty_gcs_bucket_uri,
                                                  tmp_path):
    """Every object read is cut short: get_file gives up, the existing destination file is
    untouched and no temp file is left."""
    make = faulty_s3_bucket_uri if backend == "s3" else faulty_gcs_bucket_uri
    uri, proxy = make(rate=1.0, kinds=("truncate",),
                      match=lambda method, path: method == "GET" and ("/o/" in path or "/vicuna/" in path))
    policy = RetryPolicy(attempts=2, base_s=0.01, max_backoff_s=0.02, request_attempts=2)
    parsed = parse_bucket_uri(uri)
    b = S3Bucket(parsed, policy=policy) if backend == "s3" else GCSBucket(parsed, policy=policy)
    b.put_bytes("obj.bin", b"x" * 100_000)
    dest = tmp_path / "obj.bin"
    dest.write_bytes(b"previous")
    with pytest.raises(StorageError, match="gave up after 2 attempts"):
        b.get_file("obj.bin", str(dest))
    with pytest.raises(StorageError, match="gave up"):
        b.get_bytes("obj.bin")
    assert proxy.stats["fault:truncate"] >= 4
    assert dest.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["obj.bin"]


_CHILD_SCRIPT = r"""
import os, sys
from vicuna_cloud.storage import open_bucket
b = open_bucket(sys.argv[1])
for i in range(40):
    b.put_bytes(f"child/{i}", str(i).encode() * 100)
    assert b.get_bytes(f"child/{i}") == str(i).encode() * 100
print(len(b.list("child/")), os.environ["AWS_ENDPOINT_URL_S3"])
"""


def test_subprocess_reaches_faulty_proxy_through_env(faulty_s3_bucket_uri):
    """What a torchrun child inherits: AWS_ENDPOINT_URL_S3 pointing at the proxy is enough."""
    uri, proxy = faulty_s3_bucket_uri(rate=0.1, seed=1)
    out = subprocess.run([sys.executable, "-c", _CHILD_SCRIPT, uri], capture_output=True,
                         text=True, timeout=120, env=dict(os.environ))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["40", proxy.url]
    assert proxy.stats["requests"] >= 81 and proxy.faults > 0


@pytest.mark.parametrize("backend", ["s3", "gcs"])
def test_create_only_write_survives_lost_response(backend, faulty_s3_bucket_uri, faulty_gcs_bucket_uri):
    """The first PUT lands but its answer is lost (connection reset after the server
    wrote): the retry meets the object it made itself and must count as success."""
    make = faulty_s3_bucket_uri if backend == "s3" else faulty_gcs_bucket_uri
    writes: list[str] = []

    def first_write_only(method: str, path: str) -> bool:
        if method in ("PUT", "POST"):
            writes.append(path)
            return len(writes) == 1
        return False

    uri, proxy = make(rate=1.0, kinds=("reset-after",), match=first_write_only)
    b = open_bucket(uri)
    b.put_bytes("COMMIT.json", b'{"step": 10}', if_absent=True)
    assert proxy.stats["fault:reset-after"] == 1 and len(writes) >= 2
    assert b.get_bytes("COMMIT.json") == b'{"step": 10}'
    with pytest.raises(AlreadyExistsError):
        b.put_bytes("COMMIT.json", b'{"step": 11}', if_absent=True)


def test_failed_resumable_upload_leaves_previous_object(tmp_path, monkeypatch):
    """GCS: every chunk after the first of a resumable upload fails. The upload gives up
    and the object still holds its old bytes (a resumable object appears only when its
    last chunk is in). A server of its own, whose session links point at the proxy."""
    from helpers.cloud_servers import GCSServer, free_port
    from helpers.fault_proxy import FaultProxy

    port = free_port()
    server = GCSServer(external_url=f"http://127.0.0.1:{port}").start()
    chunks: list[str] = []

    def later_chunks(method: str, path: str) -> bool:
        if method == "PUT" and "upload_id" in path:
            chunks.append(path)
            return len(chunks) > 1
        return False

    proxy = FaultProxy(server.url, rate=1.0, kinds=("503",), match=later_chunks, port=port).start()
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "test")
        name = server.create_bucket()
        policy = RetryPolicy(attempts=2, base_s=0.01, max_backoff_s=0.02, request_attempts=2)
        b = GCSBucket(parse_bucket_uri(f"gs://{name}/x"), policy=policy, chunk_size=1 * MiB)
        b.put_bytes("shard.bin", b"old")
        src = tmp_path / "new.bin"
        src.write_bytes(b"n" * (9 * MiB))  # above the library's 8 MiB resumable threshold
        with pytest.raises(StorageError, match="upload .* gave up after 2 attempts"):
            b.put_file("shard.bin", str(src))
        assert proxy.stats["fault:503"] >= 2 and len(chunks) >= 4
        assert b.get_bytes("shard.bin") == b"old"
        assert b.list() == [ObjectInfo("shard.bin", 3)]
    finally:
        proxy.stop()
        server.stop()


def test_unreachable_endpoint_gives_up_quickly(monkeypatch):
    """Nothing listens on the endpoint: connection errors are transient, so they are
    retried, but within the bounds, then reported as one clear error."""
    import time

    from helpers.cloud_servers import FAKE_AWS_ENV, free_port

    for k, v in FAKE_AWS_ENV.items():
        monkeypatch.setenv(k, v)
    policy = RetryPolicy(attempts=3, base_s=0.01, max_backoff_s=0.02, request_attempts=2,
                         connect_timeout_s=1)
    b = S3Bucket(parse_bucket_uri("s3://some-bucket/x"), endpoint_url=f"http://127.0.0.1:{free_port()}",
                 policy=policy)
    before = retry_stats()
    t0 = time.monotonic()
    with pytest.raises(StorageError, match=r"get s3://some-bucket/x/k gave up after 3 attempts .*"
                                           r"EndpointConnectionError.*retry later"):
        b.get_bytes("k")
    assert time.monotonic() - t0 < 10
    after = retry_stats()
    # (>=: the counters are process-wide; a stray background thread of another test may add)
    assert after["retries"] - before["retries"] >= 2 and after["gave_up"] - before["gave_up"] >= 1


@pytest.mark.parametrize("backend", ["s3", "gcs"])
def test_corrupted_downloads_are_caught_and_fetched_again(backend, faulty_s3_bucket_uri,
                                                           faulty_gcs_bucket_uri, tmp_path):
    """A third of object reads arrive with a flipped byte: the SDK's checksum (S3 CRC,
    GCS CRC32C) catches each one, and the read is retried until the bytes are right."""
    make = faulty_s3_bucket_uri if backend == "s3" else faulty_gcs_bucket_uri
    object_get = (lambda m, p: m == "GET" and "/vicuna/" in p) if backend == "s3" else \
        (lambda m, p: m == "GET" and "/download/" in p)
    uri, proxy = make(rate=0.3, seed=5, kinds=("corrupt",), match=object_get)
    b = open_bucket(uri)
    rng = random.Random(0)
    for i in range(20):
        data = rng.randbytes(50_000)
        b.put_bytes(f"o/{i}", data)
        assert b.get_bytes(f"o/{i}") == data
        b.get_file(f"o/{i}", str(tmp_path / "o.bin"))
        assert (tmp_path / "o.bin").read_bytes() == data
    assert proxy.stats["fault:corrupt"] >= 5
