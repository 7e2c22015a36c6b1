"""The live view's sources: the trainer's console lines and metrics.jsonl in the bucket."""

from __future__ import annotations

import io
import json

from rich.console import Console

from vicuna_cloud.local.live_view import LiveView, MetricsTail, StdoutProbe, ViewState
from vicuna_cloud.local.supervisor import Attempt
from vicuna_cloud.storage import open_bucket


def test_stdout_probe_reads_the_trainers_step_line():
    p = StdoutProbe()
    p.feed("r1: 336 conversations (130 truncated, 0 misaligned, 0 dropped), 21 steps")
    assert p.poll().step is None and p.poll().seq == 0
    # The exact format train/metrics.py prints.
    p.feed("step 7/21 loss 9.3902 lr 1.71e-03 gnorm 0.834 tok/s 1052 trained 0.65 pad 0.00 mfu -")
    got = p.poll()
    assert (got.seq, got.step, got.total_steps) == (1, 7, 21)
    assert p.last() == {"step": 7, "total_steps": 21, "loss": 9.3902, "tokens_per_s": 1052.0}


def test_metrics_tail_skips_events_and_survives_a_rewrite(tmp_path):
    b = open_bucket(str(tmp_path))
    key = "runs/r/metrics.jsonl"
    tail = MetricsTail(b, key)
    assert tail.poll().seq == 0  # no file yet
    recs = [{"event": "start", "step": 0, "total_steps": 9}] + \
        [{"step": i, "loss": 1.0 / i, "tokens_per_s": 100.0} for i in (1, 2, 3)]
    b.put_bytes(key, ("\n".join(json.dumps(r) for r in recs) + "\n{\"step\": 4, ").encode())
    p = tail.poll()
    assert (p.step, p.total_steps, p.seq) == (3, 9, 3)  # torn last line ignored
    # A resumed trainer rewrites the file without the lost steps: seq still grows.
    b.put_bytes(key, (json.dumps(recs[0]) + "\n" + json.dumps(recs[1]) + "\n").encode())
    p2 = tail.poll()
    assert p2.step == 1 and p2.seq > p.seq


def test_live_view_counts_preemptions_and_shows_the_latest_step():
    probe = StdoutProbe()
    out = io.StringIO()
    view = LiveView(ViewState(run_id="r1", planned_preemptions=2), probe,
                    console=Console(file=out, width=120, force_terminal=False))
    probe.feed("step 5/20 loss 2.5000 lr 1e-3 gnorm 1.0 tok/s 900 trained 0.5 pad 0.0 mfu -")
    view.on_event("started", Attempt(index=0, pid=1, started=0.0))
    view.on_event("preempted", Attempt(index=0, pid=1, started=0.0, last_step=5))
    Console(file=out, width=120).print(view.render())
    text = out.getvalue()
    assert "1 of 2 simulated" in text and "5 / 20" in text and "2.5000" in text
    assert "preempted at step 5" in text


def test_stdout_probe_reads_the_trainers_start_line_and_the_view_says_where_it_resumed():
    probe = StdoutProbe()
    out = io.StringIO()
    view = LiveView(ViewState(run_id="r1", planned_preemptions=1), probe,
                    console=Console(file=out, width=120, force_terminal=False))
    with view:
        probe.feed("step 12/21 loss 2.5000 lr 1e-3 gnorm 1.0 tok/s 900 trained 0.5 pad 0.0 mfu -")
        view.on_event("preempted", Attempt(index=0, pid=1, started=0.0, last_step=12))
        view.on_event("started", Attempt(index=1, pid=2, started=0.0))
        probe.feed("r1: 336 conversations (130 truncated, 0 misaligned, 0 dropped), 21 steps, "
                   "world 2, mesh {'dp': 2}, resuming at step 9")
        view.refresh()
    lines = out.getvalue().splitlines()
    assert "resuming from step 9 (3 steps lost)" in lines
    assert probe.start_text == "336 conversations tokenized, 21 steps"
