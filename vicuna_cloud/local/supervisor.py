"""A local stand-in for SkyPilot managed jobs.

It starts the task's command (``torchrun ... -m train --run-uri URI``) in a session of its
own, and restarts it like a managed job's recovery would:
- exit 0: done; EXIT_CONFIG: the input is wrong, restarting will not help: stop;
- EXIT_PREEMPTED (clean exit after a notice) or EXIT_TRANSIENT (storage/network fault):
  recover, not counted as a failure (the task's recover_on_exit_codes);
- any other non-zero exit: a failure; after ``max_failures`` of them, give up;
- with ``preemptions=N`` it SIGKILLs the whole process tree at N seeded points of the
  run (only once the current attempt has trained, i.e. reported a new metrics record) and
  restarts it: a simulated spot preemption, with no warning, like a vanished VM;
- Ctrl-C (KeyboardInterrupt) or SIGTERM to the launcher: ``cancel_signal`` (SIGTERM, the
  trainer's graceful-stop path: checkpoint if it fits, flush the ledger) to every process
  of the tree at once, a grace period, then SIGKILL for whatever is left; ``on_cancel``
  runs afterwards so the caller can record the segment's end as "cancelled".
Every process of an attempt carries ``VICUNA_ATTEMPT_TAG=<tag>`` in its environment and the
supervisor is their child subreaper (prctl), so a worker whose torchrun was SIGKILLed alone
(it lives in a session of its own) is re-parented to the supervisor, found by its tag, and
killed: the next attempt never starts while one process of the previous one lives. If the
supervisor itself is SIGKILLed, its trainers notice (``VICUNA_SUPERVISOR``, polled with the
preemption notices), checkpoint, release the run's lease and exit. Its
temporary files go under ``temp_root`` (the run's local directory); a SIGKILLed launcher's
leftovers there are removed by the next start. ``stop_check`` (the run lease lost) ends
the attempt and the run.
The policy takes no torch: a unit test drives it with a tiny Python child.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol, Sequence

from vicuna_cloud.exit_codes import EXIT_CONFIG, EXIT_LEASE_HELD, RECOVERABLE_EXIT_CODES
from vicuna_cloud import supervision
from vicuna_cloud.local import proctree

EXIT_CANCELLED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


@dataclass(frozen=True)
class Progress:
    """What the supervisor needs to know about training progress."""

    seq: int                 # number of metrics records seen so far (monotonic)
    step: Optional[int] = None
    total_steps: Optional[int] = None


class ProgressProbe(Protocol):
    def poll(self) -> Progress: ...


@dataclass
class SupervisorConfig:
    preemptions: int = 0
    seed: int = 0
    max_failures: int = 3          # like max_restarts_on_errors
    max_recoveries: int = 100      # EXIT_PREEMPTED restarts, a guard against loops
    restart_delay_s: float = 0.5   # a new VM is not instant
    grace_s: float = 20.0          # Ctrl-C: time to close ledgers before SIGKILL
    cancel_signal: int = signal.SIGTERM
    poll_s: float = 0.1
    window: tuple[float, float] = (0.15, 0.85)  # preemption points, fractions of the run
    expected_steps: Optional[int] = None        # used until a probe reports total_steps


@dataclass
class Attempt:
    index: int
    pid: int
    started: float
    ended: Optional[float] = None
    exit_code: Optional[int] = None
    outcome: str = "running"  # completed | preempted | recovering | failed | config | cancelled
    first_step: Optional[int] = None
    last_step: Optional[int] = None


@dataclass
class SupervisorResult:
    exit_code: int
    outcome: str                  # completed | config | failed | cancelled | recoveries-exhausted
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def preemptions(self) -> int:
        return sum(a.outcome == "preempted" for a in self.attempts)


class PreemptionPlan:
    """N seeded points in (0, 1) of the run, turned into step targets once the length is known."""

    def __init__(self, n: int, seed: int, window: tuple[float, float] = (0.15, 0.85)):
        rng = random.Random(f"vicuna-local-preemptions:{seed}")
        lo, hi = window
        self.fractions = sorted(rng.uniform(lo, hi) for _ in range(max(n, 0)))
        self.done = 0

    @property
    def remaining(self) -> int:
        return len(self.fractions) - self.done

    def targets(self, total_steps: int) -> list[int]:
        """Strictly increasing steps in [1, total_steps - 1] (as far as the run allows)."""
        out: list[int] = []
        for f in self.fractions:
            t = max(1, int(round(f * total_steps)), (out[-1] + 1) if out else 1)
            out.append(min(t, max(total_steps - 1, 1)))
        return out

    def due(self, step: Optional[int], total_steps: Optional[int]) -> bool:
        if self.remaining <= 0 or step is None or not total_steps:
            return False
        return step >= self.targets(total_steps)[self.done]


class Supervisor:
    """Run ``command`` until it succeeds, restarting it like a managed job."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        config: SupervisorConfig,
        probe: Optional[ProgressProbe] = None,
        env: Optional[dict] = None,
        cwd: Optional[str] = None,
        log_path: Optional[str] = None,
        on_line: Optional[Callable[[str], None]] = None,
        on_event: Optional[Callable[[str, Attempt], None]] = None,
        on_cancel: Optional[Callable[[], None]] = None,
        temp_root: Optional[str] = None,
        stop_check: Optional[Callable[[], Optional[str]]] = None,
    ):
        self.command = list(command)
        self.stop_check = stop_check
        self._tag = uuid.uuid4().hex[:12]
        self.config = config
        self.probe = probe
        # torchrun exits 1 whatever its workers returned; like the task's run script, we
        # have the trainer write its own exit code (75 preempted, 78 config) to a file.
        if temp_root is not None:
            os.makedirs(temp_root, exist_ok=True)
            clean_temp_root(temp_root)
        self._exit_code_dir = tempfile.mkdtemp(prefix=f"supervisor-{os.getpid()}-"
                                               if temp_root else "vicuna-supervisor-",
                                               dir=temp_root)
        self.exit_code_file = os.path.join(self._exit_code_dir, "exit-code")
        self.env = {**(os.environ if env is None else env),
                    "VICUNA_EXIT_CODE_FILE": self.exit_code_file}
        # Who supervises: a trainer that outlives us (SIGKILLed launcher) notices and
        # stops cleanly, freeing the run's lease (vicuna_cloud/supervision.py).
        token = supervision.token_for_self()
        if token:
            self.env[supervision.SUPERVISOR_ENV] = token
        self.cwd = cwd
        self.log_path = log_path
        self.on_line = on_line
        self.on_event = on_event or (lambda kind, attempt: None)
        self.on_cancel = on_cancel
        self.plan = PreemptionPlan(config.preemptions, config.seed, config.window)
        self.attempts: list[Attempt] = []
        self._proc: Optional[subprocess.Popen] = None
        self._attempt_tag, self._seen = "", set()

    # --- public ----------------------------------------------------------------------
    def run(self) -> SupervisorResult:
        failures = recoveries = 0
        old_term = _raise_on_sigterm()
        reaper = proctree.set_subreaper(True)
        try:
            while True:
                attempt = self._run_attempt(len(self.attempts))
                code = attempt.exit_code
                if attempt.outcome in ("stopped", "unkillable"):
                    self.on_event(attempt.outcome, attempt)
                    return SupervisorResult(EXIT_LEASE_HELD if attempt.outcome == "stopped"
                                            else 1, attempt.outcome, self.attempts)
                if attempt.outcome == "preempted":
                    self.on_event("preempted", attempt)
                elif code == 0:
                    attempt.outcome = "completed"
                    self.on_event("completed", attempt)
                    return SupervisorResult(0, "completed", self.attempts)
                elif code == EXIT_CONFIG:
                    attempt.outcome = "config"
                    self.on_event("config", attempt)
                    return SupervisorResult(EXIT_CONFIG, "config", self.attempts)
                elif code == EXIT_LEASE_HELD:  # another writer holds the run: never beside it
                    attempt.outcome = "lease-held"
                    self.on_event("lease-held", attempt)
                    return SupervisorResult(EXIT_LEASE_HELD, "lease-held", self.attempts)
                elif code in RECOVERABLE_EXIT_CODES:  # as the task's recover_on_exit_codes
                    attempt.outcome = "recovering"
                    recoveries += 1
                    self.on_event("recovering", attempt)
                    if recoveries > self.config.max_recoveries:
                        return SupervisorResult(code, "recoveries-exhausted", self.attempts)
                else:
                    attempt.outcome = "failed"
                    failures += 1
                    self.on_event("failed", attempt)
                    if failures > self.config.max_failures:
                        return SupervisorResult(code or 1, "failed", self.attempts)
                time.sleep(self.config.restart_delay_s * (1 + failures))
        except KeyboardInterrupt:
            self._cancel()
            return SupervisorResult(EXIT_CANCELLED, "cancelled", self.attempts)
        finally:
            try:
                signal.signal(signal.SIGTERM, old_term)
            except ValueError:
                pass
            shutil.rmtree(self._exit_code_dir, ignore_errors=True)
            if reaper:
                proctree.set_subreaper(False)

    # --- one attempt -----------------------------------------------------------------
    def _run_attempt(self, index: int) -> Attempt:
        log = open(self.log_path, "ab") if self.log_path else None
        if log:
            log.write(f"\n===== attempt {index} at {time.strftime('%H:%M:%S')}: "
                      f"{' '.join(self.command)}\n".encode())
            log.flush()
        start_seq = self.probe.poll().seq if self.probe else 0
        os.makedirs(self._exit_code_dir, exist_ok=True)  # run() removes it when done
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.exit_code_file)  # a stale code from an earlier attempt
        env = dict(self.env if self.env is not None else os.environ)
        env["VICUNA_ATTEMPT"] = str(index)  # the ledger numbers its segment as this log does
        self._attempt_tag = tag = f"{self._tag}-{index}"
        self._seen = seen = set()
        env[proctree.ATTEMPT_ENV] = tag  # how the attempt's processes are found (proctree)
        proc = subprocess.Popen(
            self.command, env=env, cwd=self.cwd, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self._proc = proc
        attempt = Attempt(index=index, pid=proc.pid, started=time.time())
        self.attempts.append(attempt)
        self.on_event("started", attempt)
        reader = threading.Thread(target=self._pump, args=(proc, log), daemon=True)
        reader.start()
        try:
            while proc.poll() is None:
                why = self.stop_check() if self.stop_check else None
                if why:
                    proctree.kill_tree(proc.pid)
                    proc.wait()
                    attempt.outcome = "stopped"
                    break
                if self.probe is not None:
                    p = self.probe.poll()
                    if p.seq > start_seq and p.step is not None:
                        if attempt.first_step is None:
                            attempt.first_step = p.step
                        attempt.last_step = p.step
                        total = p.total_steps or self.config.expected_steps
                        if self.plan.due(p.step, total):
                            self.plan.done += 1
                            proctree.kill_tree(proc.pid)
                            proc.wait()
                            attempt.outcome = "preempted"
                            break
                time.sleep(self.config.poll_s)
            # The launcher (a subprocess' leader) is gone: make sure its workers are too,
            # those that left its tree included (re-parented to us, found by their tag).
            proctree.kill_tree(proc.pid)
            attempt.exit_code = self._trainer_exit_code(proc.wait())
            left = proctree.end_attempt(tag, seen)
            if left:
                attempt.outcome = "unkillable"
                if self.on_line:
                    self.on_line(f"processes {left} of attempt {index} do not die")
        finally:  # (Ctrl-C: _cancel signals, waits, then ends the attempt the same way)
            attempt.ended = time.time()
            if proc.poll() is not None:
                reader.join(timeout=5)  # the rest of the output, for the log
        return attempt

    def _trainer_exit_code(self, launcher_code: int) -> int:
        """The trainer's own exit code when it wrote one, else the launcher's."""
        if launcher_code == 0:
            return 0
        try:
            with open(self.exit_code_file) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return launcher_code

    def _pump(self, proc: subprocess.Popen, log) -> None:
        assert proc.stdout is not None
        try:
            for raw in iter(proc.stdout.readline, b""):
                if log:
                    log.write(raw)
                    log.flush()
                if self.on_line:
                    try:
                        self.on_line(raw.decode("utf-8", "replace").rstrip("\n"))
                    except Exception:  # a display bug must never stop training
                        pass
        finally:
            if log:
                log.close()

    def _cancel(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            # Everyone gets the signal at once, as a terminal's Ctrl-C reaches a whole job:
            # torchrun's workers live in sessions of their own and would miss it otherwise.
            procs = proctree.signal_tree(proc.pid, self.config.cancel_signal)
            orphans = [p for p in proctree.tagged(self._attempt_tag, self._seen)
                       if p.pid not in {q.pid for q in procs}]
            proctree._signal_all(orphans, self.config.cancel_signal)
            procs += orphans
            deadline = time.monotonic() + self.config.grace_s
            while time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            alive = proctree.wait_gone(procs, max(0.0, deadline - time.monotonic()))
            proctree.kill_tree(proc.pid, also=alive)
            proc.wait()
        if proc is not None:
            proctree.end_attempt(self._attempt_tag, self._seen)
        if self.attempts and self.attempts[-1].outcome == "running":
            a = self.attempts[-1]
            a.outcome, a.ended, a.exit_code = "cancelled", time.time(), proc.returncode if proc else None
            self.on_event("cancelled", a)
        if self.on_cancel:
            self.on_cancel()


def clean_temp_root(root: str) -> int:
    """Remove what supervisors that are gone (a SIGKILLed launcher) left in ``root``."""
    removed = 0
    for name in os.listdir(root):
        parts = name.split("-")
        if len(parts) >= 2 and parts[0] == "supervisor" and parts[1].isdigit():
            if proctree.psutil.pid_exists(int(parts[1])) and int(parts[1]) != os.getpid():
                continue
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
            removed += 1
    return removed


def _raise_on_sigterm():
    """SIGTERM to the launcher means the same as Ctrl-C: cancel cleanly."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave SIGTERM alone
        return signal.getsignal(signal.SIGTERM)
