"""Sharded checkpoints off the training path, atomic commit, resume with fallback.

Layout in the bucket (see checkpoints/README.md)::

    runs/<run_id>/checkpoints/step-<N:08d>/.metadata            DCP metadata (rank 0)
    runs/<run_id>/checkpoints/step-<N:08d>/__<rank>_0.distcp    DCP shard of each rank
    runs/<run_id>/checkpoints/step-<N:08d>/extra-<rank>.pt      scheduler, RNG, progress
    runs/<run_id>/checkpoints/step-<N:08d>/ranks/<rank>.json    what that rank uploaded
    runs/<run_id>/checkpoints/step-<N:08d>/COMMIT.json          written last, by rank 0

A save stages the state on CPU (the only time the loop is blocked), then a background
thread per rank lets DCP write the shard to local disk, hashes and uploads it, and writes
the rank's marker. Rank 0 waits for every marker, checks every object's size in the
bucket, and only then writes COMMIT.json. No COMMIT = not a checkpoint: such directories
are deleted at the next start. The background threads never use the default process
group (the loop owns it): DCP's planning runs on a gloo group of its own, and the ranks
meet through the bucket.

Test hook (tests only, documented in checkpoints/README.md): VICUNA_TEST_KILL_AT=phase:step
makes rank 0 SIGKILL the whole job (torchrun, every worker) at that exact point; phases:
step (maybe_save entry after that step, i.e. plain training), save (before staging), written (shards on local disk), upload (one file uploaded), commit
(all markers in, COMMIT.json not yet written), committed (after COMMIT.json). The point
is rank 0's: other ranks may have uploaded some of their files before the kill reaches them.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import random
import re
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist
from pydantic import TypeAdapter
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from vicuna_cloud import bucket_keys
from vicuna_cloud.hashing import sha256_file
from vicuna_cloud.records import CommitFile, CommitRecord, InvalidRecord, parse
from vicuna_cloud.runspec import RunSpec
from vicuna_cloud.storage import Bucket, NotFoundError, open_bucket
from train.ckpt_interval import IntervalPolicy
from train.inputs import ConfigError

log = logging.getLogger("train.checkpoint")

COMMIT_NAME = bucket_keys.COMMIT_FILE
ABORT_NAME = "ABORTED.json"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d{8})$")
_MARKER = TypeAdapter(list[CommitFile])  # ranks/<r>.json: what one rank uploaded
# Bytes per second assumed for the very first checkpoint's cost, before one is measured.
ASSUMED_BANDWIDTH = 200e6


@dataclass
class TrainProgress:
    """Everything besides tensors that resume needs."""

    step: int = 0
    epoch: int = 0
    epoch_offset: int = 0
    tokens_trained: int = 0
    train_seconds: float = 0.0


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or no committed checkpoint could be loaded."""


class SpecMismatchError(CheckpointError, ConfigError):
    """The newest checkpoint was written under a different training hash.

    A ConfigError, so `python -m train` exits EXIT_CONFIG: restarting will not help."""


class CorruptCheckpoint(CheckpointError):
    """A committed checkpoint whose files are missing, short or fail their checksum."""


# --- bucket layout (vicuna_cloud.bucket_keys names every key; also used by export) ---
checkpoints_prefix = bucket_keys.checkpoints_prefix
step_prefix = bucket_keys.checkpoint_prefix


def list_checkpoints(bucket: Bucket, run_id: str) -> dict[int, bool]:
    """step -> committed, for every step directory of the run."""
    base = checkpoints_prefix(run_id) + "/"
    out: dict[int, bool] = {}
    for info in bucket.list(base):
        head, _, rest = info.key[len(base):].partition("/")
        m = _STEP_DIR.match(head)
        if not m:
            continue
        step = int(m.group(1))
        out[step] = out.get(step, False) or rest == COMMIT_NAME
    return out


def committed_steps(bucket: Bucket, run_id: str) -> list[int]:
    return sorted(s for s, ok in list_checkpoints(bucket, run_id).items() if ok)


