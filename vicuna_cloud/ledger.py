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
- On a cloud VM the segment is opened by the task's ``setup`` (vicuna_cloud.nodeside),
  before anything is installed; the trainer adopts it (``$VICUNA_NODE_STATE``) and ends it.
- Every line is in the segment: node (price or its fail-closed fallback), disk (type,
  size, IOPS, $/hour), data transfer (bytes up/down and the bucket's cloud/region); the
  arithmetic is vicuna_cloud.billing's, shared with the node-side check and the report.

Torch-free: the trainer imports it on rank 0; the CLI reads it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping, Optional

from vicuna_cloud import bucket_keys
from vicuna_cloud import billing
from vicuna_cloud.nodeside import (  # noqa: F401 - re-exported: one parser, both sides
    CLUSTER_INFO_ENV, aws_zone_id, new_segment_id, parse_cluster_info, read_boot_time,
    state_path,
)
from vicuna_cloud.runspec import RunSpec
from vicuna_cloud.storage import Bucket, StorageError
from vicuna_cloud.storage.base import TRANSFERS

log = logging.getLogger(__name__)

SEGMENT_SCHEMA = 1
END_REASONS = ("completed", "preempted", "failed", "budget", "cancelled")
UNKNOWN_END = "preempted/unknown"
LOCAL_PRICE_SOURCE = "local (--price-per-hour)"
#: A budget stop exports the model too: bf16 weights are 2 of the checkpoint's 12 bytes
#: per parameter, so the export costs about this fraction of one checkpoint's commit.
EXPORT_FRACTION = 2.0 / 12.0
#: ... plus its fixed part (config, tokenizer, the small files' round trips).
EXPORT_MIN_S = 10.0
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
    attempt: Optional[int] = None             # 0-based, as the trainer's log numbers it
    opened_by: str = "trainer"                # "setup": the task opened it at VM start
    trainer_start_time: Optional[float] = None
    zone_id: Optional[str] = None             # AWS zone id from the instance metadata
    price_fallback_per_hour: Optional[float] = None   # charged while price_per_hour is None
    price_fallback_source: str = ""
    disk_type: Optional[str] = None
    disk_size_gb: Optional[float] = None
    disk_iops: Optional[int] = None
    disk_price_per_hour: float = 0.0          # one node's disk
    disk_source: str = ""
    bucket_cloud: Optional[str] = None
    bucket_region: Optional[str] = None
    bytes_up: int = 0                         # node -> bucket, all ranks and nodes
    bytes_down: int = 0                       # bucket -> node, all ranks and nodes
    bytes_copied: int = 0                     # the dataset COPY SkyPilot made before setup
    budget_note: Optional[str] = None
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

    def lines(self, now: Optional[float] = None, *, apply_first_hour: bool = True) -> dict:
        """Node, disk and egress dollars (vicuna_cloud.billing.segment_lines)."""
        return billing.segment_lines(asdict(self), end=now, apply_first_hour=apply_first_hour)

    def cost_usd(self, now: Optional[float] = None) -> Optional[float]:
        """Every line of this segment; None only without a price and a fallback."""
        return billing.segment_total(asdict(self), end=now)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping) -> "Segment":
        """Validate an untrusted segment (types included, by pydantic): ValueError if bad."""
        if not isinstance(d, Mapping):
            raise ValueError(f"segment is a JSON {type(d).__name__}, not an object")
        known = {f for f in cls.__dataclass_fields__}
        missing = [k for k in ("segment_id", "run_id", "cloud", "accelerators", "nodes",
                               "use_spot", "price_source") if k not in d]
        if missing:
            raise ValueError(f"segment lacks {', '.join(missing)}")
        from pydantic import TypeAdapter, ValidationError

        try:
            seg = TypeAdapter(cls).validate_python({k: v for k, v in d.items() if k in known})
        except ValidationError as e:
            first = e.errors()[0]
            raise ValueError(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
        if seg.end_reason is not None and seg.end_reason not in END_REASONS:
            raise ValueError(f"unknown end reason {seg.end_reason!r}")
        if seg.nodes < 1 or (seg.price_per_hour is not None and seg.price_per_hour < 0):
            raise ValueError("nodes must be >= 1 and price_per_hour >= 0")
        return seg


@dataclass
class Ledger:
    run_id: str
    segments: list[Segment]
    problems: list[str]  # unreadable segment files, said once each


class LedgerUnreadable(ValueError):
    """Segment files exist but none validates: not 'no ledger yet'."""


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


def _attempt(env: Mapping[str, str], default: int) -> int:
    """The attempt number the supervisor's log uses (VICUNA_ATTEMPT), else the count of
    earlier segments (on a cloud VM the task's setup opened the segment and numbered it)."""
    try:
        return int(env.get("VICUNA_ATTEMPT", default))
    except ValueError:
        return default


def _default_pricer(cloud, region, zone, accelerators, instance_type):
    from vicuna_cloud import pricing

    return pricing.price_at(cloud, region, zone, accelerators, instance_type)


def _spec_pricer(spec: RunSpec):
    """Prices from run.json's launch-time table first (a node has no skypilot, hence no
    catalog), then SkyPilot's catalog where it is installed (the laptop, tests)."""
    def price(cloud, region, zone, accelerators, instance_type):
        from vicuna_cloud import pricing

        if spec.budget.node_prices:
            try:
                return pricing.price_from_table(spec.budget.node_prices, cloud, region, zone,
                                                accelerators, instance_type)
            except pricing.PricingError:
                pass
        return _default_pricer(cloud, region, zone, accelerators, instance_type)
    return price


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
        self._pricer = _spec_pricer(spec) if pricer is _default_pricer else pricer
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
        self._bytes0 = (0, 0)
        self._stop_reserve_s = 0.0
        self._written_step: Optional[int] = None
        self._last_step_t: Optional[float] = None
        self._step_s = 0.0
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
        seg = None if local else self._adopt()
        if seg is None:
            seg = self._new_segment(now, local)
        else:
            self.prior = [s for s in self.prior if s.segment_id != seg.segment_id]
        seg.trainer_start_time = now
        seg.last_heartbeat = max(seg.last_heartbeat, now)
        seg.first_step, seg.last_step = int(first_step), int(first_step)
        seg.last_checkpoint_step = int(first_step) if first_step else None
        seg.total_steps = total_steps
        seg.host, seg.pid = os.uname().nodename, os.getpid()
        self._bytes0 = TRANSFERS.snapshot()
        self.segment = seg
        if not local:
            self._start_pricing()
        self._write(final=False)
        if self.background:
            self._thread = threading.Thread(target=self._beat, name="ledger-heartbeat",
                                            daemon=True)
            self._thread.start()

    def _new_segment(self, now: float, local: bool) -> Segment:
        """A segment the trainer opens itself (local runs, or setup could not open one)."""
        res, b = self.spec.resources, self.spec.billing
        info = {} if local else parse_cluster_info(self.env)
        boot = self._boot_time
        if local:
            boot = now
        elif boot is None:
            boot = read_boot_time(now)
            if boot is None or boot > now:
                boot = now
        cloud = "local" if local else (info.get("cloud") or res.cloud)
        disk = b.disks.get(cloud)
        return Segment(
            segment_id=new_segment_id(now), run_id=self.spec.run_id, cloud=cloud,
            region="local" if local else info.get("region"),
            zone=None if local else info.get("zone"),
            zone_id=aws_zone_id(self.env) if cloud == "aws" else None,
            cluster_name=info.get("cluster_name"),
            instance_type="local" if local else self.env.get(INSTANCE_TYPE_ENV),
            accelerators=res.accelerators, nodes=res.nodes, use_spot=res.use_spot,
            price_per_hour=self.spec.budget.local_price_per_hour if local else None,
            price_source=LOCAL_PRICE_SOURCE if local else "pending",
            price_fallback_per_hour=None if local else b.fallback_price_per_hour,
            price_fallback_source=b.fallback_price_source,
            disk_type=disk.disk_type if disk else None,
            disk_size_gb=b.disk_size_gb if disk else None,
            disk_iops=disk.iops if disk else None,
            disk_price_per_hour=disk.price_per_hour if disk else 0.0,
            disk_source=disk.source if disk else "",
            bucket_cloud=None if local else b.bucket_cloud,
            bucket_region=None if local else b.bucket_region,
            vm_boot_time=boot, start_time=now, last_heartbeat=now,
            attempt=_attempt(self.env, len(self.prior)),
        )

    def _adopt(self) -> Optional[Segment]:
        """The segment this VM's setup opened (nodeside), if it is ours and still open.

        Stops setup's heartbeat first (owner -> trainer, SIGTERM, wait) so its writes can
        never land after ours."""
        path = state_path(self.env)
        try:
            with open(path, encoding="utf-8") as f:
                st = json.load(f)
            if st.get("run_id") != self.spec.run_id:
                return None
            raw = self.bucket.get_bytes(f"{ledger_prefix(self.spec.run_id)}{st['segment_id']}.json")
            seg = Segment.from_dict(json.loads(raw))
        except (OSError, ValueError, KeyError, TypeError, StorageError):
            return None
        if seg.ended:
            return None
        st["owner"] = "trainer"
        try:
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                json.dump(st, f)
            os.replace(path + ".tmp", path)
        except OSError:
            pass
        pid = st.get("beat_pid")
        if isinstance(pid, int) and pid > 0:
            try:
                os.kill(pid, signal.SIGTERM)
                for _ in range(30):
                    os.kill(pid, 0)
                    time.sleep(0.1)
            except OSError:
                pass  # gone (or never ours): nothing more can write the segment
        return seg

    def update(self, *, step: int, tokens: int, last_checkpoint_step: Optional[int],
               bytes_moved: Optional[tuple[int, int]] = None) -> None:
        """Record progress; ``tokens`` counts tokens trained in this segment so far;
        ``bytes_moved`` = (up, down) bytes of all ranks since the process started (else
        this process's own count, vicuna_cloud.storage.base.TRANSFERS)."""
        seg = self.segment
        if seg is None:
            return
        now = self.clock()
        with self._lock:
            if seg.first_step_time is None:
                seg.first_step_time = now
            if int(step) != seg.last_step:  # the next check comes one step from now
                if self._last_step_t is not None:
                    self._step_s = now - self._last_step_t
                self._last_step_t = now
            seg.last_step = int(step)
            seg.tokens = int(tokens)
            if last_checkpoint_step is not None:
                seg.last_checkpoint_step = int(last_checkpoint_step)
            self._set_bytes(bytes_moved)
        # Each new step goes out at once (a small object), so a VM that dies between
        # heartbeats still has its last step on record: the report's steps and lost
        # steps then agree with the trainer's log.
        if seg.last_step != self._written_step or \
                now - self._last_write >= self.spec.budget.heartbeat_seconds:
            if self.background:
                self._wake.set()
            else:
                self._write(final=False)

    def _set_bytes(self, bytes_moved: Optional[tuple[int, int]]) -> None:
        seg = self.segment
        if bytes_moved is None:
            up, down = TRANSFERS.snapshot()
            up, down = up - self._bytes0[0], down - self._bytes0[1]
        else:
            up, down = bytes_moved
        seg.bytes_up = max(seg.bytes_up, int(up))
        seg.bytes_down = max(seg.bytes_down, int(down))

    def set_stop_reserve(self, seconds: float) -> None:
        """Seconds a final save takes until committed (the checkpoint manager's measured
        or estimated commit time): the budget look-ahead keeps room for it and the export."""
        self._stop_reserve_s = max(0.0, float(seconds))

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

    def _horizon_dicts(self, extra_up: float = 0.0) -> list[dict]:
        with self._lock:
            cur = asdict(self.segment)
        cur["bytes_up"] = cur["bytes_up"] + extra_up
        return [asdict(s) for s in self.prior] + [cur]

    def spent_usd(self, at: Optional[float] = None, *, extra_up: float = 0.0) -> Optional[float]:
        """Spend of earlier segments plus this one until ``at`` (default now), every line
        (node, disk, egress, controller since launch), unpriced ones at their fallback."""
        seg = self.segment
        if seg is None:
            return None
        at = self.clock() if at is None else at
        b = self.spec.billing
        spent, _ = billing.spend_for_budget(self._horizon_dicts(extra_up), at=at,
                                            current_id=seg.segment_id,
                                            billing=b.model_dump(), launched_at=b.launched_at)
        return spent

    def budget_exhausted(self) -> bool:
        """True when the spend by the end of a stop begun at the next check would pass
        the cap: one heartbeat or one step (the longer), one checkpoint stall, then the
        final save, its upload (and its bytes) and the export. Fails closed: no price at
        all -> True.

        The trainer checks it before its first step and after every step.
        """
        cap = self.spec.budget.max_cost_usd
        if cap is None or self.segment is None:
            return False
        seg = self.segment
        stall = seg.checkpoint_seconds / seg.checkpoints if seg.checkpoints else 0.0
        reserve = self._stop_reserve_s * (1.0 + EXPORT_FRACTION) + EXPORT_MIN_S
        ahead = max(self.spec.budget.heartbeat_seconds, self._step_s)  # to the next check
        horizon = self.clock() + ahead + stall + reserve
        ckpt_bytes = seg.bytes_up / seg.checkpoints if seg.checkpoints else 0.0
        spent = self.spent_usd(horizon, extra_up=ckpt_bytes * (1.0 + EXPORT_FRACTION))
        if spent is None:
            if not getattr(self, "_warned_price", False):
                log.error("ledger: no price and no fallback price for a segment; stopping "
                          "for the budget (fail closed)")
                self._warned_price = True
            seg.budget_note = "no price and no fallback: stopped (fail closed)"
            return True
        if spent >= cap:
            seg.budget_note = (f"${spent:,.2f} by the end of a stop (save + upload + export) "
                               f"would reach the ${cap:,.2f} cap")
            return True
        return False

    def end(self, reason: str, *, step: int, tokens: int,
            last_checkpoint_step: Optional[int],
            bytes_moved: Optional[tuple[int, int]] = None) -> None:
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
            self._set_bytes(bytes_moved)
        self._write(final=True)

    # --- internals -------------------------------------------------------------------
    def _start_pricing(self) -> None:
        seg = self.segment

        def work():
            try:
                p = self._pricer(seg.cloud, seg.region, seg.zone_id or seg.zone,
                                 seg.accelerators, seg.instance_type)
                with self._lock:
                    seg.price_per_hour = p.price(seg.use_spot)
                    seg.price_source = p.source
                    seg.price_flags = list(p.flags)
                    seg.instance_type = seg.instance_type or p.instance_type
            except Exception as e:  # never fatal: the fallback price counts meanwhile
                with self._lock:
                    seg.price_source = f"unavailable: {str(e).splitlines()[0][:200]}"
                    if seg.price_fallback_per_hour is None:
                        self._fallback_from_catalog(seg)

        self._price_thread = threading.Thread(target=work, name="ledger-price", daemon=True)
        self._price_thread.start()
        self._price_thread.join(timeout=self._price_timeout)

    def _fallback_from_catalog(self, seg: Segment) -> None:
        """No fallback in run.json (an old spec): the highest catalog price, if any."""
        try:
            from vicuna_cloud import pricing

            p = pricing.highest_price(seg.accelerators, seg.cloud, seg.use_spot)
            seg.price_fallback_per_hour = p.price(seg.use_spot)
            seg.price_fallback_source = f"highest catalog price: {p.source}"
        except Exception as e:  # noqa: BLE001 - then the cap stops the run (fail closed)
            log.error("ledger: no fallback price either (%s)", str(e).splitlines()[0][:200])

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
            step = seg.last_step
        attempts = self._attempts
        for i in range(attempts):
            try:
                self.bucket.put_bytes(self.key, blob)
                self._last_write = self.clock()
                self._written_step = step
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

    def update(self, *, step: int, tokens: int, last_checkpoint_step: Optional[int],
               bytes_moved: Optional[tuple[int, int]] = None) -> None:
        pass

    def note_checkpoint(self, seconds: float, step: Optional[int] = None) -> None:
        pass

    def set_stop_reserve(self, seconds: float) -> None:
        pass

    def budget_exhausted(self) -> bool:
        return False

    def end(self, reason: str, *, step: int, tokens: int,
            last_checkpoint_step: Optional[int],
            bytes_moved: Optional[tuple[int, int]] = None) -> None:
        pass
