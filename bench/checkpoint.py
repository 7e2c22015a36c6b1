"""Checkpoint speed: training stall per checkpoint vs a synchronous save, and resume time.

    python bench/checkpoint.py                          # tiny LLaMA on CPU
    python bench/checkpoint.py --s3-emulator            # same, bucket = moto S3 on loopback
    python bench/checkpoint.py --shape 7b --layers 2 --device cuda   # 7B layer shapes, GPU

One process (world size 1): the figures that matter here are per-rank anyway (each rank
stages and uploads its own shard). It prints:
- sync: dcp.save to local disk + upload + COMMIT.json, all on the training path;
- async (what the trainer does): the time maybe_save blocks the loop, the time until the
  checkpoint is committed in the background, and how much slower the steps during the
  upload were than the steps without one (CPU contention: the upload is not free on CPU);
- resume: a fresh process's time from start to the end of its first step after restoring,
  split into imports, model build, restore and first step.
Target (issue 5): async stall <= 10% of the sync save.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

T_START = time.time()
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

SHAPES = {
    # LlamaConfig kwargs: tiny = the tiny preset's shape; 7b = LLaMA-7B layer shapes.
    "tiny": dict(hidden_size=256, intermediate_size=688, num_attention_heads=4,
                 num_key_value_heads=4, vocab_size=32000),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000),
}


def make_spec(bucket_uri: str):
    from vicuna_cloud.recipes import get_preset
    from vicuna_cloud.run_store import spec_from_preset, write_run_spec
    from vicuna_cloud.runspec import CheckpointPolicy
    from vicuna_cloud.storage import open_bucket

    spec = spec_from_preset(get_preset("tiny"), run_id="bench-ckpt", dataset_uri="/dev/null",
                            dataset_sha256=None, bucket_uri=bucket_uri, cloud="local",
                            use_spot=False, checkpoint=CheckpointPolicy(interval_seconds=1e9))
    write_run_spec(open_bucket(bucket_uri), spec)
    return spec


def build(args):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(num_hidden_layers=args.layers, max_position_embeddings=4096,
                      **SHAPES[args.shape])
    dev = torch.device(args.device)
    model = LlamaForCausalLM(cfg).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    seq = args.seq
    batch = torch.randint(0, cfg.vocab_size, (1, seq), device=dev)

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return float(loss.detach())

    return model, opt, sched, step


def sync_save(ckpt_dir: str, bucket, step: int, model, opt) -> float:
    """The naive way: write, upload and commit on the training path."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    t0 = time.perf_counter()
    msd, osd = get_state_dict(model, opt)
    local = os.path.join(ckpt_dir, f"sync-{step}")
    dcp.save({"model": msd, "optim": osd}, storage_writer=dcp.FileSystemWriter(local))
    for name in sorted(os.listdir(local)):
        bucket.put_file(f"runs/bench-ckpt/sync/step-{step:08d}/{name}", os.path.join(local, name))
    bucket.put_bytes(f"runs/bench-ckpt/sync/step-{step:08d}/COMMIT.json", b"{}")
    shutil.rmtree(local)
    return time.perf_counter() - t0


