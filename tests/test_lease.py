"""Issue 14 #1: one live writer per run (vicuna_cloud/lease.py).

The create-only write is the Bucket's own ``put_bytes(if_absent=True)`` (S3 If-None-Match,
GCS generation 0, a hard link locally), so the race is tested on all three backends
through the ``bucket_uri`` fixture (local dir, moto S3 server, fake-gcs-server). Then the
end to end case: two `launch tiny --local` of one run at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vicuna_cloud.lease import (
    LeaseHeld, LeaseKeeper, LeaseLost, acquire, lease_prefix, read_state, release_owner,
)
from vicuna_cloud.storage import open_bucket


class Clock:
    def __init__(self, t=1_000_000.0):
        self.t = t

    def __call__(self):
        return self.t


def test_two_writers_racing_exactly_one_wins(bucket_uri):
    bucket = open_bucket(bucket_uri)
    won, refused = [], []
    barrier = threading.Barrier(4)

    def contend(i):
        barrier.wait()
        try:
            won.append(acquire(bucket, "r1", owner=f"job-{i}", holder=f"holder {i}",
                               heartbeat_s=60))
        except LeaseHeld as e:
            refused.append(str(e))

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(won) == 1 and len(refused) == 3
    assert f"held by {won[0].holder}" in refused[0] and "since" in refused[0]
    assert "--take-over" in refused[0]
    assert read_state(bucket, "r1").newest == won[0]


def test_same_owner_succeeds_a_stale_or_fresh_attempt_without_take_over(tmp_path):
    bucket = open_bucket(str(tmp_path / "b"))
    a = acquire(bucket, "r1", owner="job-a", holder="attempt 0", heartbeat_s=2)
    b = acquire(bucket, "r1", owner="job-a", holder="attempt 1", heartbeat_s=2)
    assert (a.generation, b.generation) == (0, 1)
    keeper = LeaseKeeper(bucket, "r1", a)
    keeper.check()  # a newer generation of the same owner is a successor, not a takeover


def test_take_over_only_once_stale_and_the_old_holder_stops(tmp_path):
    bucket = open_bucket(str(tmp_path / "b"))
    clock = Clock()
    old = acquire(bucket, "r1", owner="job-a", holder="launcher A", heartbeat_s=2, clock=clock)
    keeper = LeaseKeeper(bucket, "r1", old, clock=clock)
    clock.t += 5
    keeper.renew()
    clock.t += 5  # 5 s since A's beat: fresh (stale after 10 s)
    with pytest.raises(LeaseHeld, match="Wait for it to end"):
        acquire(bucket, "r1", owner="job-b", holder="launcher B", heartbeat_s=2,
                take_over=True, clock=clock)
    clock.t += 20
    with pytest.raises(LeaseHeld, match="relaunch with --take-over"):
        acquire(bucket, "r1", owner="job-b", holder="launcher B", heartbeat_s=2, clock=clock)
    new = acquire(bucket, "r1", owner="job-b", holder="launcher B", heartbeat_s=2,
                  take_over=True, clock=clock)
    assert new.generation == 1
    with pytest.raises(LeaseLost, match="launcher B"):
        keeper.renew()
    assert keeper.lost


def test_released_run_is_free_and_garbage_lease_files_do_not_brick_it(tmp_path):
    bucket = open_bucket(str(tmp_path / "b"))
    a = acquire(bucket, "r1", owner="job-a", holder="A", heartbeat_s=60)
    bucket.put_bytes(f"{lease_prefix('r1')}00000007.json", b"\x00 not json")
    bucket.put_bytes(f"{lease_prefix('r1')}00000008.json", b'{"generation": "x"}')
    state = read_state(bucket, "r1")
    assert state.newest == a and len(state.invalid) == 2
    with pytest.raises(LeaseHeld):
        acquire(bucket, "r1", owner="job-b", holder="B", heartbeat_s=60)
    release_owner(bucket, "r1", "job-a")
    b = acquire(bucket, "r1", owner="job-b", holder="B", heartbeat_s=60)
    assert b.generation == 1


def test_a_superseded_writer_commits_no_checkpoint(tmp_path):
    """The fence: COMMIT.json is written only while this writer's generation is newest."""
    from train.checkpoint import CheckpointManager, TrainProgress, committed_steps
    from test_checkpoint import make, run_steps
    from helpers.train import tiny_spec
    from vicuna_cloud.runspec import CheckpointPolicy

    spec, _ = tiny_spec(tmp_path, limit=4, checkpoint=CheckpointPolicy(interval_steps=2, keep=5))
    bucket = open_bucket(spec.bucket_uri)
    rec = acquire(bucket, spec.run_id, owner="job-a", holder="A", heartbeat_s=60)
    keeper = LeaseKeeper(bucket, spec.run_id, rec)
    m, opt, sched = make()
    ckpt = CheckpointManager(spec, m, opt, sched, rank=0, world_size=1,
                             local_root=str(tmp_path / "l"), lease=keeper)
    p = TrainProgress()
    run_steps(ckpt, m, opt, sched, p, 2)
    ckpt.wait()
    assert committed_steps(bucket, spec.run_id) == [2]
    release_owner(bucket, spec.run_id, "job-a")  # (as if A looked dead) B takes the run
    acquire(bucket, spec.run_id, owner="job-b", holder="B", heartbeat_s=60)
    run_steps(ckpt, m, opt, sched, p, 2)  # step 4's save: the commit is refused
    ckpt.wait()
    assert committed_steps(bucket, spec.run_id) == [2]
    assert any(e["event"] == "checkpoint_failed" and "taken over" in e["reason"]
               for e in ckpt.events)
    keeper.lost = "taken over by B"  # what the renewal thread sets
    assert ckpt.maybe_save(p, force=True) is False
    assert ckpt.stop_requested and ckpt.lease_lost
    ckpt.close()


@pytest.mark.slow
def test_two_local_launches_of_one_run_the_second_refuses(tmp_path):
    """Issue 14 #1 end to end: both used to run (and exit 0) while corrupting each other's
    checkpoints. Now the second refuses, naming the holder; the first's checkpoints load."""
    home, bucket_dir = tmp_path / "home", tmp_path / "bucket"
    env = dict(os.environ, VICUNA_CLOUD_HOME=str(home), COLUMNS="300")
    cmd = [sys.executable, "-m", "vicuna_cloud", "launch", "tiny", "--local", "--seed", "7",
           "--bucket", str(bucket_dir), "--run-id", "twice"]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    lease_dir = bucket_dir / "runs" / "twice" / "lease"
    deadline = time.time() + 300
    while time.time() < deadline and not (lease_dir.exists() and any(lease_dir.iterdir())):
        assert first.poll() is None, first.communicate()
        time.sleep(0.2)
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
    assert "held by" in second.stderr and "vicuna-cloud launch --local" in second.stderr
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, out[-3000:] + err[-3000:]

    from train.checkpoint import committed_steps, download_checkpoint

    bucket = open_bucket(str(bucket_dir))
    steps = committed_steps(bucket, "twice")
    assert steps
    for s in steps:  # every committed checkpoint passes every sha256 check
        download_checkpoint(bucket, "twice", s, str(tmp_path / f"dl-{s}"))
    assert read_state(bucket, "twice").released
