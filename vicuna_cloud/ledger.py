"""The run ledger: one JSON segment per attempt (one VM's life), heartbeated to the bucket.

Why a ledger of our own: SkyPilot has no per-job cost for managed jobs and prices only at
today's catalog. A segment records the price in force when it started and how long the
VM was billed, so `vicuna-cloud cost` can add up real spend after any number of
preemptions, and the trainer can stop before a budget is passed.

Layout: ``runs/<run_id>/ledger/<segment_id>.json``; segment ids sort by start time.

Billing model (documented assumptions):
- Billing of a cloud VM starts at its boot, before our process exists. The writer reads
  the boot time from the OS (``/proc/uptime``: boot = now - uptime). On Kubernetes this is
  the node's boot, not the pod's start: an over-estimate, never an under-estimate.
- Billing ends at the segment's end, or, when the process died without one (a spot VM
  reclaimed, a SIGKILL), at its last heartbeat: the reader reports that segment as
  ended by ``preempted/unknown``. Spend after the last heartbeat (at most one heartbeat
  interval, plus the cloud's shutdown) is not seen.
- A multi-node run's nodes are billed alike; rank 0 writes the ledger for all of them.
- Local runs (``resources.cloud == "local"``) are billed from process start at
  ``budget.local_price_per_hour``: a laptop has no boot-time bill.

Torch-free: the trainer imports it on rank 0; the CLI reads it.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping, Optional

from vicuna_cloud import bucket_keys
from vicuna_cloud.runspec import RunSpec
from vicuna_cloud.storage import Bucket, StorageError

log = logging.getLogger(__name__)

SEGMENT_SCHEMA = 1
END_REASONS = ("completed", "preempted", "failed", "budget", "cancelled")
UNKNOWN_END = "preempted/unknown"
LOCAL_PRICE_SOURCE = "local (--price-per-hour)"
CLUSTER_INFO_ENV = "SKYPILOT_CLUSTER_INFO"
INSTANCE_TYPE_ENV = "VICUNA_INSTANCE_TYPE"  # optional override set by the task


ledger_prefix = bucket_keys.ledger_prefix


@dataclass
class Segment:
    """One attempt. Times are Unix seconds (UTC); prices are $/hour for one node."""

    segment_id: str
    run_id: str
    cloud: str
    accelerators: str
    nodes: int
    use_spot: bool
    price_source: str
    price_per_hour: Optional[float] = None
    region: Optional[str] = None
    zone: Optional[str] = None
    cluster_name: Optional[str] = None
    instance_type: Optional[str] = None
    price_flags: list = field(default_factory=list)
    vm_boot_time: float = 0.0
    start_time: float = 0.0
    first_step_time: Optional[float] = None   # first update(): setup = boot -> this
    last_heartbeat: float = 0.0
    end_time: Optional[float] = None
    end_reason: Optional[str] = None
    first_step: int = 0                       # optimizer steps already done at start
    last_step: int = 0                        # optimizer steps done at last record
    tokens: int = 0                           # tokens trained in this segment
    last_checkpoint_step: Optional[int] = None
    total_steps: Optional[int] = None
    checkpoint_seconds: float = 0.0           # training stalled on checkpoint saves
    checkpoints: int = 0
    host: Optional[str] = None
    pid: Optional[int] = None
    schema: int = SEGMENT_SCHEMA

    # --- derived -------------------------------------------------------------------
    @property
    def ended(self) -> bool:
        return self.end_time is not None

    @property
    def ended_at(self) -> float:
        """End of billing as far as we know: the end, else the last heartbeat."""
        return self.end_time if self.end_time is not None else self.last_heartbeat

    @property
    def reason(self) -> str:
        return self.end_reason if self.end_reason else UNKNOWN_END

    def billed_seconds(self, now: Optional[float] = None) -> float:
        end = self.ended_at if now is None else max(now, self.ended_at)
        return max(0.0, end - self.vm_boot_time)

    def cost_usd(self, now: Optional[float] = None) -> Optional[float]:
        if self.price_per_hour is None:
            return None
        return self.billed_seconds(now) / 3600.0 * self.price_per_hour * self.nodes

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping) -> "Segment":
        known = {f for f in cls.__dataclass_fields__}
        missing = [k for k in ("segment_id", "run_id", "cloud", "accelerators", "nodes",
                               "use_spot", "price_source") if k not in d]
        if missing:
            raise ValueError(f"segment lacks {', '.join(missing)}")
        seg = cls(**{k: v for k, v in d.items() if k in known})
        if seg.end_reason is not None and seg.end_reason not in END_REASONS:
            raise ValueError(f"unknown end reason {seg.end_reason!r}")
        return seg


@dataclass
class Ledger:
    run_id: str
    segments: list[Segment]
    problems: list[str]  # unreadable segment files, said once each


def read_ledger(bucket: Bucket, run_id: str) -> Ledger:
    """All segments of a run, oldest first. A corrupt file is skipped and named."""
    segments, problems = [], []
    for info in bucket.list(ledger_prefix(run_id)):
        if not info.key.endswith(".json"):
            continue
        try:
            seg = Segment.from_dict(json.loads(bucket.get_bytes(info.key)))
        except (ValueError, TypeError, StorageError) as e:
            problems.append(f"{bucket.child_uri(info.key)}: unreadable segment ({e})")
            continue
        segments.append(seg)
    segments.sort(key=lambda s: s.segment_id)
    return Ledger(run_id, segments, problems)


def read_boot_time(now: float, uptime_path: str = "/proc/uptime") -> Optional[float]:
    """VM boot time = now - seconds since boot (Linux). None where /proc is absent."""
    try:
        with open(uptime_path) as f:
            return now - float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def parse_cluster_info(env: Mapping[str, str]) -> dict:
    """SkyPilot 0.14's SKYPILOT_CLUSTER_INFO: JSON with cluster_name, cloud, region, zone."""
    raw = env.get(CLUSTER_INFO_ENV)
    if not raw:
        return {}
    try:
        info = json.loads(raw)
    except ValueError:
        return {}
    if not isinstance(info, dict):
        return {}
    out = {k: info.get(k) for k in ("cluster_name", "cloud", "region", "zone")}
    if out.get("cloud"):
        out["cloud"] = str(out["cloud"]).lower()
    return out


