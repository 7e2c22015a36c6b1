"""Helpers for the control-plane tests: run the real CLI entry point in-process."""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass

import pytest


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def run_cli(capsys, monkeypatch, *args: str) -> CliResult:
    """``vicuna-cloud ARGS`` through vicuna_cloud.cli.main (UserError -> exit 2 included)."""
    from vicuna_cloud.cli import main

    monkeypatch.setenv("COLUMNS", "400")  # rich must not wrap the one-line error
    monkeypatch.setattr(sys, "argv", ["vicuna-cloud", *args])
    capsys.readouterr()
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    cap = capsys.readouterr()
    return CliResult(code, cap.out, cap.err)


def upload_dataset(bucket_uri: str, n: int = 3) -> str:
    """A tiny train.jsonl + manifest.json under datasets/<sha256>/, as `data upload` lays out."""
    from vicuna_cloud.storage import open_bucket

    lines = [json.dumps({"id": str(i), "conversations": [
        {"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]})
        for i in range(n)]
    body = ("\n".join(lines) + "\n").encode()
    sha = hashlib.sha256(body).hexdigest()
    b = open_bucket(bucket_uri)
    b.put_bytes(f"datasets/{sha}/train.jsonl", body)
    manifest = {"output": {"sha256": sha, "bytes": len(body), "conversations": n}}
    b.put_bytes(f"datasets/{sha}/manifest.json", json.dumps(manifest).encode())
    return b.child_uri(f"datasets/{sha}"), sha


def keys(bucket_uri: str) -> list[str]:
    from vicuna_cloud.storage import open_bucket

    return [o.key for o in open_bucket(bucket_uri).list("")]


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
