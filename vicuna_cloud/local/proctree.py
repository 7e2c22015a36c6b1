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


# --- a tree the workers cannot leave ----------------------------------------------------
PR_SET_CHILD_SUBREAPER = 36
ATTEMPT_ENV = "VICUNA_ATTEMPT_TAG"


def set_subreaper(on: bool = True) -> bool:
    """Make this process the reaper of its orphaned descendants (Linux prctl), so a
    worker whose parent died (torchrun SIGKILLed alone) is re-parented to us, not to
    init, and stays findable. False where the call is not available."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _tag_of(p: psutil.Process) -> str | None:
    try:
        return p.environ().get(ATTEMPT_ENV)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
        return None


def tagged(tag: str, seen: set[int] | None = None) -> list[psutil.Process]:
    """Our live descendants that carry ``VICUNA_ATTEMPT_TAG=tag`` (an attempt's processes:
    setsid does not drop the environment). Their pids are added to ``seen``."""
    out = []
    for p in descendants(os.getpid()):
        if _tag_of(p) == tag and _alive(p):
            out.append(p)
            if seen is not None:
                seen.add(p.pid)
    return out


def reap(pids: set[int]) -> None:
    """Collect the exit status of those of ``pids`` that are our zombie children (orphans
    re-parented to us); only pids we know to be an attempt's, never other children's."""
    for pid in list(pids):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child (or already reaped)
            pids.discard(pid)
            continue
        if done:
            pids.discard(pid)


def end_attempt(tag: str, seen: set[int], timeout_s: float = 60.0) -> list[int]:
    """SIGKILL every process of the attempt until none is alive; returns the pids still
    alive after ``timeout_s`` (empty unless the kernel will not let them die)."""
    deadline = time.monotonic() + timeout_s
    while True:
        live = tagged(tag, seen)
        for p in live:
            kill_tree(p.pid)
        reap(seen)
        live = [p for p in live if _alive(p)] + tagged(tag, seen)
        if not live:
            return []
        if time.monotonic() > deadline:
            return sorted({p.pid for p in live})
        time.sleep(0.05)
