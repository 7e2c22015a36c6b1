"""The live view as a person sees it: in a real pseudo-terminal (pexpect) and piped.

A small real supervised run (tests/helpers/children/live_view_driver.py): the supervisor,
its simulated preemption and the LiveView are the product's; only the trained program is
the supervisor tests' stand-in for torchrun, which checkpoints every 4 steps.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

# A launcher in a pty, run to its end (seconds each): `make test`, not test-fast.
pytestmark = pytest.mark.slow

DRIVER = str(Path(__file__).parent / "helpers" / "children" / "live_view_driver.py")


def _env() -> dict:
    env = dict(os.environ)
    env.pop("COLUMNS", None)
    env["PYTHONPATH"] = str(Path(__file__).parents[1])
    return env


def test_live_view_in_a_terminal_shows_phase_resume_line_and_final_report(tmp_path):
    child = pexpect.spawn(sys.executable, [DRIVER, str(tmp_path)], env=_env(),
                          dimensions=(40, 100), timeout=60, encoding="utf-8")
    try:
        child.expect("starting workers")
        sep = r"(?:\x1b\[[0-9;]*m|\s)+"  # rich's styles sit between label and value
        child.expect(r"ETA" + sep + r"\d+s")
        child.expect(r"cost so far" + sep + r"\$\d")
        child.expect("preempted at step")
        child.expect(r"resuming from step (\d+) \((\d+) steps? lost\)")
        start, lost = int(child.match.group(1)), int(child.match.group(2))
        assert start % 4 == 0 and 0 <= lost < 4  # checkpoints every 4 steps
        child.expect("final report: completed, 1 preemption")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_piped_live_view_is_plain_lines_never_glued(tmp_path):
    out = subprocess.run([sys.executable, DRIVER, str(tmp_path)], env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "\x1b[" not in out.stdout and "\r" not in out.stdout  # no cursor games
    known = re.compile(r"^(Run vicuna-tty-run: .*\(log: .*train\.log\)|vicuna-tty-run: .+|"
                       r"step \d+/30  loss [\d.]+  ETA \S+  cost \$[\d.]+  preemptions \d of 1 simulated|"
                       r"attempt \d: preempted at step \d+|resuming from step \d+ \(\d+ steps? lost\)|"
                       r"final report: completed, 1 preemption\(s\)|)$")
    bad = [ln for ln in lines if not known.match(ln)]
    assert not bad, f"glued or unexpected lines: {bad}"
    assert lines[-1] == "final report: completed, 1 preemption(s)"
    assert any(ln.startswith("resuming from step") for ln in lines)
    assert any(ln.startswith("step 30/30") for ln in lines)
    # The log path is never wrapped onto a second line.
    assert any(ln.endswith("train.log)") and str(tmp_path) in ln for ln in lines)
