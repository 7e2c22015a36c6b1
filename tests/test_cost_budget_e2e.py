"""Issue 13.7/13.8 end to end: a budget stop with the real trainer (torchrun, 2 CPU ranks).

Was: the stop was reported "completed" then "holds no exported model", exit 1; each
relaunch trained one more step; relaunching a completed run added an empty segment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vicuna_cloud.ledger import read_ledger
from vicuna_cloud.storage import open_bucket

pytestmark = pytest.mark.slow


def _vc(home, *args, timeout=600):
    env = dict(os.environ, VICUNA_CLOUD_HOME=str(home), COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "vicuna_cloud", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_budget_stop_exits_0_exports_and_relaunch_is_a_no_op(tmp_path):
    home, uri = tmp_path / "home", str(tmp_path / "bucket")
    # $2 per second of the local process: a $36 cap (18 s) stops a 15-step tiny run (~20 s of
    # billed time on a quiet 2-core machine) midway.
    r = _vc(home, "launch", "tiny", "--local", "--bucket", uri, "--run-id", "budget-e2e",
            "--price-per-hour", "7200", "--max-cost", "36")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "stopped: budget" in r.stdout and "exported" in r.stdout
    assert "error" not in r.stderr.lower()
    bucket = open_bucket(uri)
    segs = read_ledger(bucket, "budget-e2e").segments
    assert [s.end_reason for s in segs] == ["budget"]
    stopped_at = segs[0].last_step
    assert 0 < stopped_at < segs[0].total_steps
    assert bucket.list("runs/budget-e2e/final/")  # the last checkpoint, exported
    cost = json.loads(_vc(home, "cost", "budget-e2e", "--json").stdout)
    assert cost["status"] == "stopped: budget" and cost["verdict"] == "stopped: budget"
    assert cost["spend_usd"] <= 36.0, segs[0]  # the stop (save, upload, export) fit under
    st = json.loads(_vc(home, "status", "budget-e2e", "--json").stdout)  # the detail view
    assert "stopped: budget" in (st["phase"], st["verdict"]) and st["recoveries"] == 0
    assert st["step"] == stopped_at and st["spend_usd"] == cost["spend_usd"]
    # Relaunching: nothing trains, no segment is added.
    again = _vc(home, "launch", "tiny", "--local", "--bucket", uri, "--run-id", "budget-e2e",
                "--price-per-hour", "7200", "--max-cost", "36")
    assert again.returncode == 0 and "nothing to do" in again.stdout
    after = read_ledger(bucket, "budget-e2e").segments
    assert len(after) == 1 and after[0].last_step == stopped_at
