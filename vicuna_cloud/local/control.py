"""`logs` and `cancel` for a run launched with `launch --local` on this machine.

The launcher writes its pid next to the run's train.log (``paths.run_dir(run_id)``) for as
long as it supervises the run. `cancel` sends that process SIGTERM, which the supervisor
treats as Ctrl-C: the trainer checkpoints, the segment is recorded as "cancelled" and the
launcher exits. `logs` prints train.log, and with ``follow`` keeps printing what is
appended until the launcher is gone.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Callable, Optional, TextIO

from vicuna_cloud import paths

PID_FILE = "launcher.pid"


def pid_path(run_id: str) -> str:
    return os.path.join(paths.run_dir(run_id), PID_FILE)


def log_path(run_id: str) -> str:
    return os.path.join(paths.run_dir(run_id), "train.log")


def write_pid(run_id: str) -> str:
    path = pid_path(run_id)
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    return path


def clear_pid(run_id: str) -> None:
    try:
        if read_pid(run_id) == os.getpid():
            os.remove(pid_path(run_id))
    except OSError:
        pass


def read_pid(run_id: str) -> Optional[int]:
    try:
        with open(pid_path(run_id)) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def launcher_alive(run_id: str) -> Optional[int]:
    """The launcher's pid while it is running this run (a stale file from a crash, or a
    reused pid that is not a vicuna-cloud launcher, gives None)."""
    import psutil

    pid = read_pid(run_id)
    if pid is None:
        return None
    try:
        p = psutil.Process(pid)
        cmd = " ".join(p.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return pid if ("vicuna" in cmd and p.status() != psutil.STATUS_ZOMBIE) else None


def cancel(run_id: str, timeout: float = 120.0) -> Optional[int]:
    """SIGTERM the launcher and wait for it to exit; its pid, or None if none was running."""
    import psutil

    pid = launcher_alive(run_id)
    if pid is None:
        return None
    os.kill(pid, signal.SIGTERM)
    try:
        psutil.Process(pid).wait(timeout)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        raise TimeoutError(f"the launcher (pid {pid}) is still checkpointing after {timeout:.0f} s; "
                           "run `vicuna-cloud cancel` again to wait more") from None
    return pid


def follow_log(run_id: str, *, follow: bool = True, out: Optional[TextIO] = None,
               poll: float = 0.5, sleep: Callable[[float], None] = time.sleep) -> None:
    """Print train.log; with ``follow``, keep printing until the launcher has exited."""
    out = out or sys.stdout
    path = log_path(run_id)
    with open(path, "r", errors="replace") as f:
        while True:
            chunk = f.read()
            if chunk:
                out.write(chunk)
                out.flush()
            if not follow:
                return
            if launcher_alive(run_id) is None:
                rest = f.read()
                if rest:
                    out.write(rest)
                    out.flush()
                return
            sleep(poll)
