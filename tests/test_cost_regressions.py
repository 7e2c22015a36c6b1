"""Issue 13's reproduced failures, one test each (numbers as in the issue)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from helpers.cost import FakeClock, make_spec
from vicuna_cloud import billing, nodeside
from vicuna_cloud.costs import report
from vicuna_cloud.ledger import LedgerRecorder, Segment, ledger_prefix, read_ledger
from vicuna_cloud.run_store import write_run_spec
from vicuna_cloud.runspec import Billing, Budget, DiskBill
from vicuna_cloud.skypilot.run_script import run_script, setup_script
from vicuna_cloud.storage import open_bucket

REPO = Path(__file__).resolve().parents[1]


def _failing_pricer(*args):
    raise RuntimeError("catalog unreachable")


def _cloud_spec(uri, *, cap=None, fallback=None, run_id="vicuna-reg", heartbeat=60.0, **bill):
    spec = make_spec(uri, run_id=run_id, cloud="aws", preset="7b", write=False)
    spec = spec.model_copy(update={
        "budget": Budget(max_cost_usd=cap, heartbeat_seconds=heartbeat),
        "billing": Billing(fallback_price_per_hour=fallback, fallback_price_source="test",
                           **bill)})
    write_run_spec(open_bucket(uri), spec)
    return spec


AWS_ENV = {"SKYPILOT_CLUSTER_INFO": json.dumps(
    {"cluster_name": "c1", "cloud": "AWS", "region": "us-east-1", "zone": "use1-az6"}),
    nodeside.IMDS_ENV: "http://127.0.0.1:9"}


# --- 1. the cap fails closed --------------------------------------------------------------
def test_1_unpriceable_node_is_capped_at_its_fallback_price(local_bucket_uri, tmp_path):
    """Was: cap $20, pricing failing, the run never stopped and cost then said $41.47."""
    spec = _cloud_spec(local_bucket_uri, cap=20.0, fallback=10.0)
    clock = FakeClock()
    env = dict(AWS_ENV, **{nodeside.STATE_ENV: str(tmp_path / "none.json")})
    rec = LedgerRecorder(open_bucket(local_bucket_uri), spec, clock=clock, env=env,
                         background=False, boot_time=clock(), pricer=_failing_pricer)
    rec.begin(first_step=0)
    assert rec.segment.price_per_hour is None and "unavailable" in rec.segment.price_source
    steps = 0
    while not rec.budget_exhausted():
        clock.advance(60)
        steps += 1
        rec.update(step=steps, tokens=steps, last_checkpoint_step=None)
        assert steps < 1000, "the cap never fired: it failed open"
    # $10/h fallback: the cap fires one heartbeat before $20 (2 h).
    assert 1.9 * 3600 <= clock() - rec.segment.vm_boot_time <= 2 * 3600
    rec.end("budget", step=steps, tokens=steps, last_checkpoint_step=steps)
    # An earlier unpriced segment counts at its fallback for the next VM, not as $0.
    rec2 = LedgerRecorder(open_bucket(local_bucket_uri), spec, clock=clock, env=env,
                          background=False, boot_time=clock(), pricer=_failing_pricer)
    rec2.begin(first_step=steps)
    assert rec2.spent_usd() == pytest.approx(rec.spent_usd(clock()), rel=1e-6)
    assert rec2.budget_exhausted()  # a recovery over budget stops before its first step


def test_1_no_price_and_no_fallback_stops_at_once(local_bucket_uri, tmp_path, monkeypatch):
    spec = _cloud_spec(local_bucket_uri, cap=20.0, fallback=None)
    from vicuna_cloud import pricing

    monkeypatch.setattr(pricing, "highest_price", _failing_pricer)  # no catalog at all
    env = dict(AWS_ENV, **{nodeside.STATE_ENV: str(tmp_path / "none.json")})
    rec = LedgerRecorder(open_bucket(local_bucket_uri), spec, clock=FakeClock(), env=env,
                         background=False, boot_time=FakeClock()(), pricer=_failing_pricer)
    rec.begin(first_step=0)
    assert rec.budget_exhausted() and "fail closed" in rec.segment.budget_note


# --- 2./3. disk and egress ---------------------------------------------------------------
def test_2_best_disk_on_aws_is_about_23_percent_of_the_cheapest_spot_node():
    per_h, src = billing.disk_price_per_hour("aws", "io2", 256, 20000)
    assert per_h == pytest.approx((256 * 0.125 + 20000 * 0.065) / 730)
    assert 1.8 < per_h < 1.9 and 0.22 < per_h / 8.0274 < 0.24
    assert "io2" in src and "aws.amazon.com/ebs/pricing" in src
    # An unknown disk type is charged the priciest one (fail closed), and says so.
    worst, src = billing.disk_price_per_hour("aws", None, 256)
    assert worst == pytest.approx(per_h) and "priced as io2" in src


def test_3_egress_routes_and_every_rate_row_has_source_and_date():
    assert billing.egress_route("aws", "us-east-1", "aws", "us-east-1")[1:] == (0.0, 0.0)
    assert billing.egress_route("aws", "eu-central-1", "aws", "us-east-1")[1:] == (0.02, 0.02)
    assert billing.egress_route("gcp", "us-central1", "aws", "us-east-1")[1:] == (0.12, 0.09)
    assert billing.egress_route("gcp", "asia-southeast1", "gcp", "us-central1")[1] == 0.08
    label, up, _ = billing.egress_route("aws", "us-west-2", "aws", None)
    assert up == 0.02 and "unknown" in label  # fail closed: another region
    for r in billing.RATES.values():
        assert r.source.startswith("https://") and len(r.date) == 10, r


# --- 5. VMs that die before the trainer ---------------------------------------------------
def test_5_setup_opens_the_segment_and_missing_vm_time_is_a_priced_placeholder(
        local_bucket_uri, tmp_path):
    spec = _cloud_spec(local_bucket_uri, fallback=12.0, launch_cloud="aws",
                       disks={"aws": DiskBill(disk_type="io2", iops=20000,
                                              price_per_hour=1.8, source="x")})
    bucket = open_bucket(local_bucket_uri)
    run_dir = os.path.join(bucket.location.bucket, "runs", spec.run_id)
    clock = FakeClock()
    up = tmp_path / "uptime"
    up.write_text("30.0 0.0\n")
    env = dict(AWS_ENV, VICUNA_RUN_DIR=run_dir)
    seg, stop, _ = nodeside.open_segment(env, clock=clock, uptime_path=str(up))
    assert not stop and seg["vm_boot_time"] == pytest.approx(clock() - 30)
    (s,) = read_ledger(bucket, spec.run_id).segments
    assert s.opened_by == "setup" and s.disk_price_per_hour == 1.8 and s.attempt == 0
    # SkyPilot saw 1.0 h of job and 2 recoveries; the ledger has one 30 s segment.
    sky = {"reachable": True, "recovery_count": 2, "job_duration_hours": 1.0}
    rc = report.run_cost(bucket, spec.run_id, now=clock() + 7200, skypilot=sky)
    ph = next(ln for ln in rc.lines if ln.line == "unledgered VM time")
    ledger_h = rc.segments[0].billed_hours
    assert ph.usd == pytest.approx((1.0 - ledger_h) * (12.0 + 1.8), rel=1e-3)
    assert "placeholder" in ph.source and "job duration" in ph.source
    assert rc.spend_usd == pytest.approx(sum(ln.usd for ln in rc.lines), abs=1e-3)


# --- 6. AWS zone id from the instance metadata ---------------------------------------------
class _IMDS(BaseHTTPRequestHandler):
    def do_PUT(self):
        assert self.path == "/latest/api/token"
        self._send(b"tok")

    def do_GET(self):
        ok = (self.path == "/latest/meta-data/placement/availability-zone-id"
              and self.headers.get("X-aws-ec2-metadata-token") == "tok")
        self._send(b"use1-az4" if ok else b"", 200 if ok else 401)

    def _send(self, body, code=200):
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def test_6_zone_id_comes_from_imdsv2_and_prices_the_exact_row(local_bucket_uri, tmp_path):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _IMDS)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        env = dict(AWS_ENV, **{nodeside.IMDS_ENV: f"http://127.0.0.1:{srv.server_port}",
                               nodeside.STATE_ENV: str(tmp_path / "none.json"),
                               "SKYPILOT_CLUSTER_INFO": json.dumps(
                                   {"cloud": "aws", "region": "us-east-1",
                                    "zone": "us-east-1b"})})  # a zone *name*
        assert nodeside.aws_zone_id(env) == "use1-az4"
        spec = _cloud_spec(local_bucket_uri)
        rec = LedgerRecorder(open_bucket(local_bucket_uri), spec, clock=FakeClock(), env=env,
                             background=False, boot_time=FakeClock()())
        rec.begin(first_step=0)
        assert rec.segment.zone_id == "use1-az4"
        assert rec.segment.price_per_hour == pytest.approx(9.9734)  # the use1-az4 row
    finally:
        srv.shutdown()


# --- 7. the stop itself fits under the cap; a stopped run starts nothing ------------------
def test_7_lookahead_keeps_room_for_the_final_save_upload_and_export(local_bucket_uri):
    spec = make_spec(local_bucket_uri, price=3600.0, max_cost=100.0, heartbeat=10.0)  # $1/s
    clock = FakeClock()
    rec = LedgerRecorder(open_bucket(local_bucket_uri), spec, clock=clock, background=False)
    rec.begin(first_step=0)
    clock.advance(60)
    assert not rec.budget_exhausted()          # 60 + 10 < 100
    # final save + upload 12 s, the export 1/6 of it plus EXPORT_MIN_S (10 s)
    rec.set_stop_reserve(12.0)
    assert not rec.budget_exhausted()          # 60 + 10 + 12 x 7/6 + 10 = 94 < 100
    rec.set_stop_reserve(30.0)
    assert rec.budget_exhausted()              # 60 + 10 + 30 x 7/6 + 10 = 115 >= 100
    assert "save + upload + export" in rec.segment.budget_note
    # Steps longer than the heartbeat: the next check is a step away, so look that far.
    rec2 = LedgerRecorder(open_bucket(local_bucket_uri), spec, clock=clock, background=False)
    clock2 = clock
    rec2.begin(first_step=0)
    base = rec2.spent_usd()
    for i in (1, 2):
        clock2.advance(30.0)                   # 30 s steps, 10 s heartbeat
        rec2.update(step=i, tokens=i, last_checkpoint_step=None)
    assert rec2._step_s == 30.0 and rec2.spent_usd() > base


def _shell_env(tmp_path, run_dir, home):
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), "VICUNA_RUN_DIR": run_dir,
            "VICUNA_RUN_URI": "s3://x/runs/vicuna-reg/run.json", "VICUNA_NODE_BEAT": "0",
            nodeside.IMDS_ENV: "http://127.0.0.1:9",
            "SKYPILOT_CLUSTER_INFO": json.dumps({"cluster_name": "c9", "cloud": "aws",
                                                 "region": "us-east-1", "zone": "use1-az6"})}


def test_7_a_vm_that_starts_over_budget_installs_nothing_and_exits_0(local_bucket_uri,
                                                                      tmp_path):
    """The task's real setup and run text, with the image's system python3 (no venv)."""
    spec = _cloud_spec(local_bucket_uri, cap=20.0, fallback=10.0)
    bucket = open_bucket(local_bucket_uri)
    spent = Segment(segment_id="20250101T000000Z-aaaaaa", run_id=spec.run_id, cloud="aws",
                    accelerators="A100-80GB:8", nodes=1, use_spot=True, price_source="t",
                    price_per_hour=10.0, vm_boot_time=0.0, start_time=0.0,
                    last_heartbeat=7200.0, end_time=7200.0, end_reason="budget")
    bucket.put_bytes(f"{ledger_prefix(spec.run_id)}{spent.segment_id}.json",
                     spent.to_json().encode())  # $20 already spent
    run_dir = os.path.join(bucket.location.bucket, "runs", spec.run_id)
    home = tmp_path / "home"
    home.mkdir()
    env = _shell_env(tmp_path, run_dir, home)
    setup = subprocess.run(["bash", "-c", setup_script("0.1.0")], env=env, cwd=REPO,
                           capture_output=True, text=True, timeout=60)
    assert setup.returncode == 0, setup.stderr
    assert "budget" in setup.stdout and not (home / ".vicuna-cloud" / "venv").exists()
    segs = read_ledger(bucket, spec.run_id).segments
    assert len(segs) == 2 and segs[-1].end_reason == "budget" and segs[-1].opened_by == "setup"
    run = subprocess.run(["bash", "-c", run_script()], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "budget is spent" in run.stdout
    assert "torchrun" not in run.stderr  # it never got that far


@pytest.mark.slow  # the task's setup in a shell, with waits: seconds
def test_7_within_budget_setup_opens_and_the_trainer_adopts_and_stops_its_heartbeat(
        local_bucket_uri, tmp_path):
    spec = _cloud_spec(local_bucket_uri, cap=500.0, fallback=10.0)
    bucket = open_bucket(local_bucket_uri)
    run_dir = os.path.join(bucket.location.bucket, "runs", spec.run_id)
    env = _shell_env(tmp_path, run_dir, tmp_path)
    env.pop("VICUNA_NODE_BEAT")  # the real background heartbeat
    env[nodeside.STATE_ENV] = str(tmp_path / "state.json")
    p = subprocess.run(["/usr/bin/python3", "-m", "vicuna_cloud.nodeside", "open"], env=env,
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    st = json.loads((tmp_path / "state.json").read_text())
    beat_pid = st["beat_pid"]
    assert st["owner"] == "setup" and beat_pid and _alive(beat_pid)
    rec = LedgerRecorder(bucket, spec, env=env, background=False, boot_time=time.time())
    rec.begin(first_step=0)
    assert rec.segment.segment_id == st["segment_id"] and rec.segment.opened_by == "setup"
    assert not _alive(beat_pid)  # adopted: setup's heartbeat can no longer write
    rec.end("completed", step=0, tokens=0, last_checkpoint_step=None)
    (seg,) = read_ledger(bucket, spec.run_id).segments
    assert seg.end_reason == "completed"


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


# --- 10. AWS's first-hour rule ---------------------------------------------------------------
@pytest.mark.parametrize("cloud, reason, free", [
    ("aws", "preempted", True), ("aws", None, False), ("gcp", "preempted", False)])
def test_10_aws_spot_interrupted_in_its_first_hour_costs_no_node_time(cloud, reason, free):
    seg = {"cloud": cloud, "use_spot": True, "end_reason": reason, "vm_boot_time": 0.0,
           "end_time": 2400.0 if reason else None, "last_heartbeat": 2400.0, "nodes": 1,
           "price_per_hour": 9.0, "disk_price_per_hour": 1.8}
    lines = billing.segment_lines(seg)
    assert lines["node"] == (0.0 if free else pytest.approx(6.0))
    assert lines["disk"] == pytest.approx(1.2)  # the volume is billed regardless
    assert bool(lines["notes"]) == free
    # The cap never counts on the refund.
    assert billing.segment_total(seg, apply_first_hour=False) == pytest.approx(7.2)


# --- launch: billing in run.json, max_hourly_cost in the task -------------------------------
def test_launch_records_the_fallback_and_caps_the_hourly_price(tmp_path):
    import yaml
    from typer.testing import CliRunner

    from vicuna_cloud.cli import app
    from vicuna_cloud.runspec import RunSpec

    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["launch", "7b", "--spot", "--dry-run", "--max-cost", "140",
                                 "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    spec = RunSpec.from_json((out / "run.json").read_text())
    b = spec.billing
    task = yaml.safe_load((out / "task.yaml").read_text())
    assert task["resources"]["max_hourly_cost"] == b.max_hourly_cost
    assert b.launch_price_per_hour == pytest.approx(8.0274)
    assert b.launch_price_per_hour <= b.fallback_price_per_hour <= b.max_hourly_cost + 1e-6
    assert "highest catalog price" in b.fallback_price_source
    # disk_tier high (skypilot/task.py): gp3 at 7,000 IOPS by SkyPilot's own mapping.
    assert b.disks["aws"].disk_type == "gp3" and b.disks["aws"].iops == 7000
    assert set(b.disks) == {"aws"}  # the cloud follows the s3:// bucket (skypilot/locality)
    assert b.controller_price_per_hour == pytest.approx(0.384)  # m6i.2xlarge, on-demand
    # Without a cap: no max_hourly_cost, the fallback is the highest price anywhere.
    r = CliRunner().invoke(app, ["launch", "7b", "--spot", "--dry-run", "--out",
                                 str(tmp_path / "o2"), "--json"])
    assert r.exit_code == 0, r.output
    assert "max_hourly_cost" not in yaml.safe_load((tmp_path / "o2" / "task.yaml").read_text())[
        "resources"]
