"""Peak memory (RSS) of `delta make` / `delta apply` on a 1B-shaped model, against loading
the whole model (and against a whole-model delta: both models in memory, as a naive tool
or FastChat's make_delta does).

    python bench/delta_memory.py [--layers 22] [--hidden 2048] [--intermediate 5632]
                                 [--skip-whole-delta] [--keep DIR]

It writes a random LLaMA-shaped bf16 base (default: TinyLlama-1.1B's shape, 1.1B
parameters, 2.2 GB) and a target that differs from it in every tensor, then runs each
step in its own process and prints that process's peak RSS (ru_maxrss), its growth over a
bare interpreter with numpy/torch imported, and the wall time. Needs ~9 GB of free disk
in the temp directory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {repo!r})
mode, a, b, c = sys.argv[1:5]
import numpy
import torch
from safetensors.torch import load_file
from vicuna_cloud.delta import apply_delta, make_delta
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t0 = time.perf_counter()
if mode == "make":
    make_delta(a, b, c)
elif mode == "apply":
    apply_delta(a, b, c)
elif mode == "whole-load":
    # load_file maps the file lazily: touch every tensor so the whole model is resident,
    # as it is for anything that then uses the weights.
    state = load_file(b + "/model.safetensors")
    total = sum(int(t.view(torch.int16).sum()) for t in state.values())
elif mode == "whole-delta":
    base = load_file(a + "/model.safetensors")
    target = load_file(b + "/model.safetensors")
    for k in target:
        target[k] -= base[k]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"peak_mib": peak, "imports_mib": before, "seconds": time.perf_counter() - t0}}))
"""


def llama_shapes(layers: int, hidden: int, inter: int, heads: int, kv_heads: int,
                 vocab: int) -> list[tuple[str, tuple[int, ...]]]:
    head_dim = hidden // heads
    out = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [(p + "self_attn.q_proj.weight", (hidden, hidden)),
                (p + "self_attn.k_proj.weight", (kv_heads * head_dim, hidden)),
                (p + "self_attn.v_proj.weight", (kv_heads * head_dim, hidden)),
                (p + "self_attn.o_proj.weight", (hidden, hidden)),
                (p + "mlp.gate_proj.weight", (inter, hidden)),
                (p + "mlp.up_proj.weight", (inter, hidden)),
                (p + "mlp.down_proj.weight", (hidden, inter)),
                (p + "input_layernorm.weight", (hidden,)),
                (p + "post_attention_layernorm.weight", (hidden,))]
    out += [("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]
    return out


def write_pair(shapes, base_dir: str, target_dir: str, seed: int = 0) -> int:
    """Random bf16 base and a target nudged by a few ulps everywhere, written chunk by chunk
    (the writer itself never holds a whole tensor)."""
    import numpy as np

    from vicuna_cloud.delta.safetensors_io import build_header, write_prefix

    rng = np.random.default_rng(seed)
    entries = []
    for name, shape in shapes:
        n = 1
        for d in shape:
            n *= d
        entries.append((name, "BF16", shape, 2 * n))
    header = build_header(entries, {"format": "pt"})
    os.makedirs(base_dir)
    os.makedirs(target_dir)
    total = 0
    with open(os.path.join(base_dir, "model.safetensors"), "wb") as fb, \
            open(os.path.join(target_dir, "model.safetensors"), "wb") as ft:
        write_prefix(fb, header)
        write_prefix(ft, header)
        step = 8 << 20
        for _name, _dtype, _shape, nbytes in entries:
            left = nbytes // 2
            while left:
                k = min(left, step)
                f32 = (rng.standard_normal(k, dtype=np.float32) * 0.02)
                bits = (f32.view(np.uint32) >> 16).astype(np.uint16)
                fb.write(bits.tobytes())
                nudge = rng.integers(-2, 3, size=k, dtype=np.int16).view(np.uint16)
                ft.write((bits + nudge).tobytes())
                left -= k
            total += nbytes
    for d in (base_dir, target_dir):
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump({"model_type": "llama"}, f)
    return total


def run_child(mode: str, a: str, b: str, c: str) -> dict:
    code = CHILD.format(repo=REPO)
    out = subprocess.run([sys.executable, "-c", code, mode, a, b, c], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=22)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--intermediate", type=int, default=5632)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--skip-whole-delta", action="store_true",
                   help="skip the two-models-in-memory comparison (needs ~2x the model in RAM)")
    p.add_argument("--keep", default=None, help="write the files here and keep them")
    args = p.parse_args()
    shapes = llama_shapes(args.layers, args.hidden, args.intermediate, args.heads,
                          args.kv_heads, args.vocab)
    import math

    sizes = [math.prod(s) for _, s in shapes]
    n_params = sum(sizes)
    work = args.keep or tempfile.mkdtemp(prefix="vicuna-delta-bench-")
    base, target = os.path.join(work, "base"), os.path.join(work, "target")
    delta, rebuilt = os.path.join(work, "delta"), os.path.join(work, "rebuilt")
    try:
        t0 = time.perf_counter()
        nbytes = write_pair(shapes, base, target)
        print(f"model: {n_params / 1e9:.2f}B parameters, bf16, {nbytes / 2**30:.2f} GiB per "
              f"model ({len(shapes)} tensors, largest {max(sizes) * 2 / 2**20:.0f} MiB); "
              f"written in {time.perf_counter() - t0:.0f} s")
        rows = [("delta make (streaming)", run_child("make", base, target, delta)),
                ("delta apply (streaming)", run_child("apply", base, delta, rebuilt)),
                ("whole-model load (safetensors load_file)", run_child("whole-load", base, target, "-"))]
        if not args.skip_whole_delta:
            rows.append(("whole-model delta (both models loaded)",
                         run_child("whole-delta", base, target, "-")))
        import filecmp

        same = filecmp.cmp(os.path.join(target, "model.safetensors"),
                           os.path.join(rebuilt, "model.safetensors"), shallow=False)
        print(f"{'step':44s} {'peak RSS MiB':>12s} {'growth MiB':>11s} {'seconds':>8s} {'GiB/s':>6s}")
        for label, r in rows:
            growth = r["peak_mib"] - r["imports_mib"]
            rate = nbytes / 2**30 / r["seconds"] if r["seconds"] > 0 else float("nan")
            print(f"{label:44s} {r['peak_mib']:12.0f} {growth:11.0f} {r['seconds']:8.1f} {rate:6.2f}")
        print(f"rebuilt == target: {'yes' if same else 'NO'} (apply also checked every file's "
              "sha256 against the manifest)")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
