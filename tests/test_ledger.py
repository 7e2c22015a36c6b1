"""Ledger writer and reader: real processes killed mid-run, budget cap on a simulated clock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers.cost import FakeClock, make_spec
from vicuna_cloud.costs import report
from vicuna_cloud.ledger import (
    UNKNOWN_END, LedgerRecorder, Segment, parse_cluster_info, read_boot_time, read_ledger,
)
from vicuna_cloud.storage import StorageError, open_bucket
from vicuna_cloud.storage.local import LocalBucket

CHILD = Path(__file__).parent / "helpers" / "children" / "ledger_child.py"


def _run_child_until(bucket_uri: str, run_id: str, min_step: int) -> int:
    """Start the child, wait until it reports min_step, SIGKILL it; return its last step."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen([sys.executable, str(CHILD), bucket_uri, run_id, "5"],
                            stdout=subprocess.PIPE, text=True, env=env)
    last = 0
    deadline = time.time() + 60
    try:
        for line in proc.stdout:
            last = int(line.split()[1])
            if last >= min_step or time.time() > deadline:
                break
        time.sleep(0.3)  # let at least one more heartbeat go out
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # a spot VM reclaimed: no end, no final write
        proc.wait(timeout=10)
    assert last >= min_step, "child did not train"
    return last


