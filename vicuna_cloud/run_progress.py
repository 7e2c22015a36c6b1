"""What the bucket knows about a run: last metrics line and the ledger's last segment.

Read by `vicuna-cloud status`, which must work even when SkyPilot's API server does not.
Segments are read with vicuna_cloud.ledger (oldest first); metrics.jsonl is read
tolerantly (a torn last line is skipped), since the trainer owns its fields.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterator, Optional

from vicuna_cloud import bucket_keys
from vicuna_cloud.storage import Bucket, NotFoundError, StorageError


@dataclass(frozen=True)
class BucketProgress:
    has_spec: bool
    last_metrics: Optional[dict[str, Any]]
    segments: int
    last_end_reason: Optional[str]
    checkpoints: int
    final: bool
    error: Optional[str] = None
    first_eval: Optional[dict[str, Any]] = None   # eval records (train/evaluate.py)
    last_eval: Optional[dict[str, Any]] = None

    @property
    def eval_summary(self) -> Optional[str]:
        """'eval loss 1.87 -> 1.42 (step 0 -> 8)', or None before any eval."""
        if not self.last_eval:
            return None
        a, b = self.first_eval or self.last_eval, self.last_eval
        if a is b or a.get("step") == b.get("step"):
            return f"eval loss {b['eval_loss']:.4f} (step {b.get('step')})"
        return (f"eval loss {a['eval_loss']:.4f} -> {b['eval_loss']:.4f} "
                f"(step {a.get('step')} -> {b.get('step')})")

    @property
    def summary(self) -> str:
        if self.error:
            return f"bucket unreadable: {self.error}"
        ev = f"; {self.eval_summary}" if self.eval_summary else ""
        if self.last_end_reason == "budget":
            return "stopped: budget" + (" (last checkpoint exported to final/)"
                                        if self.final else "") + ev
        if self.final:
            return "finished (final/ exported)" + ev
        if self.last_metrics:
            step = self.last_metrics.get("step")
            total = self.last_metrics.get("total_steps")
            loss = self.last_metrics.get("loss")
            parts = [f"step {step}" + (f"/{total}" if total else "")]
            if isinstance(loss, (int, float)):
                parts.append(f"loss {loss:.4f}")
            return ", ".join(parts) + ev
        if self.has_spec:
            return "no step logged yet"
        return "no run.json in the bucket"


def jsonl_records(data: bytes, *, newest_first: bool = False) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSONL file another process may be appending to: blank lines,
    a torn line being written right now, and non-objects are skipped."""
    from vicuna_cloud.records import metrics_lines

    good, _skipped = metrics_lines(data)  # untrusted: wrong types are skipped too
    for line, _rec in reversed(good) if newest_first else good:
        yield json.loads(line)


def read_progress(bucket: Bucket, run_id: str) -> BucketProgress:
    prefix = f"{bucket_keys.run_prefix(run_id)}/"
    try:
        listing = bucket.list(prefix)
    except StorageError as e:
        return BucketProgress(False, None, 0, None, 0, False, error=str(e).splitlines()[0])
    keys = {o.key for o in listing}
    has_spec = bucket_keys.run_spec(run_id) in keys
    metrics = None
    evals: list[dict[str, Any]] = []
    if bucket_keys.metrics(run_id) in keys:
        try:
            data = bucket.get_bytes(bucket_keys.metrics(run_id))
            # The newest step line: events (eval, checkpoint, exported...) come after it.
            metrics = next((r for r in jsonl_records(data, newest_first=True)
                            if "event" not in r), None)
            evals = [r for r in jsonl_records(data) if "eval_loss" in r]
        except NotFoundError:
            metrics = None
        except StorageError as e:  # listed a moment ago, unreadable now: say so, no traceback
            return BucketProgress(has_spec, None, 0, None, 0, False,
                                  error=str(e).splitlines()[0])
    from vicuna_cloud.ledger import read_ledger

    try:
        ledger = read_ledger(bucket, run_id)
    except StorageError:
        ledger = None
    segs = ledger.segments if ledger else []
    last = segs[-1] if segs else None
    last_reason = (last.end_reason or ("running or preempted" if last.end_time is None
                                       else None)) if last else None
    if metrics is None and last is not None and last.last_step:
        metrics = {"step": last.last_step, "total_steps": last.total_steps}
    elif metrics is not None and not metrics.get("total_steps") and last is not None \
            and last.total_steps:
        metrics = {**metrics, "total_steps": last.total_steps}
    ckpts = bucket_keys.committed_steps(run_id, keys)
    # Exported only once final/EXPORT.json is there and valid: the writer puts it last,
    # so a final/ holding config files alone is an export that did not finish.
    final = False
    if f"{bucket_keys.final_prefix(run_id)}EXPORT.json" in keys:
        from vicuna_cloud.exported_model import read_export_marker

        final = read_export_marker(bucket, run_id) is not None
    return BucketProgress(has_spec, metrics, len(segs), last_reason, len(ckpts), final,
                          first_eval=evals[0] if evals else None,
                          last_eval=evals[-1] if evals else None)
