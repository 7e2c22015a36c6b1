"""Issue 14 #4, #6, #10: exit codes and messages that say the truth.

- a bucket outage while reading run.json is transient (exit 69, recovered), not a
  config error (78, never retried);
- --bucket on a relaunch must match the bucket run.json names (the trainer follows
  run.json), or the command fails naming both;
- hints are printed shell-quoted, so pasting one never runs a $(...) from a name.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from vicuna_cloud.exit_codes import EXIT_CONFIG, EXIT_TRANSIENT
from vicuna_cloud.run_store import RunSpecConflict, write_run_spec
from vicuna_cloud.storage import open_bucket

from conftest import DUMMY_CONVERSATIONS
from helpers.cli import run_cli
from helpers.train import tiny_spec

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # the trainer in a child process (torch import and start-up: seconds)
def test_storage_outage_reading_the_spec_is_transient(tmp_path):
    """#4: load_spec turned a storage error into exit 78, so the job was never retried."""
    # A port bound but never listening refuses every connection for as long as we hold it
    # (a merely "free" port can be taken by another server meanwhile). Both endpoint
    # variables point at it: the session's moto fixture exports AWS_ENDPOINT_URL_S3, which
    # botocore prefers over AWS_ENDPOINT_URL.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as dead:
        dead.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{dead.getsockname()[1]}"
        env = dict(os.environ, AWS_ENDPOINT_URL=url, AWS_ENDPOINT_URL_S3=url,
                   AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                   AWS_DEFAULT_REGION="us-east-1", VICUNA_STORAGE_RETRY_ATTEMPTS="1",
                   VICUNA_STORAGE_RETRY_REQUEST_ATTEMPTS="1", VICUNA_STORAGE_RETRY_DEADLINE_S="2",
                   VICUNA_STORAGE_CONNECT_TIMEOUT_S="1")
        r = subprocess.run([sys.executable, "-m", "train", "s3://down-bucket/runs/r1/run.json"],
                           env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == EXIT_TRANSIENT, r.stderr[-2000:]
    assert "storage" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow  # the trainer in a child process (torch import and start-up: seconds)
def test_a_spec_wrong_on_its_face_is_still_a_config_error(tmp_path):
    bucket = open_bucket(str(tmp_path / "b"))
    bucket.put_bytes("runs/r1/run.json", b'{"run_id": 5}')
    r = subprocess.run([sys.executable, "-m", "train", bucket.child_uri("runs/r1/run.json")],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == EXIT_CONFIG and "invalid" in r.stderr


def test_relaunch_with_another_bucket_names_both(tmp_path):
    """#6: run.json's bucket silently won over --bucket."""
    spec, _ = tiny_spec(tmp_path, run_id="r1", limit=4)
    other = open_bucket(str(tmp_path / "copy"))
    other.put_bytes("runs/r1/run.json", spec.to_json().encode())  # the run, copied over
    moved = spec.model_copy(update={"bucket_uri": other.uri})
    with pytest.raises(RunSpecConflict) as e:
        write_run_spec(other, moved)
    assert spec.bucket_uri in str(e.value) and other.uri in str(e.value)


def test_local_relaunch_with_another_bucket_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    spec, _ = tiny_spec(tmp_path, run_id="r1", limit=4)
    other = tmp_path / "copy"
    open_bucket(str(other)).put_bytes("runs/r1/run.json", spec.to_json().encode())
    r = run_cli(capsys, monkeypatch, "launch", "tiny", "--local", "--bucket", str(other),
                "--run-id", "r1")
    assert r.code == 2 and "Traceback" not in r.err
    assert str(other) in r.err and spec.bucket_uri in r.err.replace("\n", "")


def test_hints_are_shell_quoted(tmp_path, capsys, monkeypatch):
    """#10: 'next: vicuna-cloud launch ... --data URI' put the URI in unquoted."""
    raw = tmp_path / "raw.json"
    raw.write_text(json.dumps(json.loads(DUMMY_CONVERSATIONS.read_text())[:40]))
    out = tmp_path / "ds $(touch pwned)"
    r = run_cli(capsys, monkeypatch, "data", "prepare", str(raw), "--out", str(out))
    assert r.code == 0, r.err
    assert f"data upload {shlex.quote(str(out))} " in r.out
    target = tmp_path / "bucket `id`"
    r = run_cli(capsys, monkeypatch, "data", "upload", str(out), str(target))
    assert r.code == 0, r.err
    line = next(ln for ln in r.out.splitlines() if ln.startswith("next:"))
    args = shlex.split(line[len("next:"):])
    assert args[:4] == ["vicuna-cloud", "launch", "7b", "--data"]
    assert args[4].startswith(str(target)) and len(args) == 5


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_a_full_disk_is_a_one_line_error_that_says_what_to_change(monkeypatch, capsys):
    """The disk is the outer edge here: the trainer's run is replaced by a write to
    /dev/full, which fails as a full disk does (ENOSPC), so main's handling is what runs.
    A retry would fill the same disk again: exit 1 (not 69), and the advice names the fix."""
    import train.__main__ as entry
    import train.trainer

    def run(uri, options):
        with open("/dev/full", "wb") as f:
            f.write(b"x" * 1024)
            f.flush()

    monkeypatch.setattr(train.trainer, "run", run)
    assert entry.main(["--run-uri", "/nonexistent/run.json"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "no space left on the device" in err[0] and "checkpoint.keep=1" in err[0], err
    assert entry.disk_full(OSError(5, "I/O error")) is None
