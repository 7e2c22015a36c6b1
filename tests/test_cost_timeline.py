"""Issue 13's proof: a simulated cloud timeline through the real ledger writer and report.

A fake clock drives: launch (the controller starts), VM A on GCP booting and preempted
during setup (the task's setup opened its segment; no trainer ever ran), VM B on AWS in
the bucket's region set up by the same script, adopted by the trainer, preempted after a
checkpoint, VM C recovered in another region (restore download and checkpoint uploads
cross regions) which stops for the budget, and the controller's idle autostop.

Everything that writes the ledger is the real code: vicuna_cloud.nodeside.open_segment
and beat_once (what the task's setup runs) on the run prefix as the task mounts it (a
LocalBucket directory), LedgerRecorder (what the trainer runs) with the catalog pricer.
The bill the test expects is computed here from the timeline and the catalog CSV rows,
with the rates written out as numbers: not through vicuna_cloud.billing.
"""

from __future__ import annotations

import csv
import json
import os

import pytest

from conftest import CATALOG_SNAPSHOT
from helpers.cost import FakeClock, make_spec
from vicuna_cloud import nodeside
from vicuna_cloud.costs import report
from vicuna_cloud.ledger import LedgerRecorder, read_ledger
from vicuna_cloud.run_store import write_run_spec
from vicuna_cloud.runspec import Billing, Budget, DiskBill
from vicuna_cloud.storage import open_bucket

GB = 1e9
CKPT_BYTES = 12 * 6_738_415_616          # one 7B checkpoint: 80.9 GB
DATASET_BYTES = 2 * 10**9                # the COPY-ed dataset (a sparse file)
IO2_PER_HOUR = (256 * 0.125 + 20000 * 0.065) / 730   # AWS io2, 256 GB, 20k IOPS
PDSSD_PER_HOUR = 256 * 0.17 / 730                     # GCP pd-ssd (a2 has no pd-extreme)
GP3_50GB_PER_HOUR = 50 * 0.08 / 730                   # the controller's disk


def _rows(cloud: str) -> list[dict]:
    with open(CATALOG_SNAPSHOT / cloud / "vms.csv", newline="") as f:
        return list(csv.DictReader(f))


def _aws_spot(zone: str) -> float:
    (r,) = {r["AvailabilityZone"]: r for r in _rows("aws")
            if r["InstanceType"] == "p4de.24xlarge" and r["AvailabilityZone"] == zone}.values()
    return float(r["SpotPrice"])


def _gcp_spot(zone: str) -> float:
    rows = _rows("gcp")
    vm = next(r for r in rows if r["InstanceType"] == "a2-ultragpu-8g"
              and r["AvailabilityZone"] == zone)
    gpu = next(r for r in rows if not r["InstanceType"] and r["AcceleratorName"] == "A100-80GB"
               and r["AcceleratorCount"] in ("8", "8.0") and r["AvailabilityZone"] == zone)
    return float(vm["SpotPrice"]) + float(gpu["SpotPrice"])


def _controller_per_hour() -> float:
    return min(float(r["Price"]) for r in _rows("aws") if r["InstanceType"] == "m6i.2xlarge")


class Node:
    """One simulated VM: its boot (via /proc/uptime), its env, its true end."""

    def __init__(self, tmp, name, clock, cloud, region, zone, run_dir, data_dir):
        self.clock, self.boot = clock, clock()
        self.uptime = str(tmp / f"{name}.uptime")
        self.env = {
            "VICUNA_RUN_DIR": run_dir, "VICUNA_DATA_DIR": data_dir,
            nodeside.STATE_ENV: str(tmp / f"{name}.state.json"),
            nodeside.IMDS_ENV: "http://127.0.0.1:9",  # nothing listens: no zone id
            "SKYPILOT_CLUSTER_INFO": json.dumps({"cluster_name": f"vicuna-{name}",
                                                 "cloud": cloud, "region": region,
                                                 "zone": zone}),
        }

    def open(self):
        with open(self.uptime, "w") as f:
            f.write(f"{self.clock() - self.boot:.2f} 0.0\n")
        seg, stop, msg = nodeside.open_segment(self.env, clock=self.clock,
                                               uptime_path=self.uptime)
        state = {"run_id": seg["run_id"], "segment_id": seg["segment_id"], "owner": "setup",
                 "beat_pid": None}
        with open(self.env[nodeside.STATE_ENV], "w") as f:
            json.dump(state, f)
        self.seg_path = os.path.join(self.env["VICUNA_RUN_DIR"], "ledger",
                                     f"{seg['segment_id']}.json")
        return seg, stop

    def setup(self, seconds: float, hb: float = 60.0) -> None:
        """Setup runs; its heartbeat process beats every ``hb`` seconds."""
        end = self.clock() + seconds
        while self.clock() + hb <= end:
            self.clock.advance(hb)
            nodeside.beat_once(self.env, self.seg_path, self.clock())
        self.clock.t = end


