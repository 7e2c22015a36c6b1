"""The live view of a local run: step/total, loss, tokens/s, preemptions so far.

It reads the same ``runs/<id>/metrics.jsonl`` the trainer writes to the bucket (so it
shows what `status` would show for a cloud run) and the supervisor's events.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn
from rich.table import Table

from vicuna_cloud.local.supervisor import Attempt, Progress
from vicuna_cloud.run_progress import jsonl_records
from vicuna_cloud.storage import Bucket, NotFoundError, StorageError

_STEP = ("step", "global_step")
_TOTAL = ("total_steps", "max_steps", "steps_total", "num_steps")
_LOSS = ("loss", "train_loss")
_TPS = ("tokens_per_s", "tokens_per_sec", "tokens_per_second", "tok_per_s", "tps")
# The trainer's console line: "step 12/21 loss 3.1416 lr ... tok/s 1234 ..."
_STEP_LINE = re.compile(r"\bstep (\d+)/(\d+) loss ([-+0-9.eE]+|nan)(?:.*?\btok/s (\d+))?")


def pick(record: dict, names: tuple[str, ...]) -> Any:
    for n in names:
        if record.get(n) is not None:
            return record[n]
    return None


class MetricsTail:
    """Polls ``metrics.jsonl`` in a bucket; remote buckets at most every ``min_interval``."""

    def __init__(self, bucket: Bucket, key: str, min_interval: float = 0.0):
        self.bucket, self.key, self.min_interval = bucket, key, min_interval
        self._lock = threading.Lock()
        self._last_read = 0.0
        self.records: list[dict] = []
        self._rewrites = 0  # times the file shrank (rewritten on resume): seq stays monotonic
        self.total_steps: Optional[int] = None  # from the trainer's "start" event

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._last_read < self.min_interval:
            return
        self._last_read = now
        try:
            data = self.bucket.get_bytes(self.key)
        except (NotFoundError, StorageError, OSError):
            return
        records = []
        for rec in jsonl_records(data):
            if pick(rec, _STEP) is not None:
                if "event" in rec:  # start/exported/... : not a trained step
                    if pick(rec, _TOTAL) is not None:
                        self.total_steps = int(pick(rec, _TOTAL))
                    continue
                records.append(rec)
        if len(records) < len(self.records):
            self._rewrites += 1
        self.records = records

    def poll(self) -> Progress:
        with self._lock:
            self._refresh()
            seq = len(self.records) + 1_000_000 * self._rewrites
            if not self.records:
                return Progress(seq=seq)
            last = self.records[-1]
            total = pick(last, _TOTAL) or self.total_steps
            return Progress(seq=seq, step=int(pick(last, _STEP)),
                            total_steps=int(total) if total is not None else None)

    def last(self) -> Optional[dict]:
        with self._lock:
            if not self.records:
                return None
            rec = dict(self.records[-1])
            rec.setdefault("total_steps", self.total_steps)
            return rec


class StdoutProbe:
    """Progress from the trainer's console lines, as they are printed (no bucket lag).

    Feed it every output line (Supervisor's ``on_line``); it keeps the latest step record.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._seq = 0
        self._last: Optional[dict] = None

    def feed(self, line: str) -> None:
        m = _STEP_LINE.search(line)
        if not m:
            return
        rec = {"step": int(m.group(1)), "total_steps": int(m.group(2)),
               "loss": float(m.group(3))}
        if m.group(4):
            rec["tokens_per_s"] = float(m.group(4))
        with self._lock:
            self._seq += 1
            self._last = rec

    def poll(self) -> Progress:
        with self._lock:
            if self._last is None:
                return Progress(seq=self._seq)
            return Progress(seq=self._seq, step=self._last["step"],
                            total_steps=self._last["total_steps"])

    def last(self) -> Optional[dict]:
        with self._lock:
            return dict(self._last) if self._last else None


@dataclass
class ViewState:
    run_id: str
    status: str = "starting"
    attempt: int = 0
    preemptions: int = 0
    planned_preemptions: int = 0
    failures: int = 0
    events: list[str] = field(default_factory=list)


class LiveView:
    """A rich Live panel refreshed from a probe (StdoutProbe or MetricsTail); feed it
    supervisor events."""

    def __init__(self, state: ViewState, tail, console: Optional[Console] = None,
                 expected_steps: Optional[int] = None):
        self.state, self.tail = state, tail
        self.console = console or Console()
        self.expected_steps = expected_steps
        self._bar = RichProgress(
            TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=self.console,
        )
        self._task = self._bar.add_task("steps", total=expected_steps or None)
        self._live: Optional[Live] = None

    def on_event(self, kind: str, attempt: Attempt) -> None:
        s = self.state
        s.attempt = attempt.index
        if kind == "started":
            s.status = "running" if attempt.index == 0 else f"resumed (attempt {attempt.index + 1})"
        elif kind == "preempted":
            s.preemptions += 1
            s.status = "preempted: SIGKILL, restarting"
            s.events.append(f"attempt {attempt.index + 1}: preempted at step {attempt.last_step}")
        elif kind == "recovering":
            s.status = "clean exit after a notice: recovering"
            s.events.append(f"attempt {attempt.index + 1}: exited {attempt.exit_code}, recovering")
        elif kind == "failed":
            s.failures += 1
            s.status = f"failed (exit {attempt.exit_code}): retrying"
            s.events.append(f"attempt {attempt.index + 1}: failed with exit {attempt.exit_code}")
        elif kind in ("completed", "config", "cancelled"):
            s.status = kind
        self.refresh()

    def render(self) -> Group:
        rec = self.tail.last() or {}
        step, total = pick(rec, _STEP), pick(rec, _TOTAL) or self.expected_steps
        self._bar.update(self._task, completed=step or 0, total=total)
        table = Table.grid(padding=(0, 2))
        table.add_column(style="dim")
        table.add_column()
        loss, tps = pick(rec, _LOSS), pick(rec, _TPS)
        s = self.state
        table.add_row("run", s.run_id)
        table.add_row("status", s.status)
        table.add_row("step", f"{step if step is not None else '-'} / {total or '?'}")
        table.add_row("loss", f"{loss:.4f}" if isinstance(loss, (int, float)) else "-")
        table.add_row("tokens/s", f"{tps:,.0f}" if isinstance(tps, (int, float)) else "-")
        table.add_row("preemptions", f"{s.preemptions} of {s.planned_preemptions} simulated")
        if s.failures:
            table.add_row("failures", str(s.failures))
        for e in s.events[-3:]:
            table.add_row("", f"[yellow]{e}")
        return Group(self._bar, table)

    def refresh(self) -> None:
        if self._live is not None:
            self._live.update(self.render())

    def __enter__(self) -> "LiveView":
        self._live = Live(self.render(), console=self.console, refresh_per_second=4,
                          transient=False)
        self._live.__enter__()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.refresh()
            except Exception:
                pass

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.refresh()
        assert self._live is not None
        self._live.__exit__(*exc)
        self._live = None
