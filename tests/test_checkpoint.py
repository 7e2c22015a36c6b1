"""CheckpointManager in one process (world size 1, no process group): the commit protocol,
retention, leftovers, fallback, spec refusal, emergency checkpoints, and the interval.

The torchrun tests (2 ranks, FSDP2, SIGKILLs, S3/GCS) are in test_checkpoint_resume.py.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time

import numpy as np
import pytest
import torch

from train.checkpoint import (
    COMMIT_NAME, CheckpointManager, SpecMismatchError, TrainProgress, committed_steps,
    list_checkpoints, step_prefix,
)
from train.ckpt_interval import IntervalPolicy, young_daly_seconds
from train.inputs import ConfigError
from vicuna_cloud.runspec import CheckpointPolicy
from vicuna_cloud.storage import open_bucket

from helpers.train import tiny_spec


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(8, 16)
        self.b = torch.nn.Linear(16, 4)
        self.drop = torch.nn.Dropout(0.3)

    def forward(self, x):
        return self.b(self.drop(torch.relu(self.a(x))))


def make(seed=0):
    torch.manual_seed(seed)
    m = Tiny()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return m, opt, sched


def train_step(m, opt, sched):
    x = torch.randn(4, 8) + random.random() + float(np.random.rand())
    loss = m(x).pow(2).mean()
    loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()
    return float(loss.detach())


@pytest.fixture
def spec(tmp_path):
    s, _ = tiny_spec(tmp_path, limit=4, checkpoint=CheckpointPolicy(interval_steps=2, keep=2))
    return s


def manager(spec, tmp_path, m, opt, sched, **kw):
    return CheckpointManager(spec, m, opt, sched, rank=0, world_size=1,
                             local_root=str(tmp_path / "local"), **kw)


def run_steps(ckpt, m, opt, sched, progress, n):
    losses = []
    for _ in range(n):
        losses.append(train_step(m, opt, sched))
        progress.step += 1
        progress.tokens_trained += 10
        ckpt.maybe_save(progress)
    return losses


def test_save_commit_restore_is_exact_and_retains_two(spec, tmp_path):
    bucket = open_bucket(spec.bucket_uri)
    m, opt, sched = make()
    ckpt = manager(spec, tmp_path, m, opt, sched)
    assert ckpt.restore() is None
    p = TrainProgress()
    run_steps(ckpt, m, opt, sched, p, 6)
    ckpt.close()
    # steps 2, 4, 6 were saved; keep=2 leaves 4 and 6, and the staging dirs are gone.
    assert committed_steps(bucket, spec.run_id) == [4, 6]
    assert list_checkpoints(bucket, spec.run_id) == {4: True, 6: True}
    assert ckpt.last_committed_step == 6
    assert not any((tmp_path / "local" / "save").iterdir())
    commit = json.loads(bucket.get_bytes(f"{step_prefix(spec.run_id, 6)}/{COMMIT_NAME}"))
    assert commit["step"] == 6 and commit["training_hash"] == spec.training_hash()
    assert commit["progress"]["tokens_trained"] == 60
    for f in commit["files"]:
        assert bucket.stat(f"{step_prefix(spec.run_id, 6)}/{f['name']}").size == f["size"]
    # Continue 3 steps from here, then redo them from the restored checkpoint.
    expected = [train_step(m, opt, sched) for _ in range(3)]
    expected_params = [p_.detach().clone() for p_ in m.parameters()]

    m2, opt2, sched2 = make(seed=123)  # different init: restore must overwrite everything
    torch.manual_seed(999)
    random.seed(5)
    np.random.seed(7)
    ckpt2 = manager(spec, tmp_path, m2, opt2, sched2)
    prog = ckpt2.restore()
    assert prog == TrainProgress(step=6, tokens_trained=60)
    assert ckpt2.restored_step == 6 and ckpt2.events[-1]["event"] == "checkpoint_restored"
    assert sched2.last_epoch == 6
    got = [train_step(m2, opt2, sched2) for _ in range(3)]
    assert got == expected  # RNG (torch, Python, NumPy), optimizer, scheduler all restored
    for a, b in zip(expected_params, m2.parameters()):
        assert torch.equal(a, b)


def test_leftovers_deleted_and_corrupt_newest_falls_back(spec, tmp_path):
    bucket = open_bucket(spec.bucket_uri)
    m, opt, sched = make()
    ckpt = manager(spec, tmp_path, m, opt, sched)
    p = TrainProgress()
    run_steps(ckpt, m, opt, sched, p, 2)
    ckpt.wait()
    params_at_2 = [x.detach().clone() for x in m.parameters()]
    run_steps(ckpt, m, opt, sched, p, 2)
    ckpt.close()
    # An uncommitted directory (a save killed before COMMIT.json) at step 6.
    bucket.put_bytes(f"{step_prefix(spec.run_id, 6)}/__0_0.distcp", b"partial")
    # Corrupt the newest committed checkpoint's shard (same size, different bytes).
    key = f"{step_prefix(spec.run_id, 4)}/__0_0.distcp"
    data = bytearray(bucket.get_bytes(key))
    data[len(data) // 2] ^= 0xFF
    bucket.put_bytes(key, bytes(data))

    m2, opt2, sched2 = make(seed=1)
    ckpt2 = manager(spec, tmp_path, m2, opt2, sched2)
    prog = ckpt2.restore()
    assert prog.step == 2 and ckpt2.restored_step == 2
    kinds = [e["event"] for e in ckpt2.events]
    assert kinds == ["checkpoint_leftovers_deleted", "checkpoint_fallback", "checkpoint_restored"]
    fallback = ckpt2.events[1]
    assert fallback["ckpt_step"] == 4 and "sha256" in fallback["reason"]
    assert fallback["fallback_to"] == 2
    for a, b in zip(params_at_2, m2.parameters()):
        assert torch.equal(a, b)
    # Both the leftover and the corrupt checkpoint are gone: steps 4 and 6 can be rewritten.
    assert list_checkpoints(bucket, spec.run_id) == {2: True}


def test_missing_shard_with_no_older_checkpoint_is_an_error(spec, tmp_path):
    bucket = open_bucket(spec.bucket_uri)
    m, opt, sched = make()
    ckpt = manager(spec, tmp_path, m, opt, sched)
    run_steps(ckpt, m, opt, sched, TrainProgress(), 2)
    ckpt.close()
    bucket.delete(f"{step_prefix(spec.run_id, 2)}/__0_0.distcp")
    with pytest.raises(Exception, match="none loads"):
        manager(spec, tmp_path, *make(seed=3)).restore()
    # Never deleted: the user decides what to do with the only checkpoint.
    assert bucket.exists(f"{step_prefix(spec.run_id, 2)}/{COMMIT_NAME}")


def test_changed_spec_is_refused(tmp_path):
    spec, _ = tiny_spec(tmp_path, limit=4, checkpoint=CheckpointPolicy(interval_steps=1))
    m, opt, sched = make()
    ckpt = manager(spec, tmp_path, m, opt, sched)
    run_steps(ckpt, m, opt, sched, TrainProgress(), 1)
    ckpt.close()
    changed = spec.model_copy(update={"hyper": spec.hyper.model_copy(update={"learning_rate": 1.0})})
    with pytest.raises(SpecMismatchError, match="different run spec") as e:
        manager(changed, tmp_path, *make()).restore()
    assert isinstance(e.value, ConfigError)  # python -m train maps it to EXIT_CONFIG
    # Checkpoint cadence is not part of the training hash: allowed to change.
    cadence = spec.model_copy(update={"checkpoint": CheckpointPolicy(interval_seconds=5)})
    assert manager(cadence, tmp_path, *make()).restore().step == 1


class FakeWatcher:
    """The watcher's interface (event, reason, window_s) without a cloud behind it."""

    def __init__(self, window_s):
        self.event = threading.Event()
        self.reason = "gcp"
        self.window_s = window_s


