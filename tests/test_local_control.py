"""`vicuna-cloud logs RUN` / `cancel RUN` for a local run: they find the launcher by the pid
file it writes next to train.log. The launcher here is a real process that behaves as the
supervisor does on SIGTERM (log a checkpoint, exit); the supervisor's own SIGTERM handling
is tested in test_local_supervisor.py."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

from helpers.cli import run_cli
from vicuna_cloud import paths, run_index
from vicuna_cloud.local import control

LAUNCHER = textwrap.dedent("""
    import signal, sys, time
    from vicuna_cloud.local import control
    run_id = sys.argv[1]
    log = open(control.log_path(run_id), "a", buffering=1)
    def stop(*_):
        log.write("checkpoint saved at step 4 (cancel)\\n")
        control.clear_pid(run_id)
        sys.exit(130)
    signal.signal(signal.SIGTERM, stop)
    control.write_pid(run_id)
    for step in range(1, 1000):
        log.write(f"step {step}/1000 loss 1.0\\n")
        time.sleep(0.05)
""")


def _start(run_id: str, bucket: str) -> subprocess.Popen:
    os.makedirs(paths.run_dir(run_id), exist_ok=True)
    run_index.record(run_index.RunRecord(run_id=run_id, bucket_uri=bucket, backend="local"))
    # "vicuna" in the command line: what control.launcher_alive checks against pid reuse.
    p = subprocess.Popen([sys.executable, "-c", "# vicuna-cloud launcher\n" + LAUNCHER, run_id])
    deadline = time.time() + 30
    while control.launcher_alive(run_id) is None:
        assert time.time() < deadline and p.poll() is None, "launcher did not start"
        time.sleep(0.05)
    return p


def test_logs_follows_train_log_and_cancel_stops_the_launcher(local_bucket_uri, capsys,
                                                              monkeypatch):
    rid = "vicuna-local-ctl"
    p = _start(rid, local_bucket_uri)
    try:
        time.sleep(0.3)
        r = run_cli(capsys, monkeypatch, "logs", rid, "--no-follow")
        assert r.code == 0, r.err
        assert "step 1/1000 loss 1.0" in r.out
        r = run_cli(capsys, monkeypatch, "cancel", rid)
        assert r.code == 0, r.err
        assert f"cancelled local run {rid}" in r.out and str(p.pid) in r.out
        p.wait(10)  # exited (cancel waited for it; as its parent here, it reaped the status)
        # Following a stopped run prints everything, the checkpoint line last, and returns.
        r = run_cli(capsys, monkeypatch, "logs", rid)
        assert r.code == 0
        assert r.out.rstrip().splitlines()[-1] == "checkpoint saved at step 4 (cancel)"
        assert control.read_pid(rid) is None
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_cancel_of_a_local_run_not_running_says_so(local_bucket_uri, capsys, monkeypatch):
    rid = "vicuna-local-idle"
    run_index.record(run_index.RunRecord(run_id=rid, bucket_uri=local_bucket_uri,
                                         backend="local"))
    os.makedirs(paths.run_dir(rid), exist_ok=True)
    with open(control.pid_path(rid), "w") as f:
        f.write("999999999")  # a stale pid file from a crashed launcher
    r = run_cli(capsys, monkeypatch, "cancel", rid)
    assert r.code == 2 and "is not running on this machine" in r.err
    r = run_cli(capsys, monkeypatch, "logs", rid)
    assert r.code == 2 and "no log for local run" in r.err