def test_killed_process_leaves_segment_without_end_counted_to_last_heartbeat(local_bucket_uri):
    spec = make_spec(local_bucket_uri, price=36.0, heartbeat=0.2)
    bucket = open_bucket(local_bucket_uri)
    _run_child_until(local_bucket_uri, spec.run_id, min_step=12)
    (seg,) = read_ledger(bucket, spec.run_id).segments
    assert seg.end_time is None and seg.end_reason is None
    assert seg.reason == UNKNOWN_END
    assert seg.cloud == "local" and seg.price_per_hour == 36.0
    assert seg.price_source == "local (--price-per-hour)"
    assert seg.last_heartbeat > seg.start_time + 0.4  # the background heartbeat wrote
    assert seg.last_step >= 10 and seg.tokens == seg.last_step * 100
    assert seg.last_checkpoint_step == (seg.last_step // 5) * 5
    assert seg.checkpoints == seg.last_checkpoint_step // 5
    assert seg.total_steps == 1000
    assert seg.billed_seconds() == pytest.approx(seg.last_heartbeat - seg.vm_boot_time)

    # The next attempt resumes from the last checkpoint and completes (simulated clock).
    clock = FakeClock(seg.last_heartbeat + 120)
    rec = LedgerRecorder(bucket, spec, clock=clock, background=False)
    rec.begin(first_step=seg.last_checkpoint_step, total_steps=1000)
    assert [s.segment_id for s in rec.prior] == [seg.segment_id]
    for step in range(seg.last_checkpoint_step + 1, seg.last_checkpoint_step + 11):
        clock.advance(1.0)
        rec.update(step=step, tokens=(step - seg.last_checkpoint_step) * 100,
                   last_checkpoint_step=seg.last_checkpoint_step)
    rec.end("completed", step=step, tokens=1000, last_checkpoint_step=step)

    rc = report.run_cost(bucket, spec.run_id, now=clock() + 3600)
    first, second = rc.segments
    assert first.end_reason == UNKNOWN_END
    assert first.steps_trained == seg.last_step
    lost = seg.last_step - seg.last_checkpoint_step
    assert first.steps_lost == lost
    assert second.end_reason == "completed" and second.steps_lost == 0
    assert second.steps_trained == 10
    expected = ((seg.last_heartbeat - seg.vm_boot_time) + 10.0) / 3600 * 36.0
    assert rc.spend_usd == pytest.approx(expected, abs=1e-3)
    assert rc.tokens_trained == seg.tokens + 1000
    useful_first = seg.tokens * (seg.last_step - lost) / seg.last_step
    assert rc.tokens_useful == round(useful_first + 1000)
    assert rc.recoveries == 1 and rc.status == "completed"
    assert rc.step == seg.last_checkpoint_step + 10


def test_budget_cap_on_simulated_clock_never_more_than_one_interval_over(local_bucket_uri):
    hb, price, cap = 60.0, 36.0, 10.0          # $0.01 per second
    spec = make_spec(local_bucket_uri, price=price, max_cost=cap, heartbeat=hb)
    bucket = open_bucket(local_bucket_uri)
    clock = FakeClock()
    # An earlier attempt that died after 400 s without an end record: its last step's
    # record went out at 400 s (each new step is written), so the ledger bills it $4.00.
    rec0 = LedgerRecorder(bucket, spec, clock=clock, background=False)
    rec0.begin(first_step=0)
    for step in range(1, 41):
        clock.advance(10)
        rec0.update(step=step, tokens=step, last_checkpoint_step=(step // 20) * 20 or None)
    clock.advance(1000)  # time passes unbilled before the next VM
    rec = LedgerRecorder(bucket, spec, clock=clock, background=False)
    rec.begin(first_step=40)
    assert rec.spent_usd() == pytest.approx(4.0)
    step, steps = 40, 0
    while not rec.budget_exhausted():
        clock.advance(7.0)
        step += 1
        steps += 1
        rec.update(step=step, tokens=steps, last_checkpoint_step=40)
        assert steps < 10_000
    rec.end("budget", step=step, tokens=steps, last_checkpoint_step=step)
    rc = report.run_cost(bucket, spec.run_id, now=clock())
    per_second = price / 3600
    assert rc.spend_usd <= cap + hb * per_second + 1e-9       # at most one interval over
    from vicuna_cloud.ledger import EXPORT_MIN_S

    assert rc.spend_usd > cap - (hb + 7.0 + EXPORT_MIN_S) * per_second  # not stopped early
    assert rc.verdict == "stopped: budget" and rc.stopped_budget
    assert rc.segments[-1].steps_lost == 0 and rc.segments[0].steps_lost == 0


def test_budget_lookahead_includes_a_checkpoint_save(local_bucket_uri):
    spec = make_spec(local_bucket_uri, price=3600.0, max_cost=100.0, heartbeat=10.0)  # $1/s
    clock = FakeClock()
    rec = LedgerRecorder(open_bucket(local_bucket_uri), spec, clock=clock, background=False)
    rec.begin(first_step=0)
    clock.advance(75)                            # + the export's fixed 10 s (EXPORT_MIN_S)
    assert not rec.budget_exhausted()            # 75 + 10 + 10 < 100
    rec.note_checkpoint(8.0, step=1)             # saves take 8 s: 75 + 10 + 10 + 8 > 100
    assert rec.budget_exhausted()


class FlakyBucket(LocalBucket):
    """A LocalBucket whose first puts fail, as a storage outage would (edge fault injection:
    a real outage cannot be caused on demand here)."""

    def __init__(self, uri, failures: int):
        super().__init__(uri)
        self.failures = failures

    def put_bytes(self, key, data):
        if self.failures > 0:
            self.failures -= 1
            raise StorageError("simulated outage")
        super().put_bytes(key, data)


def test_failed_heartbeat_writes_are_retried_and_never_raise(local_bucket_uri):
    spec = make_spec(local_bucket_uri, heartbeat=5.0)
    base = open_bucket(local_bucket_uri)
    flaky = FlakyBucket(base.location, failures=4)
    clock = FakeClock()
    rec = LedgerRecorder(flaky, spec, clock=clock, background=False, write_attempts=1,
                         retry_wait=0.0)
    rec.begin(first_step=0)                      # write fails (1)
    assert read_ledger(base, spec.run_id).segments == []
    for step in range(1, 6):
        clock.advance(6.0)
        rec.update(step=step, tokens=step, last_checkpoint_step=None)
        if step == 3:  # steps 1-3 failed too (failures 2-4): still nothing in the bucket
            assert read_ledger(base, spec.run_id).segments == []
    (seg,) = read_ledger(base, spec.run_id).segments  # steps 4 and 5 got through
    assert seg.last_step == 5 and rec.write_failures == 4
    rec.end("completed", step=5, tokens=5, last_checkpoint_step=5)
    (seg,) = read_ledger(base, spec.run_id).segments
    assert seg.end_reason == "completed" and seg.last_step == 5


class SlowPutBucket(LocalBucket):
    """A LocalBucket whose armed put stalls until released, as a slow network write would
    (edge fault injection: a storage call that hangs cannot be caused on demand here)."""

    def __init__(self, uri):
        super().__init__(uri)
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()
        self.final_written = threading.Event()

    def put_bytes(self, key, data):
        if self.armed:
            self.armed = False
            self.entered.set()
            self.release.wait(timeout=10)
        super().put_bytes(key, data)
        if b'"end_reason": "completed"' in data:
            self.final_written.set()


def test_slow_heartbeat_write_never_lands_after_the_end(local_bucket_uri):
    spec = make_spec(local_bucket_uri, heartbeat=5.0)
    base = open_bucket(local_bucket_uri)
    slow = SlowPutBucket(base.location)
    clock = FakeClock()
    rec = LedgerRecorder(slow, spec, clock=clock, background=True, stop_timeout=0.2)
    rec.begin(first_step=0)
    slow.armed = True
    clock.advance(6.0)
    rec.update(step=1, tokens=1, last_checkpoint_step=None)  # wakes the heartbeat thread
    assert slow.entered.wait(timeout=10)                     # its write is now stalled
    # Release the stalled heartbeat once the end is written (or after 1 s, when the end
    # waits for it): either way the end must be what the bucket keeps.
    releaser = threading.Thread(
        target=lambda: (slow.final_written.wait(timeout=1.0), slow.release.set()))
    releaser.start()
    rec.end("completed", step=2, tokens=2, last_checkpoint_step=2)
    releaser.join()
    rec._thread.join(timeout=10)
    (seg,) = read_ledger(base, spec.run_id).segments
    assert seg.end_reason == "completed" and seg.last_step == 2


def test_cloud_segment_reads_cluster_info_boot_time_and_catalog_price(local_bucket_uri):
    spec = make_spec(local_bucket_uri, cloud="aws", preset="7b")
    env = {"SKYPILOT_CLUSTER_INFO": json.dumps(
        {"cluster_name": "c1", "cloud": "AWS", "region": "eu-central-1", "zone": "euc1-az2"})}
    clock = FakeClock(time.time())
    rec = LedgerRecorder(open_bucket(local_bucket_uri), spec, clock=clock, env=env,
                         background=False)
    up_before = float(Path("/proc/uptime").read_text().split()[0])
    rec.begin(first_step=0)
    up_after = float(Path("/proc/uptime").read_text().split()[0])
    rec.end("cancelled", step=0, tokens=0, last_checkpoint_step=None)
    (seg,) = read_ledger(open_bucket(local_bucket_uri), spec.run_id).segments
    assert (seg.cloud, seg.region, seg.zone, seg.cluster_name) == \
        ("aws", "eu-central-1", "euc1-az2", "c1")
    assert seg.instance_type == "p4de.24xlarge" and seg.use_spot
    assert seg.price_per_hour == pytest.approx(8.0274)       # the snapshot's row
    assert "aws/vms.csv" in seg.price_source and "euc1-az2" in seg.price_source
    # Billing runs from the VM's boot, read from /proc/uptime at begin().
    assert clock() - up_after - 0.01 <= seg.vm_boot_time <= clock() - up_before + 0.01
    assert seg.vm_boot_time <= seg.start_time


def test_unpriceable_node_is_recorded_not_fatal(local_bucket_uri):
    spec = make_spec(local_bucket_uri, cloud="aws", preset="7b")
    rec = LedgerRecorder(open_bucket(local_bucket_uri), spec, clock=FakeClock(), env={},
                         background=False)
    rec.begin(first_step=0)  # no SKYPILOT_CLUSTER_INFO: no region to price
    assert rec.segment.price_per_hour is None
    assert rec.segment.price_source.startswith("unavailable:")
    assert rec.budget_exhausted() is False


def test_reader_skips_corrupt_segments_and_names_them(local_bucket_uri):
    spec = make_spec(local_bucket_uri)
    bucket = open_bucket(local_bucket_uri)
    bucket.put_bytes(f"runs/{spec.run_id}/ledger/20260101T000000Z-aaaaaa.json", b"{not json")
    rec = LedgerRecorder(bucket, spec, clock=FakeClock(), background=False)
    rec.begin(first_step=0)
    led = read_ledger(bucket, spec.run_id)
    assert len(led.segments) == 1 and len(led.problems) == 1
    assert "unreadable segment" in led.problems[0]


def test_small_parsers():
    assert parse_cluster_info({"SKYPILOT_CLUSTER_INFO": "garbage"}) == {}
    assert parse_cluster_info({}) == {}
    assert parse_cluster_info({"SKYPILOT_CLUSTER_INFO": '{"cloud": "GCP", "region": "r"}'}
                              )["cloud"] == "gcp"
    assert read_boot_time(100.0, "/nonexistent") is None
    with pytest.raises(ValueError, match="unknown end reason"):
        Segment.from_dict({"segment_id": "a", "run_id": "r", "cloud": "local",
                           "accelerators": "cpu:2", "nodes": 1, "use_spot": False,
                           "price_source": "x", "end_reason": "exploded"})
