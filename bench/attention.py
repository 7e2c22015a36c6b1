"""Packed-row attention: the dense-mask SDPA path transformers builds vs the trainer's
kernels (train/attention.py: varlen over cu_seqlens; FlexAttention with the document
BlockMask), forward + backward, one row of T tokens made of equal documents. Prints ms per
call and the largest difference from per-document SDPA.

    python bench/attention.py                       # CPU: T=4096 = 8 x 512
    python bench/attention.py --device cuda --tokens 8192 --docs 8

"dense" is what transformers 5.x runs under sdpa for a packed row: a [1, 1, T, T] boolean
block-diagonal causal mask and SDPA with is_causal=False. "per-doc" runs SDPA once per
document with is_causal=True (the ideal the other two are checked against).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from train import attention  # noqa: E402


def dense_mask(lens, t, device):
    doc = torch.from_numpy(attention.document_ids([lens], t)).to(device)[0]
    i = torch.arange(t, device=device)
    return ((doc[:, None] == doc[None, :]) & (i[None, :] <= i[:, None]))[None, None]


def timed(fn, q, k, v, reps, backward=True):
    def once():
        if backward:
            fn(q, k, v).float().pow(2).sum().backward()
        else:
            with torch.no_grad():
                fn(q, k, v)
    once()  # warm-up (and compile)
    sync = torch.cuda.synchronize if q.is_cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        once()
    sync()
    return (time.perf_counter() - t0) / reps * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--docs", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default=None)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    dev = torch.device(a.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[a.dtype or (
        "bf16" if dev.type == "cuda" else "fp32")]
    t, n = a.tokens, a.docs
    lens = [t // n] * n
    lens[-1] += t - sum(lens)
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, a.heads, t, a.head_dim, device=dev, dtype=dtype,
                           requires_grad=True) for _ in range(3))
    mask = dense_mask(lens, t, dev)
    from torch.nn.attention.flex_attention import flex_attention

    def per_doc(q, k, v):
        outs, s = [], 0
        for ln in lens:
            sl = slice(s, s + ln)
            outs.append(F.scaled_dot_product_attention(q[:, :, sl], k[:, :, sl], v[:, :, sl],
                                                       is_causal=True))
            s += ln
        return torch.cat(outs, dim=2)

    def ours(kernel):
        layout = attention.PackedLayout([lens], t, kernel=kernel, device=dev)
        return lambda q, k, v: attention.packed_forward(
            None, q, k, v, None, packed_layout=layout)[0].transpose(1, 2)

    paths = {  # name -> (fn, backward supported here)
        "dense_mask_sdpa": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v,
                                                                           attn_mask=mask), True),
        "per_doc_sdpa": (per_doc, True),
        "varlen (trainer)": (ours("varlen"), True),
        # FlexAttention has no CPU backward in torch 2.13: forward only there.
        "flex": (ours("flex"), dev.type == "cuda"),
    }
    if dev.type == "cuda" and not a.no_compile:
        compiled = torch.compile(flex_attention, dynamic=True)
        bm = attention.block_mask([lens], t, dev)
        paths["flex_compiled_direct"] = (lambda q, k, v: compiled(q, k, v, block_mask=bm), True)
    ref = per_doc(q, k, v).detach()
    bm = attention.block_mask([lens], t, dev)
    res = {"device": str(dev), "tokens": t, "docs": n, "heads": a.heads,
           "head_dim": a.head_dim, "dtype": str(dtype).split(".")[-1],
           "dense_mask_mib": mask.numel() / 2**20,
           "block_mask_blocks": {"partial": int(bm.kv_num_blocks.sum()),
                                 "full": int(bm.full_kv_num_blocks.sum()),
                                 "of": (-(-t // attention.BLOCK)) ** 2}}
    for name, (fn, bwd) in paths.items():
        qkv = (q, k, v) if bwd else (q.detach(), k.detach(), v.detach())
        with torch.no_grad():
            diff = (fn(*qkv).float() - ref.float()).abs().max().item()
        ms = timed(fn, *qkv, a.reps, backward=bwd)
        res[name] = {"ms": round(ms, 2), "backward": bwd, "max_abs_diff_vs_per_doc": diff}
    if a.json:
        print(json.dumps(res))
        return
    print(f"{t} tokens = {n} x {t // n}, {a.heads} heads x {a.head_dim}, {res['dtype']} on "
          f"{dev}; dense mask {res['dense_mask_mib']:.0f} MiB (bool); block mask "
          f"{res['block_mask_blocks']['partial']} partial + {res['block_mask_blocks']['full']} "
          f"full of {res['block_mask_blocks']['of']} blocks")
    print(f"{'path':<22} {'ms':>9} {'timed':>8} {'max |diff|':>11}")
    for name in paths:
        r = res[name]
        what = "fwd+bwd" if r["backward"] else "fwd"
        print(f"{name:<22} {r['ms']:>9.1f} {what:>8} {r['max_abs_diff_vs_per_doc']:>11.2e}")


if __name__ == "__main__":
    main()