def _train(rec, clock, *, first, steps, step_s, ckpt_every, save_s, up, down0, notice=None):
    """Steps on the fake clock; a checkpoint every ckpt_every steps uploads CKPT_BYTES."""
    step, ckpt, budget = first, first or None, False
    for i in range(1, steps + 1):
        clock.advance(step_s)
        step = first + i
        if step % ckpt_every == 0:
            rec.note_checkpoint(save_s, step=step)
            clock.advance(save_s)
            up += CKPT_BYTES
            ckpt = step
        rec.update(step=step, tokens=i * 1000, last_checkpoint_step=ckpt,
                   bytes_moved=(up, down0))
        rec.set_stop_reserve(save_s + CKPT_BYTES / 1.0e9)  # save + upload at 1 GB/s
        if rec.budget_exhausted():
            budget = True
            break
    return step, ckpt, up, budget


def test_simulated_timeline_bill_matches_independent_bill_line_by_line(tmp_path):
    bucket_root = tmp_path / "bucket"
    uri = str(bucket_root)
    cap = 50.0
    spec = make_spec(uri, run_id="vicuna-timeline", cloud="aws", preset="7b", write=False)
    clock = FakeClock(1_800_000_000.0)
    t_launch = clock()
    io2 = DiskBill(disk_type="io2", iops=20000, price_per_hour=IO2_PER_HOUR, source="io2")
    pdssd = DiskBill(disk_type="pd-ssd", price_per_hour=PDSSD_PER_HOUR, source="pd-ssd")
    spec = spec.model_copy(update={
        "resources": spec.resources.model_copy(update={"cloud": "any"}),
        "budget": Budget(max_cost_usd=cap, heartbeat_seconds=60.0),
        "billing": Billing(
            launched_at=t_launch, launch_cloud="aws", launch_price_per_hour=8.0274,
            fallback_price_per_hour=20.0, fallback_price_source="test", disk_size_gb=256,
            disk_tier="best", disks={"aws": io2, "gcp": pdssd}, bucket_cloud="aws",
            bucket_region="us-east-1", controller_price_per_hour=_controller_per_hour(),
            controller_disk_price_per_hour=GP3_50GB_PER_HOUR, controller_idle_minutes=10.0)})
    bucket = open_bucket(uri)
    write_run_spec(bucket, spec)
    run_dir = str(bucket_root / "runs" / spec.run_id)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with open(data_dir / "train.jsonl", "wb") as f:
        f.truncate(DATASET_BYTES)  # sparse: 2 GB of size, no disk
    truth = []  # (cloud, boot, end, $/h node, disk $/h, GB up, GB down, $/GB up, $/GB down)

    # --- VM A: GCP us-central1, preempted 8 minutes into setup ------------------------
    clock.advance(120)
    a = Node(tmp_path, "a", clock, "GCP", "us-central1", "us-central1-a", run_dir, str(data_dir))
    clock.advance(45)            # boot -> setup's first line
    seg_a, stop = a.open()
    assert not stop and seg_a["opened_by"] == "setup" and seg_a["attempt"] == 0
    a.setup(8 * 60 - 45)         # no trainer ever ran: the cloud took it mid-setup
    a_end = clock()
    # dataset COPY from the S3 bucket to GCP: AWS internet egress $0.09/GB
    truth.append(("gcp", a.boot, a_end, None, PDSSD_PER_HOUR, 0, DATASET_BYTES / GB, 0.12, 0.09))

    # --- VM B: AWS us-east-1 (the bucket's region), preempted after a checkpoint -----
    clock.advance(300)
    b = Node(tmp_path, "b", clock, "AWS", "us-east-1", "use1-az6", run_dir, str(data_dir))
    clock.advance(40)
    seg_b, stop = b.open()
    assert not stop and seg_b["attempt"] == 1
    b.setup(10 * 60)
    rec = LedgerRecorder(bucket, spec, clock=clock, env=b.env, background=False)
    rec.begin(first_step=0, total_steps=400)
    assert rec.segment.segment_id == seg_b["segment_id"]  # adopted, not a new segment
    assert rec.segment.vm_boot_time == pytest.approx(b.boot, abs=0.02)
    step, ckpt, up, budget = _train(rec, clock, first=0, steps=200, step_s=45.0,
                                    ckpt_every=30, save_s=40.0, up=0, down0=0)
    assert not budget and ckpt == 180
    rec.end("preempted", step=step, tokens=200_000, last_checkpoint_step=ckpt,
            bytes_moved=(up, 0))
    b_end = clock()
    truth.append(("aws", b.boot, b_end, _aws_spot("use1-az6"), IO2_PER_HOUR, up / GB,
                  DATASET_BYTES / GB, 0.0, 0.0))
    assert b_end - b.boot > 3600  # past AWS's first hour: charged

    # --- VM C: AWS eu-central-1, another region; stops for the budget ----------------
    clock.advance(420)
    c = Node(tmp_path, "c", clock, "AWS", "eu-central-1", "euc1-az2", run_dir, str(data_dir))
    clock.advance(40)
    seg_c, stop = c.open()
    assert not stop and seg_c["attempt"] == 2
    c.setup(9 * 60)
    rec = LedgerRecorder(bucket, spec, clock=clock, env=c.env, background=False)
    rec.begin(first_step=ckpt, total_steps=400)
    down = CKPT_BYTES  # the restore, from us-east-1
    step, _, up_c, budget = _train(rec, clock, first=ckpt, steps=220, step_s=45.0,
                                   ckpt_every=30, save_s=40.0, up=0, down0=down)
    assert budget, "the cap must fire before the run completes"
    # The stop: final save + upload + export, as the trainer does after a budget stop.
    clock.advance(40.0 + CKPT_BYTES / 1.0e9 + 2 * 6_738_415_616 / 1.0e9)
    up_c += CKPT_BYTES + 2 * 6_738_415_616
    rec.end("budget", step=step, tokens=1000, last_checkpoint_step=step,
            bytes_moved=(up_c, down))
    c_end = clock()
    truth.append(("aws", c.boot, c_end, _aws_spot("euc1-az2"), IO2_PER_HOUR, up_c / GB,
                  (down + DATASET_BYTES) / GB, 0.02, 0.02))
    # A VM that starts over budget stops before setup, with the success code.
    clock.advance(600)
    d = Node(tmp_path, "d", clock, "AWS", "us-west-2", "usw2-az1", run_dir, str(data_dir))
    clock.advance(30)
    seg_d, stop = d.open()
    assert stop and seg_d["end_reason"] == "budget" and nodeside.gate(d.env)
    # VM D's node is priced from the catalog at report time (no trainer ever priced it).
    truth.append(("aws", d.boot, clock(), _aws_spot("usw2-az1"), IO2_PER_HOUR, 0,
                  DATASET_BYTES / GB, 0.02, 0.02))
    clock.advance(5)  # the job ends (exit 0); the controller idles 10 min, then stops

    # --- the independent bill -----------------------------------------------------------
    gcp_price = _gcp_spot("us-central1-a")
    expect = {"node": 0.0, "disk": 0.0, "egress": 0.0}
    for cloud, boot, end, price, disk_h, gb_up, gb_down, r_up, r_down in truth:
        h = (end - boot) / 3600
        expect["node"] += h * (gcp_price if price is None else price)
        expect["disk"] += h * disk_h
        expect["egress"] += gb_up * r_up + gb_down * r_down
    d_seg = read_ledger(bucket, spec.run_id).segments[-1]
    ctl_end = d_seg.end_time + 600
    expect["controller"] = (ctl_end - t_launch) / 3600 * (_controller_per_hour()
                                                         + GP3_50GB_PER_HOUR)

    rc = report.run_cost(bucket, spec.run_id, now=clock() + 3600)
    got = {ln.line: ln.usd for ln in rc.lines}
    assert set(got) == {"node", "disk", "egress", "controller"}
    print("\nline        ledger+report  independent")
    for line, usd in expect.items():
        print(f"{line:<12}{got[line]:>12.4f}{usd:>13.4f}")
    for line, usd in expect.items():
        assert got[line] == pytest.approx(usd, rel=0.01), (line, got[line], usd)
    assert rc.spend_usd == pytest.approx(sum(expect.values()), rel=0.01)
    # Each line is a real share of this bill, not a rounding error.
    assert got["disk"] > 0.15 * got["node"] and got["egress"] > 1.0 and got["controller"] > 1.0
    # The cap held: the spend with the final save, upload, export and the controller's
    # idle autostop is under it (VM D is a relaunch after the stop: its boot is the
    # only spend a stopped run can still see, and it stops before setup).
    assert rc.spend_usd - rc.segments[3].cost_usd <= cap
    assert rc.segments[3].billed_hours * 3600 < 31
    assert rc.status == "stopped: budget" and rc.verdict == "stopped: budget"
    assert [s.attempt for s in rc.segments] == [0, 1, 2, 3]
    assert [s.opened_by for s in rc.segments] == ["setup"] * 4
    assert [s.end_reason for s in rc.segments] == ["preempted/unknown", "preempted", "budget",
                                                   "budget"]
    # Steps as the trainer's log would show them: B trained 1-200, lost 181-200.
    sb = rc.segments[1]
    assert (sb.first_step + 1, sb.last_step, sb.steps_lost) == (1, 200, 20)
    assert rc.segments[0].steps_trained == 0 and rc.segments[3].steps_trained == 0