def read_commit(bucket: Bucket, run_id: str, step: int) -> dict:
    """The validated COMMIT.json (records.CommitRecord) as a dict. InvalidRecord if it does
    not validate or names another step/run: then it is no checkpoint (never a crash)."""
    key = f"{step_prefix(run_id, step)}/{COMMIT_NAME}"
    commit = parse(CommitRecord, bucket.get_bytes(key), bucket.child_uri(key))
    if commit.step != step or commit.run_id != run_id:
        raise InvalidRecord(f"{bucket.child_uri(key)}: written for run {commit.run_id!r} step "
                            f"{commit.step}, found under run {run_id!r} step {step}")
    return commit.model_dump()


def delete_checkpoint(bucket: Bucket, run_id: str, step: int) -> None:
    """Uncommit first (COMMIT.json), then delete the rest: never a half-deleted 'checkpoint'."""
    sp = step_prefix(run_id, step)
    bucket.delete(f"{sp}/{COMMIT_NAME}")
    bucket.delete_prefix(sp + "/")


def download_checkpoint(bucket: Bucket, run_id: str, step: int, dest: str,
                        workers: int = 8) -> dict:
    """Download every file COMMIT.json lists into ``dest`` and verify size and sha256.

    COMMIT.json is validated first (plain relative names only, see records.safe_name),
    and each target path is checked to lie inside ``dest``: a crafted name never writes
    outside it. An invalid COMMIT.json is a CorruptCheckpoint (the caller falls back)."""
    try:
        commit = read_commit(bucket, run_id, step)
    except InvalidRecord as e:
        raise CorruptCheckpoint(f"checkpoint step {step}: {e}") from None
    sp = step_prefix(run_id, step)
    os.makedirs(dest, exist_ok=True)
    root = os.path.realpath(dest)

    def fetch(entry: dict) -> Optional[str]:
        path = os.path.join(root, *entry["name"].split("/"))
        if not os.path.realpath(path).startswith(root + os.sep):
            return f"{entry['name']!r} leaves the checkpoint directory"
        try:
            bucket.get_file(f"{sp}/{entry['name']}", path)
        except NotFoundError:
            return f"{entry['name']} is missing"
        size = os.path.getsize(path)
        if size != entry["size"]:
            return f"{entry['name']} has {size} bytes, COMMIT.json says {entry['size']}"
        if sha256_file(path) != entry["sha256"]:
            return f"{entry['name']} fails its sha256 check"
        return None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        problems = [p for p in pool.map(fetch, commit["files"]) if p]
    if problems:
        raise CorruptCheckpoint(f"checkpoint step {step}: " + "; ".join(problems))
    return commit


# --- RNG -------------------------------------------------------------------------------
def capture_rng() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "python": random.getstate(),
        "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:]),
    }


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))


# --- test hook -------------------------------------------------------------------------
def _kill_job() -> None:
    """SIGKILL torchrun and all its workers at once (a VM vanishing, as seen by the job)."""
    me, parent = os.getpid(), os.getppid()
    try:
        with open(f"/proc/{parent}/task/{parent}/children") as f:
            siblings = [int(p) for p in f.read().split()]
    except OSError:
        siblings = []
    for pid in siblings:
        if pid != me:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if parent > 1 and os.environ.get("TORCHELASTIC_RUN_ID") is not None:
        os.kill(parent, signal.SIGKILL)
    os.kill(me, signal.SIGKILL)


@dataclass
class SaveStats:
    step: int
    stall_s: float = 0.0
    write_s: float = 0.0
    upload_s: float = 0.0
    total_s: float = 0.0
    bytes: int = 0
    emergency: bool = False


@dataclass
class _Inflight:
    step: int
    thread: threading.Thread
    stats: SaveStats
    error: list = field(default_factory=list)

    def done(self) -> bool:
        return not self.thread.is_alive()


