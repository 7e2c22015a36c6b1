"""`launch --local` input checks and the launcher's own pieces (no torchrun here)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from vicuna_cloud.ledger import LedgerRecorder, read_ledger
from vicuna_cloud.local.launch import close_cancelled_segment, torchrun_command
from vicuna_cloud.recipes import get_preset
from vicuna_cloud.run_store import spec_from_preset, write_run_spec
from vicuna_cloud.storage import open_bucket


def cli(*args, home, capsys, monkeypatch) -> subprocess.CompletedProcess:
    """`vicuna-cloud ARGS` in this process (the CLI's own main: a child interpreter would
    cost a second per case and prove nothing more for input that never reaches a run)."""
    from helpers.cli import run_cli

    monkeypatch.setenv("VICUNA_CLOUD_HOME", str(home))
    r = run_cli(capsys, monkeypatch, *args)
    return subprocess.CompletedProcess(list(args), r.code, r.out, r.err)


@pytest.mark.parametrize("args, message", [
    (["7b", "--local"], "use the small or tiny preset"),
    (["tiny", "--local", "--version", "v9"], "unknown version 'v9'"),
    (["tiny", "--local", "--preemptions", "-1"], "--preemptions -1"),
    (["tiny", "--local", "--price-per-hour", "-2"], "--price-per-hour -2"),
    (["tiny", "--local", "--run-id", "Bad_Id"], "--run-id 'Bad_Id'"),
    # `$` in the pattern also matches before a final newline: the check must be fullmatch.
    (["tiny", "--local", "--run-id", "run-1\n"], "--run-id 'run-1\\n'"),
    (["tiny", "--local", "--bucket", "ftp://x/y"], "unsupported bucket URI scheme"),
    (["tiny", "--local", "--base-model", "/x"], "works with the small preset"),
    (["small", "--local", "--base-model", "/nonexistent"], "not a model directory"),
    (["small", "--local", "--version", "v1.5"], "uses the Vicuna v1.1 format"),
])
def test_bad_input_is_one_line_and_nothing_is_written(tmp_path, args, message, capsys,
                                                      monkeypatch):
    r = cli("launch", *args, home=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr and r.stderr.strip().count("\n") == 0
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "bucket" / "runs").exists()


def spec(bucket_uri, seed=7):
    return spec_from_preset(get_preset("tiny"), run_id="r1", dataset_uri=f"{bucket_uri}/d",
                            dataset_sha256=None, bucket_uri=bucket_uri, cloud="local", seed=seed)


def test_existing_run_with_other_settings_is_refused(tmp_path, capsys, monkeypatch):
    b = str(tmp_path / "b")
    write_run_spec(open_bucket(b), spec(b, seed=7))
    r = cli("launch", "tiny", "--local", "--bucket", b, "--run-id", "r1", "--seed", "8",
            home=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert r.returncode == 2 and "seed 7" in r.stderr and "choose a new --run-id" in r.stderr


def test_command_is_the_tasks_torchrun_line():
    cmd = torchrun_command("s3://b/p/runs/r/run.json")
    assert cmd[-9:] == ["--standalone", "--nnodes", "1", "--nproc_per_node", "2", "-m", "train",
                        "--run-uri", "s3://b/p/runs/r/run.json"]
    # torchrun's own parser accepts it and hands the URI to `train` untouched.
    from torch.distributed.run import get_args_parser

    i = cmd.index("--standalone")
    a = get_args_parser().parse_args(cmd[i:])
    assert a.module and a.training_script == "train"
    assert a.training_script_args == ["--run-uri", "s3://b/p/runs/r/run.json"]


def test_cancel_closes_the_open_segment_of_this_launch_only(local_bucket_uri):
    b = open_bucket(local_bucket_uri)
    s = spec(local_bucket_uri)
    old = LedgerRecorder(b, s, background=False, clock=lambda: 1000.0)
    old.begin(0, total_steps=10)  # an earlier launch's segment, killed: no end
    since = time.time()
    cur = LedgerRecorder(b, s, background=False)
    cur.begin(3, total_steps=10)
    cur.update(step=5, tokens=100, last_checkpoint_step=3)
    assert close_cancelled_segment(b, "r1", since) == cur.segment.segment_id
    segs = read_ledger(b, "r1").segments
    assert [x.end_reason for x in segs] == [None, "cancelled"]
    assert segs[1].end_time >= since and segs[1].first_step == 3
    # A completed segment is never relabelled.
    done = LedgerRecorder(b, s, background=False)
    done.begin(5, total_steps=10)
    done.end("completed", step=10, tokens=1, last_checkpoint_step=10)
    assert close_cancelled_segment(b, "r1", time.time() - 0.5) is None
    reasons = {x.segment_id: x.end_reason for x in read_ledger(b, "r1").segments}
    assert reasons[done.segment.segment_id] == "completed"
