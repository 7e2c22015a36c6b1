"""Issue 14 #8: a hypothesis fuzz of `data prepare` with nesting and size attacks, in a
child process under an address-space limit (tests/fuzz_prepare_child.py).

Must hold: no exception but a one-line DataError, and peak memory within the bound the
README states (baseline + a small multiple of --max-record-mb; 1 MiB here, while attack
records reach 20 MiB and 300,000 levels of nesting). Before the bounded reader, 400 KB of
nested arrays took 23.6 GB and a 200 MB line peaked at 4 GB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAX_RECORD_MIB = 1
BOUND_MIB = 32 + 16 * MAX_RECORD_MIB


@pytest.mark.slow  # 40 hypothesis examples of multi-MiB attacks in a child process
def test_prepare_fuzz_no_traceback_and_bounded_memory():
    env = dict(os.environ, FUZZ_EXAMPLES="40", FUZZ_AS_LIMIT_GB="6", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    r = subprocess.run([sys.executable, str(REPO / "tests" / "fuzz_prepare_child.py")],
                       env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["examples"] == 40
    assert res["n_failures"] == 0, res["failures"]
    grew = res["peak_mib"] - res["baseline_mib"]
    assert grew < BOUND_MIB, res
