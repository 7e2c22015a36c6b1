"""The `small` preset end to end with real pretrained weights (SmolLM2-135M-Instruct):
`launch small --local` through launch_local, on fewer steps than `make demo`
(model_helpers.SHORT_OVERRIDES: same model, data and template; a checkpoint every step).

- ``p0``: uninterrupted; ``p2``: two simulated preemptions (SIGKILL of the whole tree).
Both must end with identical weights (tensor by tensor, and the export's weights hash);
the run's end says so; eval loss is logged at the start, every 2 steps and at the end;
`status` shows it; `chat` answers a question the base knew.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.model import launch_small
from test_local_e2e import assert_same_weights, weights

# The real 135M model on 2 CPU processes: minutes per run, far more on a loaded machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


@pytest.fixture(scope="module")
def home(small_p0) -> Path:
    return small_p0.home


@pytest.fixture(scope="module")
def bucket(small_p0) -> str:
    return small_p0.bucket


@pytest.fixture(scope="module")
def p0(small_p0):
    """The session's uninterrupted run (conftest.small_p0; the eval test answers with it)."""
    return small_p0.result


@pytest.fixture(scope="module")
def p2(home, bucket, p0):
    # p0 shows the before/after (its test reads it); p2's test is about the weights.
    r = launch_small(home, bucket, "small-p2", preemptions=2, before_after=False)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return r


def metrics(bucket: str, run_id: str) -> list[dict]:
    text = (Path(bucket) / "runs" / run_id / "metrics.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_eval_loss_at_start_every_2_steps_and_end_and_it_falls(p0, bucket):
    recs = metrics(bucket, "small-p0")
    total = next(r["total_steps"] for r in recs if r.get("event") == "start")
    evals = [r for r in recs if "eval_loss" in r]
    assert [r["step"] for r in evals] == sorted({0, total, *range(2, total + 1, 2)})
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    assert len({r["eval_tokens"] for r in evals}) == 1 and evals[0]["eval_tokens"] > 0
    out = p0.stdout
    assert "Eval loss on" in out and f"{evals[0]['eval_loss']:.4f}" in out
    assert "Replies ending with EOS" in out
    assert "this uninterrupted run is now the reference" in out


def test_two_preemptions_end_with_the_weights_of_the_uninterrupted_run(p0, p2, home, bucket):
    assert "2 of 2 simulated" in p2.stdout
    assert_same_weights(weights(bucket, "small-p0", home), weights(bucket, "small-p2", home))
    marks = [json.loads((Path(bucket) / "runs" / r / "final" / "EXPORT.json").read_text())
             for r in ("small-p0", "small-p2")]
    assert marks[0]["weights_sha256"] == marks[1]["weights_sha256"]
    last = p2.stdout.strip().splitlines()[-1]
    assert "EQUAL those of the uninterrupted run small-p0" in last, p2.stdout[-2000:]
    from vicuna_cloud.ledger import read_ledger
    from vicuna_cloud.storage import open_bucket
    segments = read_ledger(open_bucket(bucket), "small-p2").segments
    # What each attempt did, so a failure says why there were more (or fewer) of them.
    why = [(s.attempt, s.first_step, s.last_step, s.end_reason) for s in segments]
    assert len(segments) == 3, f"{why}\n{p2.stdout[-6000:]}"


def test_status_shows_the_eval_loss(p0, home, bucket):
    def status(*args):
        r = subprocess.run([sys.executable, "-m", "vicuna_cloud", "status", *args, "--json"],
                           env=dict(os.environ, VICUNA_CLOUD_HOME=str(home)),
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    # The list view (`status --json`) has one row per run; `status RUN --json` is the detail.
    row = next(x for x in status()["runs"] if x["run_id"] == "small-p0")
    assert "eval loss" in row["progress"]
    assert row["eval"]["first"]["step"] == 0 and row["eval"]["last"]["eval_loss"] > 0
    assert status("small-p0")["eval_loss"] == row["eval"]["last"]["eval_loss"]


def test_chat_answers_the_capital_of_france(p0, home, bucket):
    r = subprocess.run([sys.executable, "-m", "vicuna_cloud", "chat", "small-p0", "--bucket",
                        bucket, "--prompt", "What is the capital of France?"],
                       env=dict(os.environ, VICUNA_CLOUD_HOME=str(home)), capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Paris" in r.stdout, r.stdout
