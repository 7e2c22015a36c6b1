"""The Trainer: construction builds everything, ``train()`` runs the steps, ``close()`` ends.

Read top to bottom, a run is these phases (the same on 8x A100 with NCCL and on a CPU
with gloo):

    Trainer(run_uri)     spec (validated by the pydantic model) and process group
      _build_inputs      dataset, tokenizer, tokenized examples, sampler (once per node),
                         and the held-out split's Evaluator when the data has one
      _build_model       model on the meta device, FSDP2 sharding, weights per rank
      _build_optimizer   AdamW and the warmup + cosine schedule
      _build_checkpointer  the preemption watcher and a CheckpointManager handed the
                         model, optimizer and scheduler once
      _resume            the newest committed checkpoint, if any
      _start_observers   metrics log and cost ledger on rank 0 (do-nothing ones elsewhere)
    train()              eval loss at the start; train_step() -> StepRecord, log it, eval
                         when due (every eval_every_steps, and the last step), checkpoint,
                         stop checks; then _finish: the last checkpoint and the export
    close()              always (try/finally), a crash included: checkpoints closed (the
                         one in flight abandoned on a crash, never committed), watcher
                         stopped, ledger segment ended ('failed' on a crash), metrics
                         flushed

``run()`` is what ``python -m train`` calls: build, train, close, exit code.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.distributed as dist

from vicuna_cloud.exit_codes import EXIT_BUDGET, EXIT_COMPLETED, EXIT_PREEMPTED
from vicuna_cloud.ledger import LedgerRecorder, NullLedger
from vicuna_cloud.storage.base import TRANSFERS
from vicuna_cloud.storage import open_bucket
from vicuna_cloud.supervision import supervisor_gone
from vicuna_cloud.tokenizer import load_tokenizer

from train import attention, batching, evaluate, inputs, lease as run_lease, metrics, model as model_lib, optim, parallel
from train.checkpoint import CheckpointManager, TrainProgress, committed_steps
from train.export import export_final
from train.loss import micro_batch_loss
from train.preemption import PreemptionWatcher, sources_for
from train.sampler import GlobalBatchSampler

logger = logging.getLogger("train.trainer")

#: "cancelled": the local supervisor died (vicuna_cloud/supervision.py); a relaunch resumes.
EXIT_CODES = {"completed": EXIT_COMPLETED, "budget": EXIT_BUDGET, "preempted": EXIT_PREEMPTED,
              "cancelled": EXIT_PREEMPTED}


@dataclass
class TrainerOptions:
    """Knobs that are about this process, not the run (the run lives in run.json)."""

    local_root: Optional[str] = None     # node-local cache + checkpoint staging
    stop_after_steps: Optional[int] = None  # tests: exit as if preempted after N steps
    export_shard_bytes: int = 5 * 1024**3
    metrics_flush_seconds: float = 10.0


def default_local_root() -> str:
    from platformdirs import user_cache_dir
    return os.environ.get("VICUNA_LOCAL_ROOT") or os.path.join(
        user_cache_dir("vicuna-cloud"), "node")


@dataclass(frozen=True)
class StepRecord:
    """One optimizer step, summed over every rank: what metrics.jsonl records of it."""

    step: int             # optimizer steps done, this one included
    epoch: int            # epoch of the next conversation
    loss: float           # token CE summed over the global batch / trained tokens
    lr: float             # the lr this step used
    grad_norm: float      # before clipping
    tokens: int           # real tokens (no padding, no fillers)
    trained_tokens: int
    slots: int            # token slots, padding included
    micro_batches: int    # per rank (ranks with fewer ran fillers)
    flops: float          # model FLOPs (PaLM convention)
    seconds: float

    def metrics(self, world_size: int, peak_tflops: Optional[float],
                stats: inputs.DataStats) -> dict:
        """The metrics.jsonl line (train/README.md lists the fields)."""
        return {
            "step": self.step, "epoch": self.epoch, "time": time.time(),
            "loss": self.loss, "lr": self.lr, "grad_norm": self.grad_norm,
            "tokens": self.tokens, "trained_tokens": self.trained_tokens,
            "tokens_per_s": self.tokens / self.seconds,
            "tokens_per_s_per_gpu": self.tokens / self.seconds / world_size,
            "step_seconds": self.seconds,
            "trained_fraction": self.trained_tokens / max(1.0, self.tokens),
            "padding_fraction": 1.0 - self.tokens / max(1.0, self.slots),
            "micro_batches": self.micro_batches,
            "mfu": metrics.mfu(self.flops, self.seconds, world_size, peak_tflops),
            "truncated": stats.truncated, "misaligned": stats.misaligned,
        }


class Trainer:
    """One attempt at one run on this rank: build with ``Trainer(uri)``, then ``train()``
    inside ``try`` and ``close()`` in its ``finally`` (what ``run`` does)."""

    def __init__(self, run_uri: str, opts: Optional[TrainerOptions] = None):
        self.opts = opts or TrainerOptions()
        self.spec = inputs.load_spec(run_uri)
        self.dist = parallel.init_distributed(
            want_gpus=parallel.gpus_requested(self.spec.resources.accelerators))
        self.local_root = os.path.join(self.opts.local_root or default_local_root(),
                                       self.spec.run_id)
        self.bucket = open_bucket(self.spec.bucket_uri)
        # One live writer per run: refused (LeaseHeld, exit 77) before anything is written.
        self.lease, self.generation = run_lease.take(self.dist, self.bucket, self.spec,
                                                     self.local_root)
        self.outcome: Optional[str] = None  # completed / budget / preempted; None = crashed
        self.progress = TrainProgress()
        self.segment_tokens = 0             # trained by this attempt (the ledger's count)
        self.moved: Optional[tuple[int, int]] = None  # (up, down) bytes, all ranks: egress
        self.log: Union[metrics.MetricsLog, metrics.NullMetricsLog] = metrics.NullMetricsLog()
        self.ledger: Union[LedgerRecorder, NullLedger] = NullLedger()
        self._closed = False
        self._build_inputs()
        self._build_model()
        self._build_optimizer()
        self._build_checkpointer()  # from here on there are threads and files to close
        try:
            self._resume()
            self._start_observers()
        except BaseException:
            self.close()
            raise

    # --- construction ------------------------------------------------------------------
    def _build_inputs(self) -> None:
        """Dataset, tokenizer and tokenized examples, fetched and built once per node."""
        spec, d = self.spec, self.dist
        data_path = inputs.once_per_node(
            d, lambda download: inputs.fetch_dataset(spec, self.local_root, download=download))
        self.tokenizer = inputs.once_per_node(
            d, lambda download: load_tokenizer(spec.model.tokenizer))
        self.examples, self.data_stats = inputs.once_per_node(
            d, lambda download: inputs.tokenized_dataset(
                spec, data_path, self.tokenizer, self.local_root, build=download))
        self.lengths = self.examples.lengths.tolist()
        h = spec.hyper
        self.sampler = GlobalBatchSampler(len(self.examples), h.global_batch_size, h.epochs,
                                          h.seed)
        self.total_steps = self.sampler.steps
        self.evaluator = self._build_evaluator()

    def _build_evaluator(self) -> Optional[evaluate.Evaluator]:
        """eval.jsonl beside train.jsonl (the spec names its sha256), tokenized the same
        way; None without a held-out split."""
        spec, d = self.spec, self.dist
        if not spec.dataset.eval_sha256:
            return None
        path = inputs.once_per_node(d, lambda download: inputs.fetch_dataset(
            spec, self.local_root, download=download, held_out=True))
        store, _ = inputs.once_per_node(d, lambda download: inputs.tokenized_dataset(
            spec, path, self.tokenizer, self.local_root, build=download, held_out=True))
        return evaluate.build(spec, store, d)

    def _build_model(self) -> None:
        """The model: config or base model on the meta device, FSDP2 sharding over the
        mesh, then each rank reads only its rows of the base weights."""
        spec, h, d = self.spec, self.spec.hyper, self.dist
        from_config = spec.model.base_model.startswith("config:")
        # A resume overwrites every weight from the checkpoint: fetch only the base model's
        # config then, and never read (or download) its weights.
        self.resuming = parallel.broadcast_flag(
            d.is_main and bool(committed_steps(self.bucket, spec.run_id)), d.device)
        model_dir = None if from_config else inputs.once_per_node(
            d, lambda download: model_lib.resolve_model_dir(
                spec.model.base_model, download=download, weights=not self.resuming))
        self.config = model_lib.build_config(spec, model_dir)
        model = model_lib.build_model(self.config, seed=h.seed, meta=not from_config,
                                      device=d.device)
        self.mesh = parallel.build_mesh(d, parallel.shard_size(spec, self.config, d))
        parallel.apply_fsdp(model, self.mesh, dtype=h.dtype,
                            activation_checkpointing=h.gradient_checkpointing)
        if from_config:
            model.to(d.device)
        else:
            model.to_empty(device=d.device)
            if self.resuming:
                model_lib.reset_rotary(model, d.device)
            else:
                model_lib.load_sharded_weights(model, model_dir, d.device)
        self.weights_from_checkpoint_only = self.resuming and not from_config
        model.train()
        self.model = model
        # For MFU: FLOPs per token and the GPU's peak.
        _, self.matmul_params = model_lib.count_params(self.config)
        self.head_params = self.config.vocab_size * self.config.hidden_size
        self.peak_tflops = metrics.gpu_peak_tflops(
            torch.cuda.get_device_name(d.device) if d.device.type == "cuda" else None)

    def _build_optimizer(self) -> None:
        h = self.spec.hyper
        self.optimizer = optim.build_optimizer(self.model, h)
        self.scheduler = optim.build_scheduler(self.optimizer, self.total_steps, h.warmup_ratio)

    def _build_checkpointer(self) -> None:
        """Preemption notices (cloud metadata + SIGTERM) and the checkpoint manager, handed
        what it saves and restores once."""
        d = self.dist
        self.watcher = PreemptionWatcher(sources_for(self.spec.resources.cloud))
        self.checkpointer = CheckpointManager(
            self.spec, self.model, self.optimizer, self.scheduler, rank=d.rank,
            world_size=d.world_size, watcher=self.watcher, lease=self.lease,
            local_root=run_lease.staging_root(self.local_root, self.generation))
        self.watcher.start()

    def _resume(self) -> None:
        progress = self.checkpointer.restore()
        if progress is None and self.weights_from_checkpoint_only:
            raise RuntimeError("the committed checkpoint seen at start-up is gone; its weights "
                               "were not loaded from the base model, so this attempt stops "
                               "(retry)")
        self.progress = progress or TrainProgress()
        self.first_step = self.progress.step

    def _start_observers(self) -> None:
        """Rank 0 logs metrics and writes the cost ledger for the whole job."""
        if not self.dist.is_main:
            return
        spec = self.spec
        self.log = metrics.MetricsLog(
            self.bucket, spec.run_prefix, resume_step=self.first_step,
            flush_seconds=self.opts.metrics_flush_seconds,
            wandb_config={"run_id": spec.run_id, **spec.hyper.model_dump()})
        ledger = LedgerRecorder(self.bucket, spec)
        ledger.begin(self.first_step, total_steps=self.total_steps)
        self.ledger = ledger
        self._relay_checkpoint_events()  # restores, fallbacks, deleted leftovers
        self._announce()

    def _announce(self) -> None:
        d, stats, step = self.dist, self.data_stats, self.first_step
        mesh = dict(zip(self.mesh.mesh_dim_names, self.mesh.shape))
        self.log.event("start", step, total_steps=self.total_steps, world_size=d.world_size,
                       mesh=mesh, data={k: v for k, v in vars(stats).items() if k != "notes"},
                       resumed=step > 0)
        # The same token count as `data prepare`'s manifest (and the launch header), less
        # what truncation at max_length cut, which is counted right here.
        self.log.print(f"[bold]{self.spec.run_id}[/]: {stats.kept} conversations, "
                       f"{stats.tokens:,} tokens ({stats.trained_tokens:,} trained; "
                       f"{stats.truncated} truncated at {self.spec.hyper.max_length}, "
                       f"{stats.misaligned} misaligned, "
                       f"{stats.dropped_untrained + stats.dropped_invalid} dropped), "
                       f"{self.total_steps} steps, world {d.world_size}, mesh {mesh}, "
                       f"{'resuming at step ' + str(step) if step else 'from scratch'}")

    # --- training ----------------------------------------------------------------------
    def train(self) -> str:
        """Steps until the last one, a preemption notice or the budget, then the end.
        Returns why it stopped: 'completed', 'preempted', 'budget', or 'cancelled' (the
        local supervisor is gone: a preemption that nobody will restart)."""
        reason = "completed"
        # The budget before the first step: a recovery (or relaunch) of a spent run trains
        # nothing. Collective: rank 0's ledger decides.
        self.ledger.set_stop_reserve(self.checkpointer.commit_estimate_s())
        if parallel.broadcast_flag(self.ledger.budget_exhausted(), self.dist.device):
            reason = "budget"
        self._maybe_evaluate()
        while reason == "completed" and self.progress.step < self.total_steps:
            record = self.train_step()
            if record.step % self.spec.hyper.log_every_steps == 0 \
                    or record.step == self.total_steps:
                self.log.log(record.metrics(self.dist.world_size, self.peak_tflops,
                                            self.data_stats), self.total_steps)
            self._maybe_evaluate()
            stop = self._after_step()
            if stop is not None:
                reason = stop
                break
        self._finish(reason)
        orphaned = supervisor_gone() if reason == "preempted" else None
        if orphaned:  # nobody will restart us: say so, and free the run for a relaunch
            self.log.print(f"[yellow]{orphaned}: stopped at step {self.progress.step} "
                           f"(checkpoint {self.checkpointer.last_committed_step}); the run's "
                           "lease is released, relaunch to continue")
            reason = "cancelled"
        self.outcome = reason
        return reason

    def _maybe_evaluate(self) -> None:
        """Eval loss when due (train/evaluate.py); collective, decided alike on all ranks."""
        ev, step = self.evaluator, self.progress.step
        if ev is not None and ev.due(step, self.total_steps, self.first_step):
            self.log.eval(step, self.total_steps, ev.run(self.model, micro_batch_loss))

    def _next_micro_batches(self) -> tuple[list[batching.MicroBatch], int, int]:
        """This rank's share of the next global batch, as micro-batches; ranks with fewer
        get untrained fillers so FSDP's collectives line up. Also the next data position."""
        h, d, p = self.spec.hyper, self.dist, self.progress
        idx, next_epoch, next_offset = self.sampler.batch(p.epoch, p.epoch_offset, p.step)
        mine = batching.split_across_ranks(idx, self.lengths, d.world_size)[d.rank]
        mbs = batching.make_micro_batches(
            [self.examples[i] for i in mine], h.batching, micro_batch_size=h.micro_batch_size,
            micro_batch_tokens=h.micro_batch_tokens, max_length=h.max_length)
        n_mb = parallel.all_reduce_max(len(mbs), d.device)
        mbs += [batching.filler_batch() for _ in range(n_mb - len(mbs))]
        return mbs, next_epoch, next_offset

    def _forward_backward(self, mbs: list[batching.MicroBatch], n_global: float) -> torch.Tensor:
        """Accumulate d(sum CE / trained tokens of the global batch); see train/loss.py."""
        d = self.dist
        loss_sum = torch.zeros((), dtype=torch.float64, device=d.device)
        for i, mb in enumerate(mbs):
            parallel.set_micro_batch(self.model, last=i == len(mbs) - 1)
            ce = micro_batch_loss(self.model, mb.to(d.device))
            (ce * (d.world_size / n_global)).backward()
            loss_sum += ce.detach()  # stays on the device: no sync per micro-batch
        return loss_sum

    def train_step(self) -> StepRecord:
        """One optimizer step over the next global batch; advances ``progress``."""
        d, p = self.dist, self.progress
        t0 = time.perf_counter()
        mbs, next_epoch, next_offset = self._next_micro_batches()
        n_global = parallel.all_reduce_sum([sum(mb.n_trained for mb in mbs)], d.device)[0]
        loss_sum = self._forward_backward(mbs, n_global)
        grad_norm = optim.clip_grad_norm(self.model, self.spec.hyper.grad_clip)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

        loss_g, tokens_g, slots_g, flops_g, up_g, down_g = parallel.all_reduce_sum([
            float(loss_sum), sum(mb.n_tokens for mb in mbs), sum(mb.n_slots for mb in mbs),
            metrics.step_flops(self.matmul_params, self.config.num_hidden_layers,
                               self.config.hidden_size, [s for mb in mbs for s in mb.seq_lens],
                               self.head_params,
                               sum(mb.keep.numel() * mb.input_ids.shape[0] for mb in mbs),
                               kernel=attention.kernel_name(d.device, self.spec.hyper.dtype)),
            *TRANSFERS.snapshot()], d.device)
        self.moved = (int(up_g), int(down_g))
        dt = time.perf_counter() - t0
        p.step += 1
        p.epoch, p.epoch_offset = next_epoch, next_offset
        p.tokens_trained += int(tokens_g)
        p.train_seconds += dt
        self.segment_tokens += int(tokens_g)
        # On record before anything else this step does (log, checkpoint): a VM that dies
        # now still has this step in the ledger, as the trainer's log shows it.
        self.ledger.update(step=p.step, tokens=self.segment_tokens,
                           last_checkpoint_step=self.checkpointer.last_committed_step,
                           bytes_moved=self.moved)
        return StepRecord(step=p.step, epoch=p.epoch, loss=loss_g / n_global, lr=lr,
                          grad_norm=grad_norm, tokens=int(tokens_g), trained_tokens=int(n_global),
                          slots=int(slots_g), micro_batches=len(mbs), flops=flops_g, seconds=dt)

    def _after_step(self) -> Optional[str]:
        """A checkpoint if one is due, then the reasons to stop: a preemption notice (agreed
        by all ranks), the budget (rank 0's ledger decides), the test hook. Collective."""
        p, ckpt = self.progress, self.checkpointer
        t_save = time.perf_counter()
        if ckpt.maybe_save(p):
            self.ledger.note_checkpoint(time.perf_counter() - t_save, p.step)
        if ckpt.stop_requested:
            return "preempted"
        self.ledger.update(step=p.step, tokens=self.segment_tokens,
                           last_checkpoint_step=ckpt.last_committed_step, bytes_moved=self.moved)
        self.ledger.set_stop_reserve(ckpt.commit_estimate_s())  # the look-ahead's final save
        if parallel.broadcast_flag(self.ledger.budget_exhausted(), self.dist.device):
            return "budget"
        stop_after = self.opts.stop_after_steps
        if stop_after and p.step - self.first_step >= stop_after and p.step < self.total_steps:
            return "preempted"
        return None

    def _finish(self, reason: str) -> None:
        """The end: a last checkpoint (after a notice the emergency one is already done or
        did not fit), the export when the run is complete or stopped for the budget, the last
        commit awaited, and the bytes every rank moved summed for the ledger."""
        if reason != "preempted":
            self.checkpointer.maybe_save(self.progress, force=True)
        # A budget stop exports its last checkpoint too (one that trained nothing here has
        # nothing new: an earlier stop exported it).
        trained_here = self.progress.step > self.first_step
        if reason == "completed" or (reason == "budget" and trained_here):
            uri = export_final(self.model, self.config, self.tokenizer, self.spec, self.bucket,
                               is_main=self.dist.is_main, step=self.progress.step,
                               max_shard_bytes=self.opts.export_shard_bytes)
            self.log.event("exported", self.progress.step, uri=uri)
        self.checkpointer.close()
        up, down = parallel.all_reduce_sum(list(TRANSFERS.snapshot()), self.dist.device)
        self.moved = (int(up), int(down))  # the final save, upload and export included

    # --- the end, on every path ----------------------------------------------------------
    def close(self) -> None:
        """Close what construction started, each part even when one before it fails.

        After a crash (``outcome`` is None) the checkpoint in flight is abandoned, never
        committed, and the ledger segment ends as 'failed' (not left for the cost report
        to call preempted). Errors here are logged, not raised: the error that ended
        training stays the one reported."""
        if self._closed:
            return
        self._closed = True
        crashed = self.outcome is None
        reason = self.outcome or "failed"
        for name, part in (
                ("checkpoints", lambda: self.checkpointer.close(abort=crashed)),
                ("preemption watcher", self.watcher.close),
                ("ledger", lambda: self.ledger.end(
                    reason, step=self.progress.step, tokens=self.segment_tokens,
                    last_checkpoint_step=self.checkpointer.last_committed_step,
                    bytes_moved=self.moved)),
                ("metrics", lambda: self._close_log(reason)),
                # A finished run (completed, budget) frees the lease for the next launch,
                # and so does a trainer whose supervisor is gone (cancelled).
                ("lease", lambda: self.lease and self.lease.close(
                    release=self.outcome in ("completed", "budget", "cancelled")))):
            try:
                part()
            except Exception:  # noqa: BLE001 - see the docstring
                logger.exception("closing the %s failed", name)

    def _close_log(self, reason: str) -> None:
        self._relay_checkpoint_events()
        self.log.event(reason, self.progress.step, tokens_trained=self.progress.tokens_trained)
        self.log.print(f"[bold]{reason}[/] at step {self.progress.step}/{self.total_steps}")
        self.log.close()

    def _relay_checkpoint_events(self) -> None:
        for ev in self.checkpointer.events:
            ev = dict(ev)
            self.log.event(ev.pop("event"), self.progress.step, **ev)
        self.checkpointer.events.clear()


def run(run_uri: str, opts: Optional[TrainerOptions] = None) -> int:
    """Train (or resume) the run at ``run_uri``; returns the process exit code."""
    trainer = Trainer(run_uri, opts)
    try:
        reason = trainer.train()
    finally:
        trainer.close()
    # Every rank has closed: exit together (torchrun stops the others at a non-zero exit,
    # so rank 0 must have ended the ledger and flushed the metrics first).
    dist.barrier()
    return EXIT_CODES[reason]
