"""The local backend's moving parts: the task's torchrun line for one node, the supervised
run (simulated preemptions, restarts, Ctrl-C) with its live progress probe, the cancelled
segment's end reason, and the run-index entry. ``vicuna_cloud.sdk.local.launch_local``
puts them together; nothing here prints.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import time
from typing import Callable, Optional

from vicuna_cloud import bucket_keys, paths
from vicuna_cloud.local.live_view import StdoutProbe
from vicuna_cloud.local.supervisor import Attempt, Supervisor, SupervisorConfig, SupervisorResult

NPROC = 2
#: Step-based checkpoints for the short local run (a cloud run derives its interval
#: from the measured save cost, Young/Daly). Small enough that a preemption loses little.
LOCAL_CHECKPOINT_STEPS = 3
#: Heartbeat often enough that a SIGKILLed segment's billed time is close to its life.
LOCAL_HEARTBEAT_S = 2.0


def torchrun_command(run_uri: str, nproc: int = NPROC) -> list[str]:
    """The task's `run` line for one node: ``-m train --run-uri URI`` (the one form; torchrun's
    own argparse would take ``--run`` for an abbreviation of its --run-path)."""
    exe = os.path.join(os.path.dirname(sys.executable), "torchrun")
    head = [exe] if os.access(exe, os.X_OK) else [sys.executable, "-m", "torch.distributed.run"]
    return head + ["--standalone", "--nnodes", "1", "--nproc_per_node", str(nproc),
                   "-m", "train", "--run-uri", run_uri]


def close_cancelled_segment(bucket, run_id: str, since: float) -> Optional[str]:
    """After Ctrl-C: record the newest segment of this launch as ended by "cancelled".

    The trainer treats SIGTERM as a preemption notice (checkpoint, ledger end
    "preempted", exit 75); the user's intent was to cancel, so the launcher, which
    knows it, writes that end reason. A segment killed before it could write an end
    gets one now.
    """
    from dataclasses import asdict

    from vicuna_cloud.ledger import read_ledger

    segs = [s for s in read_ledger(bucket, run_id).segments if s.start_time >= since - 1]
    if not segs:
        return None
    seg = max(segs, key=lambda s: s.start_time)
    if seg.end_reason == "completed":
        return None
    now = time.time()
    seg.end_time = seg.end_time or now
    seg.last_heartbeat = max(seg.last_heartbeat, seg.end_time)
    seg.end_reason = "cancelled"
    bucket.put_bytes(bucket_keys.ledger_segment(run_id, seg.segment_id),
                     json.dumps(asdict(seg), indent=1, sort_keys=True).encode())
    return seg.segment_id


def record_local_run(run_id: str, bucket_uri: str, preset: str) -> None:
    """So `vicuna-cloud cost RUN` / `status` find the bucket without --bucket."""
    from vicuna_cloud import run_index

    try:
        run_index.record(run_index.RunRecord(run_id=run_id, bucket_uri=bucket_uri,
                                             backend="local", preset=preset))
    except OSError:
        pass


def _node_env(local_dir: str) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # 2 processes share the CPU: no oversubscription
    env.setdefault("VICUNA_LOCAL_ROOT", os.path.join(local_dir, "node"))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def take_lease(bkt, spec, take_over: bool):
    """This launch's generation of the run lease (issue 14: one writer per run); raises
    LeaseHeld (who holds it, since when, how to take over) or StorageError."""
    from vicuna_cloud.lease import LeaseKeeper, acquire, holder_description, new_owner

    rec = acquire(bkt, spec.run_id, owner=new_owner("local"),
                  holder=holder_description("vicuna-cloud launch --local"),
                  heartbeat_s=spec.budget.heartbeat_seconds, take_over=take_over)
    return LeaseKeeper(bkt, spec.run_id, rec).start()


def supervise(bkt, run_id: str, preemptions: int, seed: int, *,
              on_start: Callable[[StdoutProbe, str], None],
              on_event: Callable[[str, Attempt], None],
              keeper=None) -> tuple[SupervisorResult, str]:
    """Run the task's command under the supervisor; (its result, the log path).
    ``on_start(probe, what)`` once before the first attempt (the probe's ``poll()`` gives
    the newest step), then ``on_event(kind, attempt)`` for every supervisor event.
    ``keeper`` (take_lease): the trainers are this launch's attempts; losing it stops them;
    when all are gone the lease is released."""
    from vicuna_cloud.lease import OWNER_ENV, release_owner
    from vicuna_cloud.storage import StorageError

    run_uri = bkt.child_uri(bucket_keys.run_spec(run_id))
    local_dir = paths.run_dir(run_id)
    os.makedirs(local_dir, exist_ok=True)
    log_path = os.path.join(local_dir, "train.log")
    probe = StdoutProbe()
    started = time.time()
    cmd = torchrun_command(run_uri)
    env = _node_env(local_dir)
    # Everything temporary (ours, torchrun's, the trainer's) under the run; what a killed
    # launch left there goes now (this launch holds the lease: nobody else writes there).
    temp_root = os.path.join(local_dir, "tmp")
    shutil.rmtree(temp_root, ignore_errors=True)
    env["TMPDIR"] = temp_root
    if keeper is not None:
        env[OWNER_ENV] = keeper.record.owner
    sup = Supervisor(
        cmd, config=SupervisorConfig(preemptions=preemptions, seed=seed),
        probe=probe, env=env, log_path=log_path, on_line=probe.feed,
        on_event=on_event, on_cancel=lambda: close_cancelled_segment(bkt, run_id, started),
        temp_root=temp_root, stop_check=(lambda: keeper.lost) if keeper else None,
    )
    on_start(probe, f"Run {run_id}: torchrun {' '.join(cmd[-9:])} (log: {log_path})")
    from vicuna_cloud.local import control

    control.write_pid(run_id)  # `vicuna-cloud cancel/logs RUN` find this launcher
    try:
        return sup.run(), log_path
    finally:  # every process of this launch is gone (the supervisor ends them): free the run
        control.clear_pid(run_id)
        if keeper is not None:
            keeper.close(release=False)
            if not keeper.lost:
                try:
                    release_owner(bkt, run_id, keeper.record.owner)
                except StorageError:
                    pass  # then it goes stale by itself
