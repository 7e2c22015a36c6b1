"""Killing a whole process tree the way a vanished VM would.

torchrun starts each worker in a session of its own (start_new_session), so killing
torchrun's process group leaves the workers running. We freeze the whole tree first
(SIGSTOP, repeated until no new descendant appears: a stopped process cannot fork), then
SIGKILL every member, so nothing escapes and nothing gets to write "one more" file.
"""

from __future__ import annotations

import os
import signal
import time

import psutil


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def tree(pid: int) -> list[psutil.Process]:
    """The process and all its descendants (those still alive)."""
    try:
        root = [psutil.Process(pid)]
    except psutil.NoSuchProcess:
        root = []
    return root + descendants(pid)


def _signal_all(procs: list[psutil.Process], sig: int) -> None:
    for p in procs:
        try:
            p.send_signal(sig)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


def kill_tree(pid: int, also: list[psutil.Process] | None = None) -> list[int]:
    """SIGKILL ``pid`` and every descendant, atomically as far as forks go.

    ``also`` adds processes known from an earlier snapshot (e.g. workers already
    re-parented to init). Returns the pids that were signalled.
    """
    seen: dict[int, psutil.Process] = {p.pid: p for p in (also or [])}
    for _ in range(50):
        new = [p for p in tree(pid) if p.pid not in seen]
        for p in new:
            seen[p.pid] = p
        # Stop newcomers and any snapshot members so nobody forks while we look again.
        _signal_all(new or list(seen.values()), signal.SIGSTOP)
        if not new:
            break
    procs = list(seen.values())
    _signal_all(procs, signal.SIGKILL)
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return [p.pid for p in procs]


def signal_tree(pid: int, sig: int) -> list[psutil.Process]:
    """Send ``sig`` to the process and all descendants (like a terminal's Ctrl-C to a job)."""
    procs = tree(pid)
    _signal_all(procs, sig)
    return procs


def wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until the processes have exited; return the ones still alive."""
    deadline = time.monotonic() + timeout
    alive = list(procs)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _alive(p)]
        if alive:
            time.sleep(0.05)
    return [p for p in alive if _alive(p)]


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
