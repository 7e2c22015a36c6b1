"""vicuna_cloud/supervision.py: how a trainer tells that its local supervisor is gone
(issue 14: orphaned trainers of a SIGKILLed launcher). Real processes, real /proc."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from vicuna_cloud import supervision
from vicuna_cloud.supervision import SUPERVISOR_ENV, gone, supervisor_gone, token_for_self

pytestmark = pytest.mark.skipif(not supervision.supported(), reason="Linux /proc only")


def _token_of(pid: int) -> str:
    out = subprocess.run([sys.executable, "-c", f"import os\nfrom vicuna_cloud.supervision "
                          f"import _start_ticks\nprint(_start_ticks({pid}))"],
                         capture_output=True, text=True, check=True).stdout.strip()
    return f"{pid}:{out}"


def test_a_live_supervisor_is_not_gone_and_a_killed_one_is():
    assert gone(token_for_self()) is None
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    token = _token_of(child.pid)
    assert gone(token) is None
    child.send_signal(signal.SIGKILL)
    time.sleep(0.2)  # not reaped yet: a zombie is gone too
    assert "launcher pid" in (gone(token) or "")
    child.wait()
    assert "launcher pid" in (gone(token) or "")


def test_a_reused_pid_is_not_the_supervisor():
    pid, _, ticks = token_for_self().partition(":")
    assert gone(f"{pid}:{int(ticks) - 1}") is not None  # same pid, another process


def test_no_token_or_a_garbage_one_is_never_a_false_alarm():
    assert supervisor_gone({}) is None
    assert supervisor_gone({SUPERVISOR_ENV: "not-a-pid"}) is None
    assert supervisor_gone({SUPERVISOR_ENV: "12:"}) is None


def test_the_supervisor_hands_its_token_to_the_attempt(tmp_path):
    from vicuna_cloud.local.supervisor import Supervisor, SupervisorConfig

    out = tmp_path / "env"
    cmd = [sys.executable, "-c", f"import os; open({str(out)!r}, 'w').write("
           f"os.environ[{SUPERVISOR_ENV!r}])"]
    res = Supervisor(cmd, config=SupervisorConfig(), temp_root=str(tmp_path / "t")).run()
    assert res.exit_code == 0
    assert out.read_text() == token_for_self()
