"""Does the trainer still have its local supervisor? (issue 14: orphaned trainers.)

The local launcher runs the supervisor in its own process; if that process is SIGKILLed,
torchrun and its workers live on (they are in sessions of their own) and keep renewing the
run's lease, so the user's relaunch is refused although nobody supervises the run any more.
So the supervisor hands its identity to every process of an attempt in
``VICUNA_SUPERVISOR=<pid>:<start time>`` and the trainer polls it with its preemption
notices (train/preemption.py): once that process is gone, the trainer stops at the next
step boundary like after a notice (checkpoint, ledger end "cancelled"), releases the lease
and exits, so a relaunch takes the run over at once.

The start time (clock ticks since boot, /proc/<pid>/stat field 22) tells a reused pid from
the supervisor. Linux only, stdlib only (the node imports it): elsewhere it is a no-op,
the token is None and nothing is polled.
"""

from __future__ import annotations

import os
from typing import Optional

SUPERVISOR_ENV = "VICUNA_SUPERVISOR"


def _start_ticks(pid: int) -> Optional[str]:
    """The process' start time, or None when it is gone (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) "
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return fields[19]


def supported() -> bool:
    return os.path.isfile("/proc/self/stat")


def token_for_self() -> Optional[str]:
    """What a supervisor puts in SUPERVISOR_ENV; None where it cannot be checked."""
    if not supported():
        return None
    ticks = _start_ticks(os.getpid())
    return f"{os.getpid()}:{ticks}" if ticks else None


def gone(token: str) -> Optional[str]:
    """Why the supervisor named by ``token`` is gone, or None while it lives (and for a
    token that cannot be checked here: never a false alarm)."""
    pid_s, _, ticks = token.partition(":")
    if not pid_s.isdigit() or not ticks or not supported():
        return None
    now = _start_ticks(int(pid_s))
    if now == ticks:
        return None
    return f"the supervisor (launcher pid {pid_s}) is gone"


def supervisor_gone(env=os.environ) -> Optional[str]:
    """``gone`` for this process' supervisor, None when it has none (a managed job)."""
    token = env.get(SUPERVISOR_ENV)
    return gone(token) if token else None