def main_bench(args) -> None:
    from train.checkpoint import CheckpointManager, TrainProgress
    from vicuna_cloud.storage import open_bucket

    work = tempfile.mkdtemp(prefix="bench-ckpt-")
    server = None
    if args.s3_emulator:  # moto on loopback: the S3 protocol, not S3's bandwidth
        sys.path.insert(0, os.path.join(REPO, "tests"))
        from helpers.cloud_servers import S3Server

        server = S3Server().start()
        os.environ.update(server.env())
        args.bucket = f"s3://{server.create_bucket()}/bench"
    bucket_uri = args.bucket or os.path.join(work, "bucket")
    spec = make_spec(bucket_uri)
    bucket = open_bucket(bucket_uri)
    model, opt, sched, step = build(args)
    n_params = sum(p.numel() for p in model.parameters())
    for _ in range(2):
        step()
    plain = []
    for _ in range(args.gap):
        t = time.perf_counter()
        step()
        plain.append(time.perf_counter() - t)

    sync = [sync_save(work, bucket, i, model, opt) for i in range(args.checkpoints)]

    ckpt = CheckpointManager(spec, model, opt, sched, rank=0, world_size=1,
                             local_root=os.path.join(work, "local"))
    progress = TrainProgress(step=100)
    stalls, totals, during = [], [], []
    for _ in range(args.checkpoints):
        progress.step += 1
        step()
        t = time.perf_counter()
        assert ckpt.maybe_save(progress, force=True)
        stalls.append(time.perf_counter() - t)
        while ckpt._inflight is not None and not ckpt._inflight.done():
            t = time.perf_counter()
            step()
            during.append(time.perf_counter() - t)
            progress.step += 1
        ckpt.wait()
        totals.append(ckpt.history[-1].total_s)
    ckpt.close()
    size = ckpt.history[-1].bytes

    # Resume: a fresh process restores the newest checkpoint and runs one step.
    t_spawn = time.time()
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--resume-child",
                          "--bucket", bucket_uri, "--device", args.device, "--shape", args.shape,
                          "--layers", str(args.layers), "--seq", str(args.seq)],
                         capture_output=True, text=True, check=True)
    child = json.loads(out.stdout.strip().splitlines()[-1])

    med = statistics.median
    fig = {
        "shape": args.shape, "layers": args.layers, "device": args.device,
        "params": n_params, "checkpoint_bytes": size,
        "step_s": med(plain),
        "sync_save_s": med(sync),
        "async_stall_s": med(stalls),
        "async_commit_s": med(totals),
        "stall_fraction_of_sync": med(stalls) / med(sync),
        "steps_during_upload": len(during),
        "step_s_during_upload": med(during) if during else None,
        "resume_to_first_step_s": child["first_step_end"] - t_spawn,
        "resume_breakdown_s": {k: child[k] for k in ("imports", "build", "restore", "first_step")},
    }
    shutil.rmtree(work, ignore_errors=True)
    if server is not None:
        server.stop()
    if args.json:
        print(json.dumps(fig, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"Checkpoint speed to {bucket_uri.split(':')[0] if '://' in bucket_uri else 'a local-dir'} "
                    f"bucket: {args.shape} x {args.layers} layers on {args.device} "
                    f"({n_params / 1e6:.1f}M params, {size / 1e6:.1f} MB per checkpoint)")
    t.add_column("figure")
    t.add_column("value", justify="right")
    t.add_row("training step", f"{fig['step_s'] * 1e3:.1f} ms")
    t.add_row("synchronous save (write+upload+commit)", f"{fig['sync_save_s'] * 1e3:.1f} ms")
    t.add_row("async: loop stall per checkpoint", f"{fig['async_stall_s'] * 1e3:.1f} ms")
    t.add_row("async: stall / sync save", f"{100 * fig['stall_fraction_of_sync']:.1f} %  (target <= 10 %)")
    t.add_row("async: save start to COMMIT", f"{fig['async_commit_s'] * 1e3:.1f} ms")
    if during:
        t.add_row("step time while uploading", f"{fig['step_s_during_upload'] * 1e3:.1f} ms "
                  f"({len(during)} steps)")
    t.add_row("resume: process start to first step", f"{fig['resume_to_first_step_s']:.2f} s")
    for k, v in fig["resume_breakdown_s"].items():
        t.add_row(f"  {k}", f"{v:.2f} s")
    Console().print(t)


def resume_child(args) -> None:
    t_imp = time.time()
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from train.checkpoint import CheckpointManager
    from vicuna_cloud.run_store import read_run_spec

    t_build = time.time()
    spec = read_run_spec(os.path.join(args.bucket, "runs/bench-ckpt/run.json"))
    model, opt, sched, step = build(args)
    t_restore = time.time()
    local = tempfile.mkdtemp(prefix="bench-resume-")
    ckpt = CheckpointManager(spec, model, opt, sched, rank=0, world_size=1, local_root=local)
    progress = ckpt.restore()
    assert progress is not None and progress.step > 100
    t_step = time.time()
    step()
    t_end = time.time()
    shutil.rmtree(local, ignore_errors=True)
    print(json.dumps({"imports": t_build - t_imp + (t_imp - T_START), "build": t_restore - t_build,
                      "restore": t_step - t_restore, "first_step": t_end - t_step,
                      "first_step_end": t_end}))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--checkpoints", type=int, default=3)
    p.add_argument("--gap", type=int, default=5, help="plain steps timed for the baseline")
    p.add_argument("--bucket", default=None, help="bucket URI (default: a temp directory)")
    p.add_argument("--s3-emulator", action="store_true",
                   help="use a moto S3 server on loopback as the bucket (needs the dev extra)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--resume-child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.resume_child:
        resume_child(a)
    else:
        main_bench(a)
