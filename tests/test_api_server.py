"""status, logs and cancel against a real SkyPilot 0.14.1 API server (`sky api start` on
loopback, scratch HOME and SKY_RUNTIME_DIR). No cloud is needed for what is asserted: an
empty queue (the jobs controller is not up: ClusterNotUpError), unknown job ids and names.
Nothing here is patched; the submit call stays the one patched place (other tests)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.cloud_servers import free_port
from helpers.cli import run_cli

pytestmark = pytest.mark.slow

SKY = str(Path(sys.executable).parent / "sky")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def api_server(tmp_path_factory):
    """A real API server on a free loopback port; its env (port) for the client."""
    root = tmp_path_factory.mktemp("sky-api")
    port = free_port()
    env = {**os.environ, "HOME": str(root / "home"), "SKY_RUNTIME_DIR": str(root / "runtime"),
           "SKYPILOT_API_SERVER_LOCAL_PORT": str(port)}
    env.pop("SKYPILOT_API_SERVER_ENDPOINT", None)
    (root / "home").mkdir()
    proc = subprocess.run([SKY, "api", "start"], env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    try:
        yield {"port": port}
    finally:
        subprocess.run([SKY, "api", "stop"], env=env, capture_output=True, text=True,
                       timeout=120)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def client(api_server, monkeypatch, tmp_path):
    monkeypatch.delenv("SKYPILOT_API_SERVER_ENDPOINT", raising=False)
    monkeypatch.setenv("SKYPILOT_API_SERVER_LOCAL_PORT", str(api_server["port"]))
    monkeypatch.setenv("VICUNA_CLOUD_HOME", str(tmp_path / "vc-home"))
    return api_server


def _record(run_id: str, bucket: str, job_id):
    from vicuna_cloud import run_index as index

    index.record(index.RunRecord(run_id=run_id, bucket_uri=bucket, backend="skypilot",
                                 job_id=job_id, job_name=run_id))


def test_empty_queue_unknown_job_and_name_fallback(client, tmp_path, capsys, monkeypatch):
    from vicuna_cloud.skypilot import submit

    assert submit.queue() == {}  # "No in-progress managed jobs.": empty, not unreachable
    bucket = str(tmp_path / "bucket")
    _record("api-run-1", bucket, 424242)
    r = run_cli(capsys, monkeypatch, "status", "api-run-1", "--json")
    assert r.code == 0, r.err
    row = json.loads(r.out)  # one run: its detail view
    assert row["state"] == "not in SkyPilot's queue"  # the server answered: not "unknown"
    # logs --no-follow of an unknown job: a one-line error, not silence and exit 0.
    r = run_cli(capsys, monkeypatch, "logs", "api-run-1", "--no-follow")
    assert r.code == 2 and r.err.startswith("error: run 'api-run-1': SkyPilot's queue has no "
                                            "job 424242"), r.err
    assert len(r.err.strip().splitlines()) == 1
    # cancel of an unknown job: nothing is "cancelled".
    r = run_cli(capsys, monkeypatch, "cancel", "api-run-1")
    assert r.code == 2 and "no job 424242" in r.err and "cancel" not in r.out
    # A run launched from another machine: no job id here, its job name is its run id.
    r = run_cli(capsys, monkeypatch, "logs", "elsewhere-7", "--bucket", bucket)
    assert r.code == 2 and "SkyPilot's queue has no job named 'elsewhere-7'" in r.err, r.err
    r = run_cli(capsys, monkeypatch, "status", "elsewhere-7", "--bucket", bucket, "--json")
    assert json.loads(r.out)["state"] == "not in SkyPilot's queue"


def test_no_api_server_is_started_silently(monkeypatch, capsys, tmp_path):
    port = free_port()
    monkeypatch.delenv("SKYPILOT_API_SERVER_ENDPOINT", raising=False)
    monkeypatch.setenv("SKYPILOT_API_SERVER_LOCAL_PORT", str(port))
    monkeypatch.setenv("VICUNA_CLOUD_HOME", str(tmp_path / "vc-home"))
    _record("api-run-2", str(tmp_path / "bucket"), 5)
    r = run_cli(capsys, monkeypatch, "status", "api-run-2", "--json")
    assert r.code == 0, r.err
    err = json.loads(r.out)["api_error"]
    assert "sky api start" in err and str(port) in err
    for cmd in ("logs", "cancel"):
        r = run_cli(capsys, monkeypatch, cmd, "api-run-2")
        assert r.code == 2 and "sky api start" in r.err
    assert not _port_open(port), "vicuna-cloud started an API server"
