"""Eval loss where the user looks: the local live view (from the trainer's console line)
and `status` (from metrics.jsonl in the bucket)."""

from __future__ import annotations

import json
from types import SimpleNamespace

from rich.console import Console

from vicuna_cloud.local.live_view import LiveView, StdoutProbe, ViewState
from vicuna_cloud.run_progress import read_progress
from vicuna_cloud.storage import open_bucket


def test_live_view_shows_the_first_and_latest_eval_loss():
    from train.metrics import MetricsLog

    lines: list[str] = []
    log = MetricsLog(None, "runs/r", console=True)
    log.console = Console(file=SimpleNamespace(write=lines.append, flush=lambda: None),
                          width=200)
    for step, loss in ((0, 1.8739), (8, 1.3734)):
        log.eval(step, 8, SimpleNamespace(loss=loss, trained_tokens=1413, conversations=12,
                                          seconds=1.0))
    probe = StdoutProbe()
    for line in "".join(lines).splitlines() + ["step 8/8 loss 1.7583 lr 4.95e-06 tok/s 15"]:
        probe.feed(line)
    first, last = probe.evals()
    assert (first["step"], first["eval_loss"], last["step"], last["eval_loss"]) == \
        (0, 1.8739, 8, 1.3734)
    assert probe.last()["step"] == 8 and probe.last()["loss"] == 1.7583  # not the eval line
    out = Console(width=200, record=True)
    out.print(LiveView(ViewState(run_id="r"), probe, console=out).render())
    assert "eval loss    1.3734 at step 8 (step 0: 1.8739)" in out.export_text()


def test_status_summary_has_the_eval_loss_and_the_newest_step_record(tmp_path):
    b = open_bucket(str(tmp_path))
    recs = [{"event": "start", "step": 0, "total_steps": 4},
            {"event": "eval", "step": 0, "eval_loss": 2.5},
            {"step": 4, "loss": 1.9, "total_steps": 4},
            {"event": "eval", "step": 4, "eval_loss": 2.0}]
    b.put_bytes("runs/r/run.json", b"{}")
    b.put_bytes("runs/r/metrics.jsonl", "\n".join(json.dumps(r) for r in recs).encode())
    p = read_progress(b, "r")
    assert p.last_metrics["loss"] == 1.9
    assert p.eval_summary == "eval loss 2.5000 -> 2.0000 (step 0 -> 4)"
    assert p.summary.endswith("; eval loss 2.5000 -> 2.0000 (step 0 -> 4)")
