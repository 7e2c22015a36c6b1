"""The run lease: exactly one live writer per run.

Layout, beside run.json::

    runs/<run_id>/lease/<generation:08d>.json   LeaseRecord, written create-only
    runs/<run_id>/lease/<generation:08d>.beat   {"time": ..., "released": bool}, by its holder

Taking the lease is a create-only write of the next generation (``Bucket.put_bytes(...,
if_absent=True)``: S3 ``If-None-Match: *``, GCS ``if_generation_match=0``, a hard link
locally), so of two processes racing for one generation exactly one wins. The newest valid
generation holds the run. Its *owner* is the job it belongs to (one local launch, or one
SkyPilot managed job, whose recoveries all carry the same ``VICUNA_LEASE_OWNER``): a new
attempt of the same owner succeeds its predecessor without asking, anyone else is refused
with who holds it and since when, unless the owner's last heartbeat is older than
``STALE_INTERVALS`` heartbeat intervals and they pass ``--take-over``.

The holder renews its beat every heartbeat (``LeaseKeeper``) and checks that no newer
generation of another owner appeared; if one did, the lease is lost: it stops writing (the
checkpoint commit calls ``check()`` right before COMMIT.json). The generation number also
names this process' staging directories, so two generations never share one.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Optional

from vicuna_cloud.records import InvalidRecord, LeaseRecord, parse
from vicuna_cloud.storage import AlreadyExistsError, Bucket, NotFoundError

log = logging.getLogger(__name__)

OWNER_ENV = "VICUNA_LEASE_OWNER"
TAKE_OVER_ENV = "VICUNA_TAKE_OVER"
STALE_INTERVALS = 5
MIN_STALE_S = 10.0


class LeaseHeld(RuntimeError):
    """Another live writer holds the run: the message says who, since when, how to take over."""


class LeaseLost(RuntimeError):
    """A newer generation of another owner took the run over: stop writing now."""


def lease_prefix(run_id: str) -> str:
    return f"runs/{run_id}/lease/"


def new_owner(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:12]}"


def holder_description(what: str) -> str:
    return f"{what} pid {os.getpid()} on {socket.gethostname()}"


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True)
class LeaseState:
    """What the bucket says about the lease now."""

    newest: Optional[LeaseRecord]
    last_beat: float            # newest heartbeat of the newest generation's owner
    released: bool              # the newest generation said it is done
    invalid: list[str]          # lease files that did not validate (named, ignored)

    @property
    def next_generation(self) -> int:
        return self.newest.generation + 1 if self.newest else 0

    def stale_after_s(self) -> float:
        hb = self.newest.heartbeat_s if self.newest else 60.0
        return max(MIN_STALE_S, STALE_INTERVALS * hb)

    def is_stale(self, now: float) -> bool:
        return now - self.last_beat > self.stale_after_s()

    def free_for(self, owner: str, now: float, take_over: bool) -> bool:
        n = self.newest
        return (n is None or self.released or n.owner == owner
                or (take_over and self.is_stale(now)))

    def refusal(self, now: float, flag: str = "--take-over") -> str:
        n = self.newest
        assert n is not None
        age = now - self.last_beat
        head = (f"run is held by {n.holder} (lease generation {n.generation}, owner {n.owner}) "
                f"since {_iso(n.since)}; its last heartbeat was {age:.0f}s ago")
        if self.is_stale(now):
            return (f"{head}, older than {self.stale_after_s():.0f}s: if that writer is gone, "
                    f"relaunch with {flag} to take the run over")
        return (f"{head}: another launch or trainer is writing this run. Wait for it to end "
                f"(or cancel it); once its heartbeat is {self.stale_after_s():.0f}s old, "
                f"{flag} takes the run over")


def read_state(bucket: Bucket, run_id: str) -> LeaseState:
    """The newest valid generation, its owner's last heartbeat, and whether it released."""
    prefix = lease_prefix(run_id)
    records: dict[int, LeaseRecord] = {}
    beats: dict[int, dict] = {}
    invalid: list[str] = []
    for info in bucket.list(prefix):
        name = info.key[len(prefix):]
        stem, _, ext = name.partition(".")
        if not stem.isdigit() or ext not in ("json", "beat"):
            continue
        try:
            data = bucket.get_bytes(info.key)
        except NotFoundError:
            continue
        if ext == "json":
            try:
                rec = parse(LeaseRecord, data, bucket.child_uri(info.key))
            except InvalidRecord as e:
                invalid.append(str(e))
                continue
            if rec.generation == int(stem):
                records[rec.generation] = rec
            else:
                invalid.append(f"{bucket.child_uri(info.key)}: names generation {rec.generation}")
        else:
            try:
                beat = json.loads(data)
                if isinstance(beat, dict) and isinstance(beat.get("time"), (int, float)):
                    beats[int(stem)] = beat
            except ValueError:
                invalid.append(f"{bucket.child_uri(info.key)}: not JSON")
    if not records:
        return LeaseState(None, 0.0, False, invalid)
    newest = records[max(records)]
    times = [r.since for r in records.values() if r.owner == newest.owner]
    times += [float(b["time"]) for g, b in beats.items()
              if g in records and records[g].owner == newest.owner]
    released = bool(beats.get(newest.generation, {}).get("released"))
    return LeaseState(newest, max(times), released, invalid)


