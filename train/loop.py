"""The training loop, top to bottom.

Loss normalisation (why packed and padded agree, and micro-batch boundaries don't matter):
the loss of an optimizer step is the *sum* of token cross-entropies over every trained
token of the global batch divided by the number of trained tokens in the global batch,
``N``. ``N`` is all-reduced before the first micro-batch, each micro-batch backpropagates
``sum_CE(mb) * world_size / N``, and FSDP's gradient reduction averages over ranks
(divides by ``world_size``): the accumulated gradient is exactly d(sum_CE / N). A
conversation weighs by its trained tokens (FastChat's per-micro-batch mean weighted short
replies more, and depended on how samples fell into micro-batches).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

from vicuna_cloud.exit_codes import EXIT_BUDGET, EXIT_COMPLETED, EXIT_PREEMPTED
from vicuna_cloud.storage import open_bucket
from vicuna_cloud.tokenizers import TokenizerNotFound, load_tokenizer

from train import batching, inputs, metrics, model as model_lib, optim, parallel
from train.checkpoint import CheckpointManager, TrainProgress
from train.masking import IGNORE
from train.sampler import GlobalBatchSampler


@dataclass
class LoopOptions:
    """Knobs that are about this process, not the run (the run lives in run.json)."""

    local_root: Optional[str] = None     # node-local cache + checkpoint staging
    stop_after_steps: Optional[int] = None  # tests: exit as if preempted after N steps
    export_shard_bytes: int = 5 * 1024**3
    metrics_flush_seconds: float = 10.0


def default_local_root() -> str:
    from platformdirs import user_cache_dir
    return os.environ.get("VICUNA_LOCAL_ROOT") or os.path.join(
        user_cache_dir("vicuna-cloud"), "node")


def micro_batch_loss(model, mb: batching.MicroBatch) -> torch.Tensor:
    """Summed token cross-entropy of one micro-batch (fp32 logits).

    Logits are computed only at positions some row trains (``logits_to_keep`` = those
    column indices): the prompt is ~60% of a Vicuna conversation, and a [tokens x 32000]
    fp32 logit tensor is the largest activation of the step. (A filler micro-batch keeps
    one untrained column, so the LM head stays in the graph.)"""
    out = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask,
                position_ids=mb.position_ids, use_cache=False, logits_to_keep=mb.keep)
    logits = out.logits.float()
    targets = mb.targets[:, mb.keep]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE, reduction="sum")


_CONFIG_ERRORS = (inputs.ConfigError, TokenizerNotFound)


def _collective_ok(d: parallel.Dist, error: Optional[BaseException]) -> None:
    """Raise on every rank if any rank failed, so no rank waits forever in a collective.
    A config error anywhere is a config error everywhere (exit 78: do not restart);
    anything else (a storage outage) is a plain failure (exit 1: the job may retry)."""
    config_bad, other_bad = parallel.all_reduce_sum(
        [1.0 if isinstance(error, _CONFIG_ERRORS) else 0.0,
         1.0 if error is not None and not isinstance(error, _CONFIG_ERRORS) else 0.0], d.device)
    if error is not None:
        raise error
    if config_bad:
        raise inputs.ConfigError("another rank found a bad input (see rank 0's error)")
    if other_bad:
        raise RuntimeError("another rank failed while preparing inputs (see its log)")


def _prepare_on_local_main(d: parallel.Dist, fn):
    """Run ``fn(download=True)`` on each node's first rank, then ``fn(download=False)``
    on the others once it is done (downloads and caches happen once per node)."""
    result, err = None, None
    if d.is_local_main:
        try:
            result = fn(download=True)
        except Exception as e:  # noqa: BLE001 - re-raised below, after telling the others
            err = e
    _collective_ok(d, err)
    if not d.is_local_main:
        try:
            result = fn(download=False)
        except Exception as e:  # noqa: BLE001
            err = e
    _collective_ok(d, err)
    return result


def _watcher(spec):
    """Preemption notices (cloud metadata + SIGTERM); None before train.preemption lands."""
    try:
        from train.preemption import PreemptionWatcher, sources_for
    except ImportError:
        return None
    return PreemptionWatcher(sources_for(spec.resources.cloud)).start()


def _ledger(bucket, spec, first_step: int, total: int):
    try:
        from vicuna_cloud.ledger import LedgerRecorder
    except ImportError:
        return None
    rec = LedgerRecorder(bucket, spec)
    rec.begin(first_step, total_steps=total)
    return rec


def run(run_uri: str, opts: Optional[LoopOptions] = None) -> int:
    """Train (or resume) the run at ``run_uri``; returns the process exit code."""
    opts = opts or LoopOptions()
    spec = inputs.load_spec(run_uri)
    h = spec.hyper
    if h.batching == "packed" and h.micro_batch_tokens < h.max_length:
        raise inputs.ConfigError(f"micro_batch_tokens {h.micro_batch_tokens} < max_length "
                                 f"{h.max_length}: a conversation must fit in one micro-batch; "
                                 "raise micro_batch_tokens")
    d = parallel.init_distributed()
    local_root = os.path.join(opts.local_root or default_local_root(), spec.run_id)
    bucket = open_bucket(spec.bucket_uri)

    # ---- inputs: data, tokenizer, examples ---------------------------------------------
    data_path = _prepare_on_local_main(
        d, lambda download: inputs.fetch_dataset(spec, local_root, download=download))
    tokenizer = _prepare_on_local_main(d, lambda download: load_tokenizer(spec.model.tokenizer))
    examples, stats = _prepare_on_local_main(d, lambda download: inputs.tokenized_dataset(
        spec, data_path, tokenizer, local_root, build=download))
    lengths = examples.lengths.tolist()

    # ---- model, sharding, optimizer ----------------------------------------------------
    from_config = spec.model.base_model.startswith("config:")
    model_dir = None if from_config else _prepare_on_local_main(
        d, lambda download: model_lib.resolve_model_dir(spec.model.base_model, download=download))
    config = model_lib.build_config(spec, model_dir)
    model = model_lib.build_model(config, seed=h.seed, meta=not from_config, device=d.device)
    mesh = parallel.build_mesh(d)
    parallel.apply_fsdp(model, mesh, dtype=h.dtype,
                        activation_checkpointing=h.gradient_checkpointing)
    if from_config:
        model.to(d.device)
    else:
        model.to_empty(device=d.device)
        model_lib.load_sharded_weights(model, model_dir, d.device)
    model.train()
    sampler = GlobalBatchSampler(len(examples), h.global_batch_size, h.epochs, h.seed)
    total = sampler.steps
    optimizer = optim.build_optimizer(model, h)
    scheduler = optim.build_scheduler(optimizer, total, h.warmup_ratio)

    # ---- resume ------------------------------------------------------------------------
    watcher = _watcher(spec)
    ckpt = CheckpointManager(spec, rank=d.rank, world_size=d.world_size, local_root=local_root,
                             watcher=watcher)
    progress = ckpt.restore(model, optimizer, scheduler) or TrainProgress()
    first_step = progress.step

    log = metrics.MetricsLog(bucket, spec.run_prefix, resume_step=first_step,
                             flush_seconds=opts.metrics_flush_seconds,
                             wandb_config={"run_id": spec.run_id, **h.model_dump()}) \
        if d.is_main else None
    ledger = _ledger(bucket, spec, first_step, total) if d.is_main else None
    _, matmul_params = model_lib.count_params(config)
    head_params = config.vocab_size * config.hidden_size
    peak = metrics.gpu_peak_tflops(torch.cuda.get_device_name(d.device)
                                   if d.device.type == "cuda" else None)
    if log and ckpt:  # restores, fallbacks to an older checkpoint, deleted leftovers
        for ev in ckpt.events:
            log.event(ev.pop("event"), first_step, **ev)
        ckpt.events.clear()
    if log:
        log.event("start", first_step, total_steps=total, world_size=d.world_size,
                  mesh=dict(zip(mesh.mesh_dim_names, mesh.shape)),
                  data={k: v for k, v in vars(stats).items() if k != "notes"},
                  resumed=first_step > 0)
        log.print(f"[bold]{spec.run_id}[/]: {stats.kept} conversations "
                  f"({stats.truncated} truncated, {stats.misaligned} misaligned, "
                  f"{stats.dropped_untrained + stats.dropped_invalid} dropped), "
                  f"{total} steps, world {d.world_size}, mesh "
                  f"{dict(zip(mesh.mesh_dim_names, mesh.shape))}, "
                  f"{'resuming at step ' + str(first_step) if first_step else 'from scratch'}")

    seg_tokens = 0
    reason = "completed"
    ended = False
    try:
        while progress.step < total:
            t0 = time.perf_counter()
            idx, next_epoch, next_offset = sampler.batch(progress.epoch, progress.epoch_offset,
                                                         progress.step)
            mine = batching.split_across_ranks(idx, lengths, d.world_size)[d.rank]
            mbs = batching.make_micro_batches(
                [examples[i] for i in mine], h.batching, micro_batch_size=h.micro_batch_size,
                micro_batch_tokens=h.micro_batch_tokens, max_length=h.max_length)
            n_mb = parallel.all_reduce_max(len(mbs), d.device)
            mbs += [batching.filler_batch() for _ in range(n_mb - len(mbs))]
            n_global = parallel.all_reduce_sum([sum(mb.n_trained for mb in mbs)], d.device)[0]

            loss_sum = torch.zeros((), dtype=torch.float64, device=d.device)
            for mb in mbs:
                ce = micro_batch_loss(model, mb.to(d.device))
                (ce * (d.world_size / n_global)).backward()
                loss_sum += ce.detach()  # stays on the device: no sync per micro-batch
            grad_norm = optim.clip_grad_norm(model, h.grad_clip)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            loss_g, tokens_g, slots_g, flops_g = parallel.all_reduce_sum([
                float(loss_sum), sum(mb.n_tokens for mb in mbs), sum(mb.n_slots for mb in mbs),
                metrics.step_flops(matmul_params, config.num_hidden_layers, config.hidden_size,
                                   [s for mb in mbs for s in mb.seq_lens], head_params,
                                   sum(mb.keep.numel() * mb.input_ids.shape[0] for mb in mbs))],
                d.device)
            dt = time.perf_counter() - t0
            progress.step += 1
            progress.epoch, progress.epoch_offset = next_epoch, next_offset
            progress.tokens_trained += int(tokens_g)
            progress.train_seconds += dt
            seg_tokens += int(tokens_g)

            if log and (progress.step % h.log_every_steps == 0 or progress.step == total):
                log.log({
                    "step": progress.step, "epoch": progress.epoch, "time": time.time(),
                    "loss": loss_g / n_global, "lr": lr, "grad_norm": grad_norm,
                    "tokens": int(tokens_g), "trained_tokens": int(n_global),
                    "tokens_per_s": tokens_g / dt, "tokens_per_s_per_gpu": tokens_g / dt / d.world_size,
                    "step_seconds": dt,
                    "trained_fraction": n_global / max(1.0, tokens_g),
                    "padding_fraction": 1.0 - tokens_g / max(1.0, slots_g),
                    "micro_batches": n_mb,
                    "mfu": metrics.mfu(flops_g, dt, d.world_size, peak),
                    "truncated": stats.truncated, "misaligned": stats.misaligned,
                }, total)

            if ckpt:
                t_save = time.perf_counter()
                if ckpt.maybe_save(progress, model, optimizer, scheduler) and ledger:
                    ledger.note_checkpoint(time.perf_counter() - t_save, progress.step)
                if ckpt.stop_requested:  # preemption notice or SIGTERM, agreed by all ranks
                    reason = "preempted"
                    break
            last_ckpt = ckpt.last_committed_step if ckpt else None
            stop_budget = False
            if ledger:
                ledger.update(step=progress.step, tokens=seg_tokens, last_checkpoint_step=last_ckpt)
                stop_budget = ledger.budget_exhausted()
            if parallel.broadcast_flag(stop_budget, d.device):
                reason = "budget"
                break
            if opts.stop_after_steps and progress.step - first_step >= opts.stop_after_steps \
                    and progress.step < total:
                reason = "preempted"
                break

        # ---- the end: checkpoint, export, ledger --------------------------------------------
        if ckpt and reason != "preempted":
            ckpt.maybe_save(progress, model, optimizer, scheduler, force=True)
        if reason == "completed":
            uri = model_lib_export(model, config, tokenizer, spec, bucket, d, progress.step, opts)
            if log:
                log.event("exported", progress.step, uri=uri)
        if ckpt:
            ckpt.close()
            for ev in ckpt.events if log else ():
                log.event(ev.pop("event"), progress.step, **ev)
        if watcher:
            watcher.close()
        last_ckpt = ckpt.last_committed_step if ckpt else None
        if ledger:
            ledger.end(reason, step=progress.step, tokens=seg_tokens, last_checkpoint_step=last_ckpt)
        ended = True
        if log:
            log.event(reason, progress.step, tokens_trained=progress.tokens_trained)
            log.print(f"[bold]{reason}[/] at step {progress.step}/{total}")
            log.close()
    finally:
        # A crash (a storage outage, 3 failed checkpoints, OOM) still closes this segment
        # of the cost ledger as 'failed', not left for the report to call preempted.
        if ledger and not ended:
            ledger.end("failed", step=progress.step, tokens=seg_tokens,
                       last_checkpoint_step=ckpt.last_committed_step if ckpt else None)
    dist.barrier()
    return {"completed": EXIT_COMPLETED, "budget": EXIT_BUDGET}.get(reason, EXIT_PREEMPTED)


def model_lib_export(model, config, tokenizer, spec, bucket, d, step, opts) -> Optional[str]:
    from train.export import export_final
    return export_final(model, config, tokenizer, spec, bucket, is_main=d.is_main, step=step,
                        max_shard_bytes=opts.export_shard_bytes)