def test_emergency_checkpoint_only_when_it_fits(spec, tmp_path):
    bucket = open_bucket(spec.bucket_uri)
    m, opt, sched = make()
    w = FakeWatcher(window_s=30.0)
    ckpt = manager(spec, tmp_path, m, opt, sched, watcher=w)
    p = TrainProgress()
    run_steps(ckpt, m, opt, sched, p, 3)  # saves step 2
    w.event.set()
    assert ckpt.maybe_save(p) is True
    assert ckpt.stop_requested and ckpt.emergency_step == 3
    assert committed_steps(bucket, spec.run_id) == [2, 3]
    assert ckpt.events[-1]["checkpoint"] == "emergency"

    # Measured cost larger than the window: no checkpoint, just stop.
    m, opt, sched = make()
    w2 = FakeWatcher(window_s=30.0)
    ckpt2 = manager(spec, tmp_path, m, opt, sched, watcher=w2)
    p2 = ckpt2.restore()
    ckpt2.policy.record(stall_s=1.0, total_s=60.0)
    train_step(m, opt, sched)
    p2.step += 1
    w2.event.set()
    assert ckpt2.maybe_save(p2) is False
    assert ckpt2.stop_requested and ckpt2.emergency_step is None
    assert committed_steps(bucket, spec.run_id) == [2, 3]
    assert ckpt2.events[-1]["checkpoint"] == "none"