class CheckpointManager:
    """Saves (in the background), commits, retains and restores the run's checkpoints.

    Every rank builds one, in the same order (it creates two gloo process groups), and
    hands it the model, optimizer and scheduler once: every save and restore is of those.
    The trainer calls ``maybe_save`` once per optimizer step on every rank (it holds one
    tiny all-reduce so ranks agree on saving and on preemption notices), and ``close`` at
    the end. After a notice, ``stop_requested`` is True: the loop stops and the process
    exits with EXIT_PREEMPTED.
    """

    def __init__(self, spec: RunSpec, model, optimizer, scheduler, *, rank: int,
                 world_size: int, local_root: str, watcher=None,
                 bucket: Optional[Bucket] = None, local_rank: Optional[int] = None,
                 commit_timeout_s: float = 1800.0, lease=None):
        self.spec = spec
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.rank, self.world_size = rank, world_size
        self.local_rank = local_rank if local_rank is not None else int(
            os.environ.get("LOCAL_RANK", rank))
        self.local_root = os.path.abspath(local_root)
        self.bucket = bucket or open_bucket(spec.bucket_uri)
        self.run_id = spec.run_id
        self.training_hash = spec.training_hash()
        self.keep = spec.checkpoint.keep
        self.policy = IntervalPolicy.from_spec(spec.checkpoint)
        self.watcher = watcher
        self.commit_timeout_s = commit_timeout_s
        self.lease = lease  # rank 0's LeaseKeeper (vicuna_cloud/lease.py), or None
        self.lease_lost = False
        self.distributed = world_size > 1 and dist.is_available() and dist.is_initialized()
        self._bg_pg = dist.new_group(backend="gloo") if self.distributed else None
        self._ctl_pg = dist.new_group(backend="gloo") if self.distributed else None
        # One stager for the whole run: it keeps the CPU copies (pinned on GPU machines) and
        # reuses them, so a save's stall is one copy, not an allocation plus page faults.
        self._stager = DefaultStager(StagingOptions(
            use_pinned_memory=torch.cuda.is_available(), use_shared_memory=False,
            use_async_staging=False, use_non_blocking_copy=False))

        self.last_committed_step: Optional[int] = None
        self.restored_step: Optional[int] = None
        self.stop_requested = False
        self.emergency_step: Optional[int] = None
        self.events: list[dict] = []        # for metrics.jsonl: fallbacks, failures, notices
        self.history: list[SaveStats] = []  # one per finished checkpoint (this rank)
        self._last_started_step: Optional[int] = None
        self._last_save_time = time.monotonic()
        self._inflight: Optional[_Inflight] = None
        self._state_bytes: Optional[int] = None
        self._consecutive_failures = 0
        self._aborted = threading.Event()  # close(abort=True): never commit what is in flight
        kill = os.environ.get("VICUNA_TEST_KILL_AT", "")
        self._kill_at: Optional[tuple[str, int]] = None
        if kill and rank == 0:
            phase, _, step = kill.partition(":")
            self._kill_at = (phase, int(step))

    # --- small utilities --------------------------------------------------------------
    def _event(self, name: str, **fields) -> None:
        ev = {"event": name, "time": datetime.now(timezone.utc).isoformat(), **fields}
        self.events.append(ev)

    def _maybe_kill(self, phase: str, step: int) -> None:
        if self._kill_at == (phase, step):
            log.warning("VICUNA_TEST_KILL_AT=%s:%d: killing the job", phase, step)
            _kill_job()

    def _broadcast(self, obj: Any) -> Any:
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self._ctl_pg)
        return box[0]

    def _agree_max(self, values: list[float]) -> list[float]:
        if not self.distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self._ctl_pg)
        return t.tolist()

    def _step_dir(self, step: int) -> str:
        return step_prefix(self.run_id, step)

    # --- restore ----------------------------------------------------------------------
    def restore(self) -> Optional[TrainProgress]:
        """Load the newest committed checkpoint (falling back to older ones); None = fresh."""
        candidates = None
        if self.local_rank == 0:  # staging left on this node by a killed attempt
            for sub in ("save", "restore"):
                shutil.rmtree(os.path.join(self.local_root, sub), ignore_errors=True)
        if self.rank == 0:
            found = list_checkpoints(self.bucket, self.run_id)
            for step, ok in sorted(found.items()):
                if not ok:
                    log.info("deleting uncommitted checkpoint leftovers at step %d", step)
                    self.bucket.delete_prefix(self._step_dir(step) + "/")
                    self._event("checkpoint_leftovers_deleted", ckpt_step=step)
            candidates = sorted((s for s, ok in found.items() if ok), reverse=True)
        candidates = self._broadcast(candidates)
        if not candidates:
            self._barrier()
            return None

        for i, step in enumerate(candidates):
            commit = self._broadcast(self._read_commit_or_none(step) if self.rank == 0 else None)
            if commit is not None and commit.get("training_hash") != self.training_hash:
                raise SpecMismatchError(
                    f"checkpoint step {step} of run {self.run_id} was written under a different "
                    f"run spec (training hash {commit.get('training_hash', '?')[:12]} != "
                    f"{self.training_hash[:12]}); restore the run's original run.json, or "
                    "start a new run id to train with the new settings")
            error = None if commit is not None else "COMMIT.json missing or invalid"
            dest = os.path.join(self.local_root, "restore", f"step-{step:08d}")
            if error is None and self.local_rank == 0:
                try:
                    shutil.rmtree(dest, ignore_errors=True)
                    download_checkpoint(self.bucket, self.run_id, step, dest)
                except CheckpointError as e:
                    error = str(e)
            bad = self._agree_max([1.0 if error else 0.0])[0] > 0
            if not bad:
                try:
                    progress = self._load(dest)
                except Exception as e:  # noqa: BLE001 - any load failure means: try older
                    error = f"loading failed: {type(e).__name__}: {e}"
                bad = self._agree_max([1.0 if error else 0.0])[0] > 0
            if self.local_rank == 0:
                shutil.rmtree(dest, ignore_errors=True)
            if not bad:
                self.restored_step = self.last_committed_step = step
                self._last_started_step = step
                if self.rank == 0:
                    # Steps past the one we resume from were failed checkpoints (we fell
                    # back): remove them before this run writes those steps again.
                    for newer in candidates[:i]:
                        delete_checkpoint(self.bucket, self.run_id, newer)
                self._barrier()
                log.info("resumed from checkpoint step %d", step)
                self._event("checkpoint_restored", ckpt_step=step, fallbacks=i)
                return progress
            older = candidates[i + 1] if i + 1 < len(candidates) else None
            log.error("checkpoint step %d unusable (%s); %s", step, error or "on another rank",
                      f"falling back to step {older}" if older is not None else "none left")
            self._event("checkpoint_fallback", ckpt_step=step, reason=error or "failed on another rank",
                        fallback_to=older)
        raise CheckpointError(
            f"run {self.run_id} has committed checkpoints {candidates} but none loads; see the "
            "log above. Delete the broken ones from the bucket to start over from scratch")

    def _read_commit_or_none(self, step: int) -> Optional[dict]:
        """The validated COMMIT.json, or None (missing, or invalid: reported, skipped)."""
        try:
            return read_commit(self.bucket, self.run_id, step)
        except NotFoundError:
            return None
        except InvalidRecord as e:
            log.error("%s", e)
            self._event("checkpoint_invalid", ckpt_step=step, reason=str(e)[:300])
            return None

    def _barrier(self) -> None:
        if self.distributed:
            dist.barrier(group=self._ctl_pg)

    def _load(self, path: str) -> TrainProgress:
        model, optimizer, scheduler = self.model, self.optimizer, self.scheduler
        msd, osd = get_state_dict(model, optimizer) if optimizer is not None else (
            get_state_dict(model, [])[0], None)
        state = {"model": msd} if osd is None else {"model": msd, "optim": osd}
        dcp.load(state, storage_reader=dcp.FileSystemReader(path),
                 process_group=self._ctl_pg)
        if osd is None:
            set_state_dict(model, [], model_state_dict=state["model"], optim_state_dict={})
        else:
            set_state_dict(model, optimizer, model_state_dict=state["model"],
                           optim_state_dict=state["optim"])
        extra = torch.load(os.path.join(path, f"extra-{self.rank}.pt"), weights_only=False)
        if extra["training_hash"] != self.training_hash:
            raise SpecMismatchError("extra state written under a different training hash")
        if scheduler is not None and extra.get("scheduler") is not None:
            scheduler.load_state_dict(extra["scheduler"])
        restore_rng(extra["rng"])
        return TrainProgress(**extra["progress"])

    # --- save ------------------------------------------------------------------------
    def _estimate_cost_s(self) -> float:
        """Seconds one more checkpoint takes until committed (measured, else guessed)."""
        if self.policy.measured_total_s is not None:
            return self.policy.measured_total_s
        return (self._state_bytes or 0) / ASSUMED_BANDWIDTH + 5.0

    def commit_estimate_s(self) -> float:
        """Public: seconds one more checkpoint takes until committed (the ledger's budget
        look-ahead keeps room for the final save)."""
        return self._estimate_cost_s()

    def _reap(self) -> None:
        inf = self._inflight
        if inf is None or not inf.done():
            return
        self._inflight = None
        if inf.error:
            self._consecutive_failures += 1
            self._event("checkpoint_failed", ckpt_step=inf.step, reason=str(inf.error[0]))
            log.error("checkpoint step %d failed: %s", inf.step, inf.error[0])
            if self._consecutive_failures >= 3:
                raise CheckpointError(
                    f"3 checkpoints in a row failed, last: {inf.error[0]}; check the bucket "
                    "and credentials (the run cannot be resumed without checkpoints)")
            return
        self._consecutive_failures = 0
        self.last_committed_step = inf.step
        self.history.append(inf.stats)
        self.policy.record(inf.stats.stall_s, inf.stats.total_s)

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the in-flight checkpoint is committed (or failed). True if none left."""
        inf = self._inflight
        if inf is not None:
            inf.thread.join(timeout)
        self._reap()
        return self._inflight is None

    def maybe_save(self, progress: TrainProgress, *, force: bool = False) -> bool:
        """Start a checkpoint if one is due (or forced, or a preemption notice came).

        Returns True when a checkpoint was started. Collective: call on every rank.
        """
        self._maybe_kill("step", progress.step)
        self._reap()
        now = time.monotonic()
        due = force or self.policy.due(progress.step, self._last_started_step,
                                       now - self._last_save_time)
        busy = self._inflight is not None
        notice = bool(self.watcher is not None and self.watcher.event.is_set())
        window = self.watcher.window_s if notice else float("inf")
        lost = bool(self.lease is not None and self.lease.lost)
        due_f, busy_f, notice_f, cost, neg_window, lost_f = self._agree_max(
            [float(due), float(busy), float(notice), self._estimate_cost_s(),
             -min(window, 1e12), float(lost)])
        if lost_f > 0:  # another writer took the run over: write nothing more, stop
            if not self.lease_lost:
                self._event("lease_lost", ckpt_step=progress.step)
                log.error("the run's lease was taken over: stopping without a checkpoint")
            self.lease_lost = self.stop_requested = True
            return False
        if notice_f > 0:
            return self._on_notice(progress, cost, -neg_window)
        if due_f == 0 or progress.step == self._last_started_step:
            return False
        if busy_f > 0:
            # The previous one is still uploading. Time-based: try again at the next step.
            # Step-based (or forced): the user asked for this exact step, so wait for it.
            if not force and self.policy.interval_steps is None:
                return False
            self.wait()
        self._start_save(progress)
        return True

    def _on_notice(self, progress, cost_s: float, window_s: float) -> bool:
        self.stop_requested = True
        reason = getattr(self.watcher, "reason", None) or "notice"
        started = time.monotonic()
        margin = 0.85  # keep some of the window for flushing the ledger and exiting
        if progress.step == self._last_started_step:
            self.wait(timeout=max(window_s * margin, 0.0))
            self._event("preemption", reason=reason, ckpt_step=progress.step, checkpoint="already")
            return False
        if cost_s <= window_s * margin:
            log.warning("preemption (%s): writing an emergency checkpoint at step %d "
                        "(~%.1fs, %.1fs left)", reason, progress.step, cost_s, window_s)
            self.wait(timeout=max(window_s * margin, 0.0))
            # Still uploading the previous one on some rank: a second save now would run two
            # DCP saves on one group and restage into the CPU buffers the first is writing.
            if self._agree_max([float(self._inflight is not None)])[0] > 0:
                self._event("preemption", reason=reason, ckpt_step=progress.step,
                            checkpoint="busy", uploading=self._last_started_step)
                return False
            self._start_save(progress, emergency=True)
            left = window_s * margin - (time.monotonic() - started)
            self.wait(timeout=max(left, 0.0))
            if self.last_committed_step == progress.step:
                self.emergency_step = progress.step
            self._event("preemption", reason=reason, ckpt_step=progress.step,
                        checkpoint="emergency" if self.emergency_step else "incomplete")
            return True
        log.warning("preemption (%s): a checkpoint needs ~%.1fs but only %.1fs are left; "
                    "exiting without one (resume from step %s)", reason, cost_s, window_s,
                    self.last_committed_step)
        self.wait(timeout=max(window_s * margin, 0.0))
        self._event("preemption", reason=reason, ckpt_step=progress.step, checkpoint="none",
                    needed_s=cost_s, window_s=window_s)
        return False

    def _start_save(self, progress, emergency: bool = False) -> None:
        step, scheduler = progress.step, self.scheduler
        t0 = time.monotonic()
        self._maybe_kill("save", step)
        msd, osd = get_state_dict(self.model, self.optimizer)
        state = {"model": msd, "optim": osd}
        if self._state_bytes is None:
            self._state_bytes = _local_bytes(state) * self.world_size
        extra = {
            "progress": asdict(progress),
            "scheduler": copy.deepcopy(scheduler.state_dict()) if scheduler is not None else None,
            "rng": capture_rng(),
            "training_hash": self.training_hash,
            "rank": self.rank,
            "world_size": self.world_size,
        }
        local_dir = os.path.join(self.local_root, "save", f"step-{step:08d}")
        if self.local_rank == 0:
            shutil.rmtree(local_dir, ignore_errors=True)
        os.makedirs(local_dir, exist_ok=True)
        future = dcp.async_save(state, storage_writer=dcp.FileSystemWriter(local_dir),
                                process_group=self._bg_pg, async_stager=self._stager)
        stats = SaveStats(step=step, stall_s=time.monotonic() - t0, emergency=emergency)
        inf = _Inflight(step=step, thread=None, stats=stats)  # type: ignore[arg-type]
        inf.thread = threading.Thread(
            target=self._finish, args=(inf, future, extra, local_dir, asdict(progress), t0),
            name=f"checkpoint-{step}", daemon=True)
        self._inflight = inf
        self._last_started_step = step
        self._last_save_time = t0
        inf.thread.start()

    # --- background -------------------------------------------------------------------
    def _finish(self, inf: _Inflight, future, extra: dict, local_dir: str,
                progress: dict, t0: float) -> None:
        step, sp = inf.step, self._step_dir(inf.step)
        try:
            future.result()
            torch.save(extra, os.path.join(local_dir, f"extra-{self.rank}.pt"))
            inf.stats.write_s = time.monotonic() - t0
            self._maybe_kill("written", step)
            names = [f"extra-{self.rank}.pt"] + sorted(
                n for n in os.listdir(local_dir) if n.startswith(f"__{self.rank}_"))
            if self.rank == 0:
                names.insert(0, ".metadata")
            entries = []
            t_up = time.monotonic()
            for name in names:
                self._raise_if_aborted(step)
                path = os.path.join(local_dir, name)
                entry = {"name": name, "size": os.path.getsize(path), "sha256": sha256_file(path)}
                self.bucket.put_file(f"{sp}/{name}", path)
                entries.append(entry)
                self._maybe_kill("upload", step)
            self.bucket.put_bytes(f"{sp}/ranks/{self.rank}.json", json.dumps(entries).encode())
            inf.stats.upload_s = time.monotonic() - t_up
            inf.stats.bytes = sum(e["size"] for e in entries)
            if self.rank == 0:
                self._commit(step, progress, t0, inf.stats)
            else:
                self._await_commit(step)
            inf.stats.total_s = time.monotonic() - t0
        except BaseException as e:  # noqa: BLE001 - reported to the loop by _reap
            inf.error.append(e)
            try:
                self.bucket.put_bytes(f"{sp}/ranks/{self.rank}.failed", str(e).encode())
            except Exception:  # noqa: BLE001
                pass
        finally:
            shutil.rmtree(local_dir, ignore_errors=True)

    def _poll(self, step: int, ready) -> dict[str, int]:
        """List the step directory until ready(objects) or a failure marker or timeout."""
        sp = self._step_dir(step)
        deadline = time.monotonic() + self.commit_timeout_s
        delay = 0.05
        while True:
            objs = {o.key[len(sp) + 1:]: o.size for o in self.bucket.list(sp + "/")}
            if ready(objs):
                return objs
            failed = [k for k in objs if k.endswith(".failed") or k == ABORT_NAME]
            if failed:
                raise CheckpointError(f"checkpoint step {step} abandoned: {', '.join(failed)}")
            if time.monotonic() > deadline:
                raise CheckpointError(
                    f"checkpoint step {step}: not all ranks finished within "
                    f"{self.commit_timeout_s:.0f}s; not committed")
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _commit(self, step: int, progress: dict, t0: float, stats: SaveStats) -> None:
        sp = self._step_dir(step)
        markers = [f"ranks/{r}.json" for r in range(self.world_size)]
        try:
            objs = self._poll(step, lambda o: all(m in o for m in markers))
            files: list[dict] = []
            for m in markers:
                files.extend(e.model_dump() for e in _MARKER.validate_json(
                    self.bucket.get_bytes(f"{sp}/{m}")))
            short = [f"{e['name']} ({objs.get(e['name'], 'missing')} of {e['size']} bytes)"
                     for e in files if objs.get(e["name"]) != e["size"]]
            if short:
                raise CheckpointError(f"checkpoint step {step}: bad uploads: {', '.join(short)}")
            self._raise_if_aborted(step)
        except BaseException as e:
            try:
                self.bucket.put_bytes(f"{sp}/{ABORT_NAME}", json.dumps({"error": str(e)}).encode())
            except Exception:  # noqa: BLE001
                pass
            raise
        self._maybe_kill("commit", step)
        if self.lease is not None:
            self.lease.check()  # LeaseLost: another writer owns the run now, commit nothing
        commit = {
            "format": FORMAT_VERSION,
            "step": step,
            "run_id": self.run_id,
            "training_hash": self.training_hash,
            "world_size": self.world_size,
            "progress": progress,
            "files": files,
            "wall_time": datetime.now(timezone.utc).isoformat(),
            "save_seconds": round(time.monotonic() - t0, 3),
            "stall_seconds": round(stats.stall_s, 4),
        }
        self.bucket.put_bytes(f"{sp}/{COMMIT_NAME}", json.dumps(commit, indent=1).encode())
        self._maybe_kill("committed", step)
        self._retain(step)

    def _raise_if_aborted(self, step: int) -> None:
        if self._aborted.is_set():
            raise CheckpointError(f"checkpoint step {step} abandoned: the trainer stopped "
                                  "before it was committed")

    def _await_commit(self, step: int) -> None:
        self._poll(step, lambda o: COMMIT_NAME in o)

    def _retain(self, newest: int) -> None:
        """Keep the newest ``keep`` committed checkpoints; drop leftovers below newest."""
        found = list_checkpoints(self.bucket, self.run_id)
        committed = sorted(s for s, ok in found.items() if ok and s <= newest)
        drop = committed[:-self.keep] + [s for s, ok in found.items() if not ok and s < newest]
        for s in sorted(drop):
            delete_checkpoint(self.bucket, self.run_id, s)

    def close(self, *, abort: bool = False) -> None:
        """Wait for the in-flight checkpoint (a failure is logged and kept in ``events``).

        After a preemption notice, do not wait: ``maybe_save`` already gave it its share of
        the window, and what is left is for ending the ledger and exiting before the VM
        goes (an unfinished upload is never committed, so nothing half-written is kept).
        ``abort`` (the trainer crashed): do not wait either, and the checkpoint in flight is
        never committed: its ranks may be gone, and the next start deletes its leftovers."""
        if abort:
            self._aborted.set()
        self.wait(0.0 if self.stop_requested or abort else None)
        if self._inflight is None:  # else the background write still reads its buffers
            self._stager.close()


def _local_bytes(obj) -> int:
    if isinstance(obj, dict):
        return sum(_local_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_local_bytes(v) for v in obj)
    if isinstance(obj, torch.Tensor):
        local = obj.to_local() if hasattr(obj, "to_local") else obj
        return local.numel() * local.element_size()
    return 0
