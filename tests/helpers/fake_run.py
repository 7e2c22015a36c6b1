"""A run's bucket as the trainer leaves it, without training: run.json, metrics.jsonl and
ledger segments written by the real LedgerRecorder on a fake clock.

Two attempts: the first trains steps 1..12 (checkpoint at 10) and is preempted; the
second resumes from step 10 (2 steps lost, redone) and completes at step 20. Eval loss
every 5 steps.
"""

from __future__ import annotations

import json
import math

from helpers.cost import FakeClock, make_spec
from vicuna_cloud import bucket_keys
from vicuna_cloud.ledger import LedgerRecorder
from vicuna_cloud.storage import open_bucket

TOTAL = 20


def _step_line(step: int, t: float) -> dict:
    return {"step": step, "epoch": 0, "time": t, "loss": 3.0 * math.exp(-step / 8) + 0.5,
            "lr": 2e-5 * min(1.0, step / 2) * (0.5 + 0.5 * math.cos(math.pi * step / TOTAL)),
            "grad_norm": 1.0, "tokens": 4096, "trained_tokens": 2048,
            "tokens_per_s": 1000.0 + 10 * step, "step_seconds": 4.0}


def write_fake_run(uri: str, run_id: str = "vicuna-plot-run", *, finish: bool = True):
    """Returns (spec, clock); the clock is where the run left off."""
    spec = make_spec(uri, run_id=run_id, price=3.6, max_cost=5.0, heartbeat=4.0)
    bucket = open_bucket(uri)
    clock = FakeClock()
    lines: list[dict] = []
    for first, last, reason in ((0, 12, "preempted"), (10, TOTAL, "completed")):
        rec = LedgerRecorder(bucket, spec, clock=clock, env={}, background=False)
        rec.begin(first_step=first, total_steps=TOTAL)
        lines.append({"event": "start", "step": first, "time": clock(), "total_steps": TOTAL})
        clock.advance(30)
        ckpt = first or None
        for step in range(first + 1, last + 1):
            clock.advance(4)
            lines.append(_step_line(step, clock()))
            if step % 5 == 0:
                lines.append({"event": "eval", "step": step, "time": clock(),
                              "eval_loss": 3.2 * math.exp(-step / 9) + 0.7})
            if step % 10 == 0:
                ckpt = step
            rec.update(step=step, tokens=(step - first) * 4096, last_checkpoint_step=ckpt)
        if reason == "completed" and not finish:
            break
        rec.end(reason, step=last, tokens=(last - first) * 4096, last_checkpoint_step=ckpt)
        clock.advance(60)
    bucket.put_bytes(bucket_keys.metrics(run_id),
                     "".join(json.dumps(x) + "\n" for x in lines).encode())
    return spec, clock
