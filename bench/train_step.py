"""Training-step speed: tokens/s per GPU and MFU, through the trainer's own code path
(train.model / train.parallel / train.optim / train.loss.micro_batch_loss, FSDP2).

GPU (one card): a LLaMA-7B-shaped model (real 7B layer shapes, fewer layers so it fits)
at sequence 2048, packed, bf16, activation checkpointing:
    python bench/train_step.py --device cuda --layers 8 --seq 2048 --steps 10
CPU: a tiny shape, for regressions only:
    python bench/train_step.py
Multi-GPU: torchrun --nproc_per_node 8 bench/train_step.py --device cuda --layers 32

MFU = (6N + 12·L·H·s) FLOPs per token x tokens/s / (GPUs x dense bf16 peak), N = params
in matmuls (all but the input embedding), s = each sample's own length (train/metrics.py).
Warm-up steps are excluded from the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from train import batching, metrics, model as model_lib, optim, parallel  # noqa: E402
from train.loss import micro_batch_loss  # noqa: E402
from train.masking import IGNORE, Example  # noqa: E402
from vicuna_cloud.runspec import Hyperparameters  # noqa: E402

SHAPES = {
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000),
    "13b": dict(hidden_size=5120, intermediate_size=13824, num_attention_heads=40,
                num_key_value_heads=40, vocab_size=32000),
    # SmolLM2-135M (the `small` preset's base, GQA with 3 KV heads): 30 layers.
    "smollm2": dict(hidden_size=576, intermediate_size=1536, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152),
    "tiny": dict(hidden_size=64, intermediate_size=176, num_attention_heads=4,
                 num_key_value_heads=4, vocab_size=32000),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--shape", choices=list(SHAPES), default=None,
                   help="layer shapes (default: 7b on cuda, tiny on cpu)")
    p.add_argument("--layers", type=int, default=None, help="decoder layers (7b has 32)")
    p.add_argument("--seq", type=int, default=None, help="sample length (default 2048 / 256)")
    p.add_argument("--mb-tokens", type=int, default=None,
                   help="packed micro-batch token budget (default 4 x seq)")
    p.add_argument("--micro-batches", type=int, default=2, help="per step (grad accumulation)")
    p.add_argument("--steps", type=int, default=None, help="measured steps (default 10 / 5)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--dtype", choices=["bf16", "fp32"], default=None)
    p.add_argument("--no-ac", action="store_true", help="disable activation checkpointing")
    p.add_argument("--mixed-lengths", action="store_true",
                   help="sample lengths uniform in [seq/8, seq] instead of all = seq")
    p.add_argument("--json", action="store_true", help="print one JSON line only")
    a = p.parse_args()

    gpu = a.device == "cuda"
    if gpu and not torch.cuda.is_available():
        sys.exit("error: --device cuda but no CUDA device is visible")
    if not gpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    shape = a.shape or ("7b" if gpu else "tiny")
    layers = a.layers or (8 if gpu else 2)
    seq = a.seq or (2048 if gpu else 256)
    budget = a.mb_tokens or 4 * seq
    steps = a.steps or (10 if gpu else 5)
    dtype = a.dtype or ("bf16" if gpu else "fp32")

    d = parallel.init_distributed()
    from transformers import LlamaConfig
    config = LlamaConfig(**SHAPES[shape], num_hidden_layers=layers,
                         max_position_embeddings=max(seq, 2048), rms_norm_eps=1e-6,
                         tie_word_embeddings=False, use_cache=False)
    with torch.device(d.device):
        model = model_lib.build_model(config, seed=0, meta=False, device=d.device)
    parallel.apply_fsdp(model, parallel.build_mesh(d), dtype=dtype,
                        activation_checkpointing=not a.no_ac)
    model.train()
    opt = optim.build_optimizer(model, Hyperparameters(learning_rate=1e-5))

    g = torch.Generator().manual_seed(d.rank)
    def make_step() -> list[batching.MicroBatch]:
        mbs = []
        for _ in range(a.micro_batches):
            exs, used = [], 0
            while True:
                n = seq if not a.mixed_lengths else int(torch.randint(seq // 8, seq + 1, (1,), generator=g))
                if used + n > budget:
                    break
                ids = torch.randint(3, config.vocab_size, (n,), generator=g).tolist()
                exs.append(Example(ids, ids[1:] + [IGNORE]))
                used += n
            mbs.extend(batching.packed_batches(exs, budget))
        return mbs

    _, matmul = model_lib.count_params(config)
    peak = metrics.gpu_peak_tflops(torch.cuda.get_device_name(d.device) if gpu else None)
    times, toks, flops = [], 0, 0.0
    for i in range(a.warmup + steps):
        mbs = [mb.to(d.device) for mb in make_step()]
        n_tr = sum(mb.n_trained for mb in mbs)
        if gpu:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for mb in mbs:
            (micro_batch_loss(model, mb) / n_tr).backward()
        optim.clip_grad_norm(model, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if gpu:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if i >= a.warmup:
            times.append(dt)
            toks += sum(mb.n_tokens for mb in mbs)
            flops += metrics.step_flops(matmul, layers, config.hidden_size,
                                        [s for mb in mbs for s in mb.seq_lens],
                                        config.vocab_size * config.hidden_size,
                                        sum(mb.keep.numel() for mb in mbs))
    secs = sum(times)
    tps = toks / secs
    res = {
        "device": torch.cuda.get_device_name(d.device) if gpu else "cpu",
        "world_size": d.world_size, "shape": shape, "layers": layers, "seq": seq,
        "micro_batch_tokens": budget, "micro_batches": a.micro_batches, "dtype": dtype,
        "activation_checkpointing": not a.no_ac,
        "attn": model.config._attn_implementation, "steps": steps,
        "step_seconds": secs / steps, "tokens_per_s_per_gpu": tps,
        "mfu": metrics.mfu(flops / d.world_size, secs, 1, peak),
        "peak_tflops": peak,
        "max_gpu_mem_gib": torch.cuda.max_memory_allocated(d.device) / 2**30 if gpu else None,
    }
    if d.is_main:
        if a.json:
            print(json.dumps(res))
        else:
            from rich.console import Console
            from rich.table import Table
            t = Table(title="train step")
            t.add_column("figure")
            t.add_column("value", justify="right")
            for k, v in res.items():
                t.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
            Console().print(t)
            print(json.dumps(res))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
