"""The live view of a local run: phase, step/total, loss, tokens/s, ETA, cost so far,
preemptions, and "resuming from step N (M steps lost)" after each restart. On a terminal a
rich Live panel; otherwise (CI logs, `| tee`) plain lines, one per change.

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
from vicuna_cloud.durations import hms
from vicuna_cloud.run_progress import jsonl_records
from vicuna_cloud.storage import Bucket, NotFoundError, StorageError

_STEP = ("step", "global_step")
_TOTAL = ("total_steps", "max_steps", "steps_total", "num_steps")
_LOSS = ("loss", "train_loss")
_TPS = ("tokens_per_s", "tokens_per_sec", "tokens_per_second", "tok_per_s", "tps")
# The trainer's console line: "step 12/21 loss 3.1416 lr ... tok/s 1234 ..."
# The trainer's start line: "<run>: 336 conversations (...), 21 steps, ..., resuming at step 9"
_START_LINE = re.compile(r"\b(\d+) conversations(?:, [\d,]+ tokens)? \(.*?\), (\d+) steps\b.*?"
                         r"(?:resuming at step (\d+)|from scratch)")
_STEP_LINE = re.compile(r"\bstep (\d+)/(\d+) loss ([-+0-9.eE]+|nan)(?:.*?\btok/s (\d+))?")
# ... and its eval line: "eval step 8/8 eval_loss 1.4242 (...)" (train/metrics.py)
_EVAL_LINE = re.compile(r"\beval step (\d+)/(\d+) eval_loss ([-+0-9.eE]+|nan)")


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
        self.starts = 0                         # "start" events seen (one per attempt)
        self.resume_step: Optional[int] = None  # the newest start's step (0: from scratch)

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._last_read < self.min_interval:
            return
        self._last_read = now
        try:
            data = self.bucket.get_bytes(self.key)
        except (NotFoundError, StorageError, OSError):
            return
        records, starts = [], 0
        for rec in jsonl_records(data):
            if pick(rec, _STEP) is not None:
                if "event" in rec:  # start/exported/... : not a trained step
                    if pick(rec, _TOTAL) is not None:
                        self.total_steps = int(pick(rec, _TOTAL))
                    if rec["event"] == "start":
                        starts += 1
                        self.resume_step = int(pick(rec, _STEP))
                    continue
                records.append(rec)
        if len(records) < len(self.records):
            self._rewrites += 1
        self.records = records
        self.starts = max(self.starts, starts)

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
        self.starts = 0                         # trainer start lines seen (one per attempt)
        self.resume_step: Optional[int] = None
        self.start_text: Optional[str] = None
        self._first_eval: Optional[dict] = None
        self._last_eval: Optional[dict] = None

    def evals(self) -> tuple[Optional[dict], Optional[dict]]:
        """The first and the latest eval seen (start of the run, and now)."""
        with self._lock:
            return self._first_eval, self._last_eval

    def feed(self, line: str) -> None:
        e = _EVAL_LINE.search(line)
        if e:
            with self._lock:
                rec = {"step": int(e.group(1)), "eval_loss": float(e.group(3))}
                self._first_eval = self._first_eval or rec
                self._last_eval = rec
            return
        st = _START_LINE.search(line)
        if st:
            with self._lock:
                self.starts += 1
                self.resume_step = int(st.group(3) or 0)
                self.start_text = f"{st.group(1)} conversations tokenized, {st.group(2)} steps"
            return
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
    price_per_hour: float = 0.0     # local price: the live cost is elapsed hours x this
    started: float = field(default_factory=time.time)
    phase: str = "starting workers (torchrun)"
    preempted_at: Optional[int] = None  # last step of the attempt before this one
    resumed: bool = True                # the resume line for this attempt was said


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
        # Not a terminal (CI log, `| tee`): plain lines, one per change, never redrawn.
        self.plain = not self.console.is_terminal
        self._entered = False
        self._last_line = ""
        self._print_lock = threading.Lock()
        self._attempt_t0, self._attempt_step0 = time.time(), None
        self._seq0: Optional[int] = None
        self._starts0 = 0

    def on_event(self, kind: str, attempt: Attempt) -> None:
        s = self.state
        s.attempt = attempt.index
        if kind == "started":
            s.status = "running" if attempt.index == 0 else f"resumed (attempt {attempt.index + 1})"
            s.phase = "starting workers (torchrun), then loading data and tokenizing"
            self._attempt_t0, self._attempt_step0 = time.time(), None
            s.resumed = attempt.index == 0
            self._seq0 = self.tail.poll().seq  # steps logged before this attempt are old
            self._starts0 = getattr(self.tail, "starts", 0)
        elif kind == "preempted":
            s.preemptions += 1
            s.preempted_at = attempt.last_step
            s.status = "preempted: SIGKILL, restarting"
            self._say(f"attempt {attempt.index + 1}: preempted at step {attempt.last_step}")
        elif kind == "recovering":
            s.preempted_at = attempt.last_step
            s.status = "clean exit after a notice: recovering"
            self._say(f"attempt {attempt.index + 1}: exited {attempt.exit_code}, recovering")
        elif kind == "failed":
            s.failures += 1
            s.status = f"failed (exit {attempt.exit_code}): retrying"
            self._say(f"attempt {attempt.index + 1}: failed with exit {attempt.exit_code}")
        elif kind in ("completed", "config", "cancelled"):
            s.status = kind
            s.phase = kind
        self.refresh()

    def _say(self, text: str) -> None:
        self.state.events.append(text)
        if self.plain and self._entered:
            self.console.print(text, highlight=False, soft_wrap=True)

    def _track(self, step: Optional[int]) -> None:
        """Phase, the resume line and the ETA's clock, from the newest step seen."""
        s = self.state
        started = getattr(self.tail, "starts", 0) > self._starts0  # this attempt's start seen
        if started and not s.resumed:
            self._say_resume(getattr(self.tail, "resume_step", None))
        if started and getattr(self.tail, "start_text", None) and s.phase.startswith("starting"):
            s.phase = f"{self.tail.start_text}; first step"
        if step is None or self.tail.poll().seq == self._seq0:
            return  # nothing logged by this attempt yet
        if self._attempt_step0 is None or step < self._attempt_step0:
            self._attempt_step0, self._attempt_t0 = step, time.time()
        s.phase = "training"
        if not s.resumed:  # no start line or event: the first new step says where it went on
            self._say_resume(max(0, step - 1))

    def _say_resume(self, start: Optional[int]) -> None:
        s = self.state
        if start is None:
            return
        s.resumed = True
        lost = max(0, (s.preempted_at or start) - start)
        self._say(f"resuming from step {start} ({lost} step{'s' if lost != 1 else ''} lost)")

    def _eta(self, step: Optional[int], total: Optional[int]) -> Optional[float]:
        if step is None or not total or self._attempt_step0 is None or step <= self._attempt_step0:
            return None
        rate = (time.time() - self._attempt_t0) / (step - self._attempt_step0)
        return max(0.0, (total - step) * rate)

    def _cost(self) -> float:
        return (time.time() - self.state.started) / 3600.0 * self.state.price_per_hour

    def render(self) -> Group:
        rec = self.tail.last() or {}
        step, total = pick(rec, _STEP), pick(rec, _TOTAL) or self.expected_steps
        self._track(step)
        self._bar.update(self._task, completed=step or 0, total=total)
        table = Table.grid(padding=(0, 2))
        table.add_column(style="dim")
        table.add_column()
        loss, tps = pick(rec, _LOSS), pick(rec, _TPS)
        s = self.state
        table.add_row("run", s.run_id)
        table.add_row("status", s.status)
        table.add_row("phase", s.phase)
        table.add_row("step", f"{step if step is not None else '-'} / {total or '?'}")
        table.add_row("loss", f"{loss:.4f}" if isinstance(loss, (int, float)) else "-")
        table.add_row("tokens/s", f"{tps:,.0f}" if isinstance(tps, (int, float)) else "-")
        table.add_row("ETA", hms(self._eta(step, total)))
        table.add_row("cost so far", f"${self._cost():.4f} at ${s.price_per_hour:g}/h")
        first, last = self.tail.evals() if hasattr(self.tail, "evals") else (None, None)
        if last:
            table.add_row("eval loss", f"{last['eval_loss']:.4f} at step {last['step']}"
                          + (f" (step {first['step']}: {first['eval_loss']:.4f})"
                             if first and first is not last else ""))
        table.add_row("preemptions", f"{s.preemptions} of {s.planned_preemptions} simulated")
        if s.failures:
            table.add_row("failures", str(s.failures))
        for e in s.events[-3:]:
            table.add_row("", f"[yellow]{e}")
        # Before the first step the bar would look full at 0/?: show the phase instead.
        return Group(self._bar, table) if step is not None else Group(table)

    def line(self) -> str:
        """The plain one-line form (not a terminal): what changed, never redrawn."""
        rec = self.tail.last() or {}
        step, total = pick(rec, _STEP), pick(rec, _TOTAL) or self.expected_steps
        self._track(step)
        s = self.state
        if step is None:
            return f"{s.run_id}: {s.phase}"
        loss, tps = pick(rec, _LOSS), pick(rec, _TPS)
        parts = [f"step {step}/{total or '?'}"]
        if isinstance(loss, (int, float)):
            parts.append(f"loss {loss:.4f}")
        if isinstance(tps, (int, float)):
            parts.append(f"tok/s {tps:,.0f}")
        parts += [f"ETA {hms(self._eta(step, total))}", f"cost ${self._cost():.4f}",
                  f"preemptions {s.preemptions} of {s.planned_preemptions} simulated"]
        return "  ".join(parts)

    def refresh(self) -> None:
        if self.plain:
            if self._entered:
                with self._print_lock:
                    text = self.line()
                    key = text.split("  ETA ")[0] + f"|{self.state.preemptions}"
                    if key != self._last_line:  # a new step or phase, not a new cost figure
                        self._last_line = key
                        self.console.print(text, highlight=False, soft_wrap=True)
            return
        if self._live is not None:
            self._live.update(self.render())

    def __enter__(self) -> "LiveView":
        self._entered = True
        if not self.plain:
            self._live = Live(self.render(), console=self.console, refresh_per_second=4,
                              transient=False)
            self._live.__enter__()
        else:
            self.refresh()
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
        self._entered = False
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None
        self.console.print()  # what follows starts on a line of its own

