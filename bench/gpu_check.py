"""GPU readiness check, one command: throughput and MFU of the trainer's own step, packed
equals padded, checkpoint stall, bit-exact resume. Prints a table and writes JSON that
`vicuna-cloud cost --estimate PRESET --mfu-from FILE` reads.

    python bench/gpu_check.py --out gpu_check.json          # CUDA: < 8 min on one H100/H200
    python bench/gpu_check.py --smoke --out smoke.json      # CPU: tiny shapes, < 2 min

(a) a LLaMA-7B-shaped model from config (random weights, bf16 compute over fp32 master
    weights through FSDP2, activation checkpointing, fused AdamW: the trainer's parts) on
    one GPU, packed micro-batches of 4,096 and 8,192 tokens of ShareGPT-like lengths,
    ``--steps`` optimizer steps each, with the trainer's attention kernel and with the dense
    [T, T] mask path transformers builds under sdpa, in the same run: tokens/s, MFU, peak
    memory. Layers: as many of the 32 as fit the card (``--layers``; state is 16 bytes per
    parameter). MFU counts useful FLOPs for both paths (costs/flops.py, causal per
    document), so the two are comparable and the estimate converts it back exactly.
(b) packed vs padded: loss and gradients of the same conversations, small model.
(c) checkpoint stall: how long CheckpointManager.maybe_save blocks the step vs a
    synchronous save (write + upload + commit) of the same state.
(d) resume: 6 steps straight vs 3 steps, checkpoint, fresh model restored, 3 more steps:
    are the final weights bit-identical?
The JSON's ``mfu`` is (a)'s trainer-kernel MFU at the largest micro-batch (null on CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from train import attention, batching, metrics, model as model_lib, optim, parallel  # noqa: E402
from train.loss import micro_batch_loss  # noqa: E402
from train.masking import IGNORE, Example  # noqa: E402
from vicuna_cloud.costs.estimate import GPU_CHECK_KIND  # noqa: E402
from vicuna_cloud.runspec import Hyperparameters  # noqa: E402

SHAPE_7B = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
                num_key_value_heads=32, vocab_size=32000)
SHAPE_SMALL = dict(hidden_size=256, intermediate_size=688, num_attention_heads=4,
                   num_key_value_heads=4, vocab_size=32000)
SHAPE_TINY = dict(hidden_size=64, intermediate_size=176, num_attention_heads=4,
                  num_key_value_heads=4, vocab_size=2048)  # smoke: a small vocabulary
GIB = 2**30


# ---- shared parts --------------------------------------------------------------------------
def init(device: str) -> parallel.Dist:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"),
                 ("LOCAL_WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"),
                 ("MASTER_PORT", str(port))):
        os.environ.setdefault(k, v)
    return parallel.init_distributed(want_gpus=device == "cuda")


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def build(shape: dict, layers: int, d: parallel.Dist, dtype: str, seed: int = 0,
          ac: bool = True, max_pos: int = 8192):
    """The trainer's model path: meta init, FSDP2 (world 1), materialise, init on device."""
    from transformers import LlamaConfig

    config = LlamaConfig(num_hidden_layers=layers, max_position_embeddings=max_pos,
                         rms_norm_eps=1e-6, tie_word_embeddings=False, **shape)
    config.use_cache = False
    model = model_lib.build_model(config, seed=seed, meta=True, device=d.device)
    parallel.apply_fsdp(model, parallel.build_mesh(d), dtype=dtype, activation_checkpointing=ac)
    model.to_empty(device=d.device)
    g = torch.Generator(device=d.device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            local = p.to_local() if hasattr(p, "to_local") else p
            if local.dim() == 1:
                local.fill_(1.0)
            else:
                local.normal_(0.0, 0.02, generator=g)
    model_lib.reset_rotary(model, d.device)
    model.train()
    return model, config


def examples(n_tokens: int, max_len: int, seed: int, vocab: int = 32000) -> list[Example]:
    """ShareGPT-like lengths (lognormal, median ~700, capped), ~40% of tokens trained."""
    rng = np.random.default_rng(seed)
    out, total = [], 0
    while total < n_tokens:
        n = int(min(max_len, max(16, rng.lognormal(6.55, 0.8))))
        ids = rng.integers(3, vocab, n).tolist()
        tgt = [IGNORE] * n
        start = int(n * 0.6)
        for j in range(start, n - 1):
            tgt[j] = ids[j + 1]
        out.append(Example(ids, tgt))
        total += n
    return out


def hyper(lr: float = 1e-4) -> Hyperparameters:
    return Hyperparameters(learning_rate=lr, weight_decay=0.0)


def train_step(model, opt, mbs, dev) -> float:
    n = max(1, sum(mb.n_trained for mb in mbs))
    loss = torch.zeros((), device=dev, dtype=torch.float64)
    for i, mb in enumerate(mbs):
        parallel.set_micro_batch(model, last=i == len(mbs) - 1)
        ce = micro_batch_loss(model, mb.to(dev))
        (ce / n).backward()
        loss += ce.detach()
    optim.clip_grad_norm(model, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss) / n


# ---- (a) throughput --------------------------------------------------------------------------
def auto_layers(dev: torch.device, requested: int | None) -> int:
    if requested:
        return requested
    if dev.type != "cuda":
        return 2
    free = torch.cuda.get_device_properties(dev).total_memory
    per_layer = 202_383_360 * 16          # params of one 7B layer x 16 bytes of state
    fixed = 2 * 131_072_000 * 16 + 12 * GIB  # embedding + head state, activations, logits
    return max(1, min(32, int((0.75 * free - fixed) // per_layer)))


def throughput(args, d: parallel.Dist) -> list[dict]:
    dev = d.device
    shape = SHAPE_7B if not args.smoke else SHAPE_TINY
    layers = auto_layers(dev, args.layers)
    model, config = build(shape, layers, d, "bf16" if dev.type == "cuda" else "fp32")
    opt = optim.build_optimizer(model, hyper())
    total, matmul = model_lib.count_params(config)
    head = config.vocab_size * config.hidden_size
    peak = metrics.gpu_peak_tflops(torch.cuda.get_device_name(dev) if dev.type == "cuda" else None)
    rows = []
    for tokens in args.tokens:
        rows_of = batching.packed_batches(examples(tokens * (args.steps + 2) * 2, min(tokens, 4096),
                                                   seed=tokens, vocab=config.vocab_size), tokens)
        for path in ("flex_or_varlen", "dense"):
            dense = path == "dense"
            model.config._attn_implementation = "sdpa" if dense else attention.IMPL
            kernel = "dense" if dense else attention.select_kernel(
                dev, torch.bfloat16 if dev.type == "cuda" else torch.float32)
            if dev.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(dev)
            warm, steps = 2, args.steps
            t0 = None
            n_tok = flops = 0
            for s in range(warm + steps):
                if s == warm:
                    sync(dev)
                    t0 = time.perf_counter()
                mb = rows_of[s % len(rows_of)]
                train_step(model, opt, [mb], dev)
                if s >= warm:
                    n_tok += mb.n_tokens
                    flops += metrics.step_flops(matmul, layers, config.hidden_size, mb.seq_lens,
                                                head, mb.keep.numel())
            sync(dev)
            dt = time.perf_counter() - t0
            rows.append({
                "check": "throughput", "tokens_per_micro_batch": tokens, "kernel": kernel,
                "layers": layers, "params": total, "steps": steps,
                "tokens_per_s": n_tok / dt, "step_ms": dt / steps * 1e3,
                "mfu": metrics.mfu(flops, dt, 1, peak),
                "peak_memory_gib": (torch.cuda.max_memory_allocated(dev) / GIB
                                    if dev.type == "cuda" else None)})
    model.config._attn_implementation = attention.IMPL
    del model, opt
    return rows


# ---- (b) packed == padded ----------------------------------------------------------------
def packed_vs_padded(args, d: parallel.Dist) -> dict:
    dev = d.device
    dtype = "bf16" if dev.type == "cuda" else "fp32"
    shape = SHAPE_SMALL if not args.smoke else SHAPE_TINY
    model, _ = build(shape, 4 if not args.smoke else 2, d, dtype, seed=1, ac=False)
    exs = examples(1600 if not args.smoke else 600, 300, seed=7, vocab=shape["vocab_size"])

    def run(mbs):
        n = sum(mb.n_trained for mb in mbs)
        model.zero_grad(set_to_none=True)
        loss = 0.0
        for i, mb in enumerate(mbs):
            parallel.set_micro_batch(model, last=i == len(mbs) - 1)
            ce = micro_batch_loss(model, mb.to(dev))
            (ce / n).backward()
            loss += float(ce.detach())
        return loss / n, {k: p.grad.full_tensor().float().clone() if hasattr(p.grad, "full_tensor")
                          else p.grad.float().clone() for k, p in model.named_parameters()}

    l_pack, g_pack = run(batching.packed_batches(exs, 1024))
    l_pad, g_pad = run(batching.padded_batches(exs, 2, 300))
    rel = max(float((g_pack[k] - g_pad[k]).abs().max() / g_pad[k].abs().max().clamp_min(1e-30))
              for k in g_pad)
    tol = 2e-2 if dtype == "bf16" else 1e-4
    del model
    return {"check": "packed_vs_padded", "dtype": dtype,
            "kernel": attention.kernel_name(dev, dtype), "loss_packed": l_pack,
            "loss_padded": l_pad, "loss_rel_diff": abs(l_pack - l_pad) / abs(l_pad),
            "grad_max_rel_diff": rel, "tolerance": tol,
            "ok": abs(l_pack - l_pad) / abs(l_pad) < tol and rel < tol}


# ---- (c) checkpoint stall, (d) resume -------------------------------------------------------
def _load_bench_checkpoint():
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_checkpoint",
                                                  os.path.join(REPO, "bench", "checkpoint.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def checkpoint_stall(args, d: parallel.Dist, work: str) -> dict:
    from train.checkpoint import CheckpointManager, TrainProgress
    from vicuna_cloud.storage import open_bucket

    bc = _load_bench_checkpoint()
    dev = d.device
    shape, layers = (SHAPE_7B, 2) if not args.smoke else (SHAPE_TINY, 2)
    model, _ = build(shape, layers, d, "bf16" if dev.type == "cuda" else "fp32", seed=2)
    opt = optim.build_optimizer(model, hyper())
    sched = optim.build_scheduler(opt, 10, 0.0)
    mbs = batching.packed_batches(examples(2048, 1024, seed=3, vocab=shape["vocab_size"]),
                                  2048)[:1]
    train_step(model, opt, mbs, dev)  # optimizer state exists
    bucket_uri = os.path.join(work, "bucket")
    spec = bc.make_spec(bucket_uri)
    ckpt = CheckpointManager(spec, model, opt, sched, rank=0, world_size=1,
                             local_root=os.path.join(work, "node"))
    sync(dev)
    t0 = time.perf_counter()
    ckpt.maybe_save(TrainProgress(step=1), force=True)
    stall = time.perf_counter() - t0
    ckpt.wait()
    committed = time.perf_counter() - t0
    ckpt.close()
    sync_s = bc.sync_save(os.path.join(work, "sync"), open_bucket(bucket_uri), 1, model, opt)
    state = sum(p.numel() for p in model.parameters()) * 12
    del model, opt
    return {"check": "checkpoint_stall", "state_gib": state / GIB, "stall_s": stall,
            "committed_after_s": committed, "sync_save_s": sync_s,
            "stall_fraction_of_sync": stall / sync_s if sync_s else None}


def resume_bit_exact(args, d: parallel.Dist, work: str) -> dict:
    from train.checkpoint import CheckpointManager, TrainProgress

    bc = _load_bench_checkpoint()
    dev = d.device
    dtype = "bf16" if dev.type == "cuda" else "fp32"
    shape, layers = (SHAPE_SMALL, 4) if not args.smoke else (SHAPE_TINY, 2)
    data = [batching.packed_batches(examples(1500, 500, seed=100 + s, vocab=shape["vocab_size"]),
                                    1024)[:2] for s in range(6)]
    spec = bc.make_spec(os.path.join(work, "resume-bucket"))

    def fresh():
        model, _ = build(shape, layers, d, dtype, seed=4)
        opt = optim.build_optimizer(model, hyper(1e-3))
        return model, opt, optim.build_scheduler(opt, 6, 0.0)

    def weights(model):
        return {k: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().cpu().clone()
                for k, p in model.named_parameters()}

    model, opt, sched = fresh()
    ckpt = CheckpointManager(spec, model, opt, sched, rank=0, world_size=1,
                             local_root=os.path.join(work, "n1"))
    for s in range(6):
        train_step(model, opt, data[s], dev)
        sched.step()
        if s == 2:
            ckpt.maybe_save(TrainProgress(step=3), force=True)
            ckpt.wait()
    ckpt.close()
    straight = weights(model)
    del model, opt
    model, opt, sched = fresh()
    ckpt = CheckpointManager(spec, model, opt, sched, rank=0, world_size=1,
                             local_root=os.path.join(work, "n2"))
    progress = ckpt.restore()
    for s in range(progress.step, 6):
        train_step(model, opt, data[s], dev)
        sched.step()
    ckpt.close()
    resumed = weights(model)
    diff = max(float((straight[k].float() - resumed[k].float()).abs().max()) for k in straight)
    return {"check": "resume", "dtype": dtype, "restored_step": progress.step,
            "bit_exact": all(torch.equal(straight[k], resumed[k]) for k in straight),
            "max_abs_diff": diff}


# ---- report ----------------------------------------------------------------------------
def table(res: dict) -> str:
    lines = [f"gpu_check on {res['gpu'] or res['device']} (torch {res['torch']}), "
             f"{res['seconds']:.0f} s"]
    lines.append(f"{'(a) tokens/mb':>14} {'kernel':>7} {'layers':>6} {'tok/s':>10} "
                 f"{'step ms':>9} {'MFU':>7} {'peak GiB':>9}")
    for r in res["throughput"]:
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        mem = "-" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.1f}"
        lines.append(f"{r['tokens_per_micro_batch']:>14} {r['kernel']:>7} {r['layers']:>6} "
                     f"{r['tokens_per_s']:>10,.0f} {r['step_ms']:>9.1f} {mfu:>7} {mem:>9}")
    p = res["packed_vs_padded"]
    lines.append(f"(b) packed vs padded ({p['dtype']}, {p['kernel']}): loss rel diff "
                 f"{p['loss_rel_diff']:.2e}, grads max rel diff {p['grad_max_rel_diff']:.2e} "
                 f"(tolerance {p['tolerance']:g}): {'OK' if p['ok'] else 'FAIL'}")
    c = res["checkpoint_stall"]
    lines.append(f"(c) checkpoint of {c['state_gib']:.2f} GiB: stall {c['stall_s']:.2f} s "
                 f"(committed after {c['committed_after_s']:.2f} s) vs synchronous "
                 f"{c['sync_save_s']:.2f} s")
    r = res["resume"]
    lines.append(f"(d) resume from step {r['restored_step']} ({r['dtype']}): "
                 f"{'bit-exact' if r['bit_exact'] else 'NOT bit-exact'} "
                 f"(max |diff| {r['max_abs_diff']:.2e})")
    mfu = "- (no GPU peak on CPU)" if res["mfu"] is None else f"{res['mfu']:.3f}"
    lines.append(f"mfu for `vicuna-cloud cost --estimate PRESET --mfu-from FILE`: {mfu}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default=None,
                   help="default: cuda when available")
    p.add_argument("--smoke", action="store_true", help="tiny shapes (the CPU default)")
    p.add_argument("--tokens", type=int, nargs="+", default=None,
                   help="packed micro-batch sizes (default 4096 8192; smoke 256 512)")
    p.add_argument("--steps", type=int, default=None, help="measured steps (20; smoke 3)")
    p.add_argument("--layers", type=int, default=None, help="7B layers (default: what fits)")
    p.add_argument("--out", default="gpu_check.json", help="JSON output")
    a = p.parse_args(argv)
    a.device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    a.smoke = a.smoke or a.device == "cpu"
    a.tokens = a.tokens or ([256, 512] if a.smoke else [4096, 8192])
    a.steps = a.steps or (3 if a.smoke else 20)
    t0 = time.time()
    d = init(a.device)
    res = {"kind": GPU_CHECK_KIND, "device": str(d.device), "smoke": a.smoke,
           "gpu": torch.cuda.get_device_name(d.device) if d.device.type == "cuda" else None,
           "torch": torch.__version__, "cuda": torch.version.cuda}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        res["throughput"] = throughput(a, d)
        res["packed_vs_padded"] = packed_vs_padded(a, d)
        res["checkpoint_stall"] = checkpoint_stall(a, d, work)
        res["resume"] = resume_bit_exact(a, d, work)
    ours = [r for r in res["throughput"] if r["kernel"] != "dense"]
    best = max(ours, key=lambda r: r["tokens_per_micro_batch"]) if ours else None
    res["attention_kernel"] = best["kernel"] if best else None
    res["mfu"] = best["mfu"] if best else None
    res["seconds"] = time.time() - t0
    with open(a.out, "w") as f:
        json.dump(res, f, indent=2)
    print(table(res))
    print(f"wrote {a.out}")
    return 0 if res["packed_vs_padded"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