def acquire(bucket: Bucket, run_id: str, *, owner: str, holder: str, heartbeat_s: float,
            take_over: bool = False, flag: str = "--take-over",
            clock: Callable[[], float] = time.time) -> LeaseRecord:
    """Take the next generation if the run is free for ``owner``; LeaseHeld otherwise."""
    for _ in range(5):
        state = read_state(bucket, run_id)
        now = clock()
        if not state.free_for(owner, now, take_over):
            raise LeaseHeld(state.refusal(now, flag))
        rec = LeaseRecord(generation=state.next_generation, owner=owner, holder=holder,
                          since=now, heartbeat_s=heartbeat_s)
        key = f"{lease_prefix(run_id)}{rec.generation:08d}.json"
        try:
            bucket.put_bytes(key, rec.model_dump_json().encode(), if_absent=True)
        except AlreadyExistsError:
            continue  # someone took this generation first: look again
        _beat(bucket, run_id, rec.generation, now, released=False)
        if state.newest is not None and state.newest.owner != owner:
            log.warning("took the run over from %s (generation %d)", state.newest.holder,
                        state.newest.generation)
        return rec
    raise LeaseHeld(f"run {run_id}: lost the race for the lease 5 times; try again")


def _beat(bucket: Bucket, run_id: str, generation: int, now: float, *, released: bool) -> None:
    bucket.put_bytes(f"{lease_prefix(run_id)}{generation:08d}.beat",
                     json.dumps({"time": now, "released": released}).encode())


def owner_from_env(env=os.environ) -> str:
    """The job this process belongs to: the launcher's token, or the SkyPilot managed job
    (SKYPILOT_TASK_ID stays the same across its recoveries), else this process alone."""
    if env.get(OWNER_ENV):
        return env[OWNER_ENV]
    if env.get("SKYPILOT_TASK_ID"):
        return f"skypilot:{env['SKYPILOT_TASK_ID']}"[:200]
    return new_owner("manual")


def release_owner(bucket: Bucket, run_id: str, owner: str,
                  clock: Callable[[], float] = time.time) -> None:
    """Mark the newest generation released if it is ``owner``'s (a launcher whose every
    process is gone: its last trainer may have died without releasing)."""
    state = read_state(bucket, run_id)
    if state.newest is not None and state.newest.owner == owner:
        _beat(bucket, run_id, state.newest.generation, clock(), released=True)


class LeaseKeeper:
    """Holds one generation: renews it every heartbeat from a thread, notices a takeover.

    ``check()`` raises LeaseLost once another owner's generation is newer than ours (call
    it before any write that must not happen twice, e.g. COMMIT.json); ``lost`` says so
    without raising, for a loop that polls."""

    def __init__(self, bucket: Bucket, run_id: str, record: LeaseRecord,
                 clock: Callable[[], float] = time.time):
        self.bucket, self.run_id, self.record, self.clock = bucket, run_id, record, clock
        self.lost: Optional[str] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @property
    def generation(self) -> int:
        return self.record.generation

    def start(self) -> "LeaseKeeper":
        self._thread = threading.Thread(target=self._run, name="lease", daemon=True)
        self._thread.start()
        return self

    def check(self) -> None:
        """Raise LeaseLost if a newer generation of another owner exists (reads the bucket)."""
        state = read_state(self.bucket, self.run_id)
        n = state.newest
        if n is not None and n.generation > self.generation and n.owner != self.record.owner:
            self.lost = f"taken over by {n.holder} (generation {n.generation})"
        if self.lost:
            raise LeaseLost(f"run {self.run_id}: this writer's lease (generation "
                            f"{self.generation}) was {self.lost}; stopping")

    def renew(self) -> None:
        self.check()
        _beat(self.bucket, self.run_id, self.generation, self.clock(), released=False)

    def _run(self) -> None:
        while not self._stop.wait(self.record.heartbeat_s):
            try:
                self.renew()
            except LeaseLost as e:
                log.error("%s", e)
                return
            except Exception as e:  # noqa: BLE001 - a storage blip: try at the next beat
                log.warning("lease renewal failed: %s", str(e).splitlines()[0])

    def close(self, *, release: bool) -> None:
        """Stop renewing; with ``release`` say the run is free (a finished job)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if release and not self.lost:
            try:
                _beat(self.bucket, self.run_id, self.generation, self.clock(), released=True)
            except Exception as e:  # noqa: BLE001 - then it goes stale by itself
                log.warning("lease release failed: %s", str(e).splitlines()[0])