def test_interval_policy():
    assert young_daly_seconds(10, 6 * 3600) == pytest.approx(math.sqrt(2 * 10 * 21600))
    pol = IntervalPolicy(mtbf_s=3600)
    pol.record(stall_s=0.5, total_s=200.0)  # upload slower than Young/Daly (60 s)
    assert pol.seconds() == 200.0
    pol.record(stall_s=8.0, total_s=20.0)
    assert pol.seconds() == pytest.approx(240.0)
    assert not pol.due(10, None, 239.0) and pol.due(10, None, 241.0)
    assert not pol.due(10, 10, 1e9)  # never twice for one step
    steps = IntervalPolicy.from_spec(CheckpointPolicy(interval_steps=50))
    assert [s for s in range(1, 201) if steps.due(s, None, 0.0)] == [50, 100, 150, 200]
    fixed = IntervalPolicy.from_spec(CheckpointPolicy(interval_seconds=90, mtbf_hours=1))
    fixed.record(stall_s=100.0, total_s=1000.0)
    assert fixed.seconds() == 90


class _HeldUploads:
    """A LocalBucket whose put_file waits for ``release`` (a slow upload) and records keys."""

    def __init__(self, inner):
        self.inner, self.release, self.put_keys = inner, threading.Event(), []

    def put_file(self, key, path, *a, **kw):
        self.put_keys.append(key)
        self.release.wait(30)
        return self.inner.put_file(key, path, *a, **kw)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_notice_during_a_slow_upload_starts_no_second_save(spec, tmp_path):
    """An emergency save while the previous one still uploads would run two DCP saves at
    once and restage into the CPU buffers the first is still writing from."""
    bucket = _HeldUploads(open_bucket(spec.bucket_uri))
    m, opt, sched = make()
    w = FakeWatcher(window_s=0.5)
    ckpt = manager(spec, tmp_path, m, opt, sched, watcher=w, bucket=bucket)
    ckpt.policy.record(stall_s=0.01, total_s=0.1)  # an emergency save "fits" the window
    p = TrainProgress()
    run_steps(ckpt, m, opt, sched, p, 3)  # step 2's save is stuck uploading
    w.event.set()
    try:
        assert ckpt.maybe_save(p) is False
        assert ckpt.stop_requested and ckpt.emergency_step is None
        assert ckpt.events[-1]["checkpoint"] == "busy"
        assert not [k for k in bucket.put_keys if "step-00000003" in k]
        # close() after a notice does not wait for the upload: the rest of the window is
        # for ending the ledger and exiting.
        t0 = time.monotonic()
        ckpt.close()
        assert time.monotonic() - t0 < 5.0
    finally:
        bucket.release.set()
    assert ckpt.wait(timeout=30)
    assert committed_steps(bucket.inner, spec.run_id) == [2]