def new_segment_id(now: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)) + f"-{secrets.token_hex(3)}"


def _default_pricer(cloud, region, zone, accelerators, instance_type):
    from vicuna_cloud import pricing

    return pricing.price_at(cloud, region, zone, accelerators, instance_type)


class LedgerRecorder:
    """Writes this attempt's segment; answers "will the next interval pass the budget?".

    Cheap to call every step. Heartbeats go out from a background thread (or inline with
    ``background=False``, which tests use with a simulated clock); a failed write is
    logged and retried on the next beat, never raised into training.
    """

    def __init__(self, bucket: Bucket, spec: RunSpec, *, clock: Callable[[], float] = time.time,
                 env: Mapping[str, str] = os.environ, background: bool = True,
                 boot_time: Optional[float] = None, pricer=_default_pricer,
                 price_timeout: float = 30.0, write_attempts: int = 3,
                 retry_wait: float = 0.5, stop_timeout: float = 5.0):
        self.bucket = bucket
        self.spec = spec
        self.clock = clock
        self.env = env
        self.background = background
        self._boot_time = boot_time
        self._pricer = pricer
        self._price_timeout = price_timeout
        self._attempts = max(1, write_attempts)
        self._retry_wait = retry_wait
        self._stop_timeout = stop_timeout
        self.segment: Optional[Segment] = None
        self.prior: list[Segment] = []
        self._lock = threading.Lock()
        # One segment write at a time, so a slow heartbeat can never land after the end.
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._last_write = 0.0
        self._price_thread: Optional[threading.Thread] = None
        self.write_failures = 0

    # --- public interface ------------------------------------------------------------
    @property
    def key(self) -> str:
        assert self.segment is not None, "begin() first"
        return bucket_keys.ledger_segment(self.spec.run_id, self.segment.segment_id)

    def begin(self, first_step: int, total_steps: Optional[int] = None) -> None:
        now = self.clock()
        try:
            self.prior = read_ledger(self.bucket, self.spec.run_id).segments
        except StorageError as e:
            log.warning("ledger: cannot read earlier segments (%s); budget counts this one only", e)
            self.prior = []
        res = self.spec.resources
        local = res.cloud == "local"
        info = {} if local else parse_cluster_info(self.env)
        boot = self._boot_time
        if local:
            boot = now
        elif boot is None:
            boot = read_boot_time(now)
            if boot is None or boot > now:
                boot = now
        seg = Segment(
            segment_id=new_segment_id(now), run_id=self.spec.run_id,
            cloud="local" if local else (info.get("cloud") or res.cloud),
            region="local" if local else info.get("region"),
            zone=None if local else info.get("zone"),
            cluster_name=info.get("cluster_name"),
            instance_type="local" if local else self.env.get(INSTANCE_TYPE_ENV),
            accelerators=res.accelerators, nodes=res.nodes, use_spot=res.use_spot,
            price_per_hour=self.spec.budget.local_price_per_hour if local else None,
            price_source=LOCAL_PRICE_SOURCE if local else "pending",
            vm_boot_time=boot, start_time=now, last_heartbeat=now,
            first_step=int(first_step), last_step=int(first_step),
            last_checkpoint_step=int(first_step) if first_step else None,
            total_steps=total_steps, host=os.uname().nodename, pid=os.getpid(),
        )
        self.segment = seg
        if not local:
            self._start_pricing()
        self._write(final=False)
        if self.background:
            self._thread = threading.Thread(target=self._beat, name="ledger-heartbeat",
                                            daemon=True)
            self._thread.start()

    def update(self, *, step: int, tokens: int, last_checkpoint_step: Optional[int]) -> None:
        """Record progress; ``tokens`` counts tokens trained in this segment so far."""
        seg = self.segment
        if seg is None:
            return
        now = self.clock()
        with self._lock:
            if seg.first_step_time is None:
                seg.first_step_time = now
            seg.last_step = int(step)
            seg.tokens = int(tokens)
            if last_checkpoint_step is not None:
                seg.last_checkpoint_step = int(last_checkpoint_step)
        if now - self._last_write >= self.spec.budget.heartbeat_seconds:
            if self.background:
                self._wake.set()
            else:
                self._write(final=False)

    def note_checkpoint(self, seconds: float, step: Optional[int] = None) -> None:
        """Optional: training stalled ``seconds`` saving a checkpoint (shown as overhead)."""
        seg = self.segment
        if seg is None:
            return
        with self._lock:
            seg.checkpoint_seconds += max(0.0, float(seconds))
            seg.checkpoints += 1
            if step is not None:
                seg.last_checkpoint_step = int(step)

    def spent_usd(self, at: Optional[float] = None) -> Optional[float]:
        """Spend of earlier segments plus this one billed until ``at`` (default now)."""
        seg = self.segment
        if seg is None or seg.price_per_hour is None:
            return None
        at = self.clock() if at is None else at
        prior = sum(c for s in self.prior if (c := s.cost_usd()) is not None)
        return prior + max(0.0, at - seg.vm_boot_time) / 3600.0 * seg.price_per_hour * seg.nodes

    def budget_exhausted(self) -> bool:
        """True when spend by the next heartbeat (plus one checkpoint save) passes the cap.

        The trainer checks it every step; stopping as soon as it turns True keeps the
        overrun under one heartbeat interval of spend.
        """
        cap = self.spec.budget.max_cost_usd
        if cap is None or self.segment is None:
            return False
        seg = self.segment
        save = seg.checkpoint_seconds / seg.checkpoints if seg.checkpoints else 0.0
        horizon = self.clock() + self.spec.budget.heartbeat_seconds + save
        spent = self.spent_usd(horizon)
        if spent is None:  # price not known (yet): cannot tell; say so once
            if not getattr(self, "_warned_price", False):
                log.warning("ledger: no price for this node yet; budget cap not enforced")
                self._warned_price = True
            return False
        return spent >= cap

    def end(self, reason: str, *, step: int, tokens: int,
            last_checkpoint_step: Optional[int]) -> None:
        if reason not in END_REASONS:
            raise ValueError(f"end reason {reason!r} is not one of {', '.join(END_REASONS)}")
        seg = self.segment
        if seg is None:
            return
        self._stop.set()
        self._wake.set()
        if self._thread is not None:  # bounded: a GCP preemption notice is only 30 s
            self._thread.join(timeout=self._stop_timeout)
        if self._price_thread is not None:
            self._price_thread.join(timeout=1)
        with self._lock:
            seg.last_step = int(step)
            seg.tokens = int(tokens)
            if last_checkpoint_step is not None:
                seg.last_checkpoint_step = int(last_checkpoint_step)
            seg.end_time = self.clock()
            seg.end_reason = reason
        self._write(final=True)

    # --- internals -------------------------------------------------------------------
    def _start_pricing(self) -> None:
        seg = self.segment

        def work():
            try:
                p = self._pricer(seg.cloud, seg.region, seg.zone, seg.accelerators,
                                 seg.instance_type)
                with self._lock:
                    seg.price_per_hour = p.price(seg.use_spot)
                    seg.price_source = p.source
                    seg.price_flags = list(p.flags)
                    seg.instance_type = seg.instance_type or p.instance_type
            except Exception as e:  # never fatal: the report re-prices from the catalog
                with self._lock:
                    seg.price_source = f"unavailable: {str(e).splitlines()[0][:200]}"

        self._price_thread = threading.Thread(target=work, name="ledger-price", daemon=True)
        self._price_thread.start()
        self._price_thread.join(timeout=self._price_timeout)

    def _beat(self) -> None:
        hb = self.spec.budget.heartbeat_seconds
        while not self._stop.is_set():
            self._wake.wait(timeout=hb)
            self._wake.clear()
            if self._stop.is_set():
                return
            self._write(final=False)

    def _write(self, *, final: bool) -> bool:
        with self._write_lock:
            return self._write_locked(final)

    def _write_locked(self, final: bool) -> bool:
        seg = self.segment
        with self._lock:
            if not final and seg.end_time is not None:
                return True  # the end is (being) written: a heartbeat would undo it
            if not final:
                seg.last_heartbeat = max(seg.last_heartbeat, self.clock())
            else:
                seg.last_heartbeat = max(seg.last_heartbeat, seg.end_time or 0.0)
            blob = seg.to_json().encode()
        attempts = self._attempts
        for i in range(attempts):
            try:
                self.bucket.put_bytes(self.key, blob)
                self._last_write = self.clock()
                return True
            except Exception as e:  # any storage fault: retry, then give up quietly
                self.write_failures += 1
                log.warning("ledger: write %s failed (%s), attempt %d/%d",
                            self.key, e, i + 1, attempts)
                if i + 1 < attempts:
                    time.sleep(self._retry_wait * (2 ** i))
        self._last_write = self.clock()  # next try at the next beat, not every step
        return False


class NullLedger:
    """What ranks other than 0 record to: LedgerRecorder's calls, doing nothing (rank 0
    writes the ledger for the whole job), so the trainer has no branch per call."""

    def update(self, *, step: int, tokens: int, last_checkpoint_step: Optional[int]) -> None:
        pass

    def note_checkpoint(self, seconds: float, step: Optional[int] = None) -> None:
        pass

    def budget_exhausted(self) -> bool:
        return False

    def end(self, reason: str, *, step: int, tokens: int,
            last_checkpoint_step: Optional[int]) -> None:
        pass
