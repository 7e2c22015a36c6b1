"""Per-step metrics: console (rich), ``runs/<id>/metrics.jsonl`` in the bucket, and W&B.

Object stores have no append, so rank 0 keeps the file's lines in memory and re-uploads
the whole file every ``flush_seconds`` (and at the end) from a background thread, so a
slow object store never holds up a step (the other ranks would wait for rank 0 in the next
collective); a resumed run keeps the earlier
lines up to its resume step and drops the ones of work that was lost.

MFU: FLOPs per token = 6N (N = parameters in matmuls: all but the input embedding; the LM
head's share only where logits are computed) + the attention the kernel in use computes,
12·L·H·c, c = (s + 1) / 2 keys per query for the causal per-document varlen kernel (s =
the token's own conversation length; vicuna_cloud/costs/flops.py), over the GPUs' dense
bf16 peak from vicuna_cloud.recipes.GPU_SPECS. On CPU there is no peak: mfu = null.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Optional, Sequence

from vicuna_cloud import bucket_keys
from vicuna_cloud.costs.flops import attention_flops_per_token
from vicuna_cloud.recipes import GPU_SPECS
from vicuna_cloud.records import metrics_lines
from vicuna_cloud.storage import Bucket, NotFoundError, StorageError

METRICS_KEY = bucket_keys.METRICS_FILE


def step_flops(matmul_params: int, n_layers: int, hidden: int, seq_lens: Sequence[int],
               head_params: int = 0, head_tokens: Optional[int] = None, *,
               kernel: str = "varlen", row_tokens: Optional[int] = None) -> float:
    """Model FLOPs of a step. The LM head (``head_params``) runs only on ``head_tokens``
    positions (the trainer computes logits where it trains), the rest on every token;
    attention as ``kernel`` computes it (vicuna_cloud.costs.flops)."""
    tokens = sum(seq_lens)
    head_tokens = tokens if head_tokens is None else head_tokens
    attn = sum(s * attention_flops_per_token(kernel, n_layers, hidden, s, row_tokens)
               for s in seq_lens)
    return 6.0 * (matmul_params - head_params) * tokens + 6.0 * head_params * head_tokens + attn


def gpu_peak_tflops(device_name: Optional[str]) -> Optional[float]:
    """Dense bf16 peak of one GPU from its CUDA device name, None on CPU or unknown."""
    if not device_name:
        return None
    name = device_name.upper()
    for key in sorted(GPU_SPECS, key=len, reverse=True):
        base = key.split("-")[0]
        if key != "cpu" and base in name and GPU_SPECS[key][1] > 0:
            return GPU_SPECS[key][1]
    return None


def mfu(flops: float, seconds: float, n_gpus: int, peak_tflops: Optional[float]) -> Optional[float]:
    if not peak_tflops or seconds <= 0:
        return None
    return flops / seconds / (n_gpus * peak_tflops * 1e12)


def _quiet_on_broken_pipe_console():
    """rich's Console exits the process (SystemExit 1) when its pipe breaks; the reader of
    ours is the launcher, and a SIGKILLed launcher must not end training mid-step: the
    console goes quiet instead (the trainer then stops by itself, train/preemption.py)."""
    from rich.console import Console

    class TrainerConsole(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True

    return TrainerConsole(stderr=True, soft_wrap=True)


class MetricsLog:
    """Rank 0's metrics sink. Other ranks hold a NullMetricsLog instead."""

    def __init__(self, bucket: Optional[Bucket], run_prefix: str, *, resume_step: int = 0,
                 flush_seconds: float = 10.0, console: bool = True, wandb_config: Optional[dict] = None):
        self.bucket = bucket
        self.key = f"{run_prefix}/{METRICS_KEY}"
        self.flush_seconds = flush_seconds
        self.lines: list[str] = []
        self._last_flush = time.monotonic()
        self._dirty = False
        self._lock = threading.Lock()         # lines and _dirty
        self._upload_lock = threading.Lock()  # one upload at a time, newest snapshot last
        self._uploader: Optional[threading.Thread] = None
        self.skipped_lines = 0
        if bucket is not None:
            try:
                # Untrusted bytes (records.metrics_lines): a torn, non-UTF-8, non-object
                # or wrongly typed line is dropped, never a crash: telemetry must not
                # stop training.
                good, self.skipped_lines = metrics_lines(bucket.get_bytes(self.key))
                self.lines = [line for line, rec in good if (rec.step or 0) <= resume_step]
            except NotFoundError:
                pass
        self.console = None
        if console:
            self.console = _quiet_on_broken_pipe_console()
        self.wandb = None
        if wandb_config is not None and os.environ.get("WANDB_API_KEY"):
            try:
                import wandb  # optional: never a hard dependency
                self.wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "vicuna-cloud"),
                                        id=wandb_config.get("run_id"), resume="allow",
                                        config=wandb_config)
            except Exception as e:  # noqa: BLE001 - W&B trouble must not stop training
                self.print(f"[yellow]W&B disabled: {str(e).splitlines()[0]}")

    def print(self, msg: str) -> None:
        self._say(msg)

    def _say(self, msg: str) -> None:
        """The console line; a console that went away (a pipe to a SIGKILLed launcher)
        is dropped, never a crash: telemetry must not stop training."""
        if self.console is None:
            return
        try:
            self.console.print(msg, highlight=False)
        except OSError:
            self.console = None

    def event(self, kind: str, step: int, **fields) -> None:
        self._append({"event": kind, "step": step, "time": time.time(), **fields})
        self.flush()

    def eval(self, step: int, total_steps: int, result) -> None:
        """An eval record (train/evaluate.py) in metrics.jsonl and on the console."""
        self._append({"event": "eval", "step": step, "time": time.time(),
                      "eval_loss": result.loss, "eval_tokens": result.trained_tokens,
                      "eval_conversations": result.conversations,
                      "eval_seconds": result.seconds})
        self._say(f"eval step {step}/{total_steps} eval_loss {result.loss:.4f} "
                  f"({result.conversations} held-out conversations, {result.trained_tokens} "
                  f"trained tokens, {result.seconds:.1f} s)")
        if self.wandb is not None:
            self.wandb.log({"eval_loss": result.loss}, step=step)
        self.flush()

    def log(self, rec: dict, total_steps: int) -> None:
        self._append(rec)
        if self.console is not None:
            m = rec.get("mfu")
            self._say(
                f"step {rec['step']}/{total_steps} loss {rec['loss']:.4f} lr {rec['lr']:.2e} "
                f"gnorm {rec['grad_norm']:.3f} tok/s {rec['tokens_per_s']:.0f} "
                f"trained {rec['trained_fraction']:.2f} pad {rec['padding_fraction']:.2f} "
                f"mfu {'-' if m is None else f'{100 * m:.1f}%'}")
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in rec.items() if isinstance(v, (int, float))},
                           step=rec["step"])
        if time.monotonic() - self._last_flush >= self.flush_seconds and not (
                self._uploader is not None and self._uploader.is_alive()):
            self._last_flush = time.monotonic()
            self._uploader = threading.Thread(target=self.flush, name="metrics-upload",
                                              daemon=True)
            self._uploader.start()

    def _append(self, rec: dict) -> None:
        line = json.dumps(rec, separators=(",", ":"))
        with self._lock:
            self.lines.append(line)
            self._dirty = True

    def flush(self) -> None:
        """Upload the whole file. A failed upload (after the bucket's own retries) is
        reported and retried at the next flush: metrics never stop training."""
        if self.bucket is None:
            return
        with self._upload_lock:  # the snapshot is taken inside: a later upload has more
            with self._lock:
                if not self._dirty:
                    return
                data = ("\n".join(self.lines) + "\n").encode()
                self._dirty = False
            self._last_flush = time.monotonic()
            try:
                self.bucket.put_bytes(self.key, data)
            except StorageError as e:
                with self._lock:
                    self._dirty = True
                self.print(f"[yellow]metrics upload failed, will retry: {str(e).splitlines()[0]}")

    def close(self) -> None:
        if self._uploader is not None:
            self._uploader.join()
        self.flush()
        if self.wandb is not None:
            self.wandb.finish()


class NullMetricsLog:
    """What ranks other than 0 log to: the same calls, doing nothing (no branch per call)."""

    def print(self, msg: str) -> None:
        pass

    def event(self, kind: str, step: int, **fields) -> None:
        pass

    def log(self, rec: dict, total_steps: int) -> None:
        pass

    def eval(self, step: int, total_steps: int, result) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
