"""Peak host memory (RSS) per rank when loading a base model into FSDP2 shards:
the trainer's way (meta init, each rank reads only its rows of each safetensors tensor)
against the naive way (every rank loads the full model, then shards).

    python bench/load_memory.py [--hidden 1024 --layers 12] [--nproc 2]

It writes a random LLaMA-shaped bf16 checkpoint to a temp dir, runs both ways under
torchrun, and prints peak RSS growth per rank and the checkpoint's size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def rss_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(mode: str, model_dir: str, out: str) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from train import model as model_lib, parallel

    d = parallel.init_distributed()
    config = AutoConfig.from_pretrained(model_dir)
    base = rss_peak_mib()
    if mode == "sharded":
        model = model_lib.build_model(config, seed=0, meta=True, device=d.device)
        parallel.apply_fsdp(model, parallel.build_mesh(d), dtype="bf16",
                            activation_checkpointing=False)
        model.to_empty(device=d.device)
        model_lib.load_sharded_weights(model, model_dir, d.device)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        parallel.apply_fsdp(model, parallel.build_mesh(d), dtype="bf16",
                            activation_checkpointing=False)
    peak = rss_peak_mib() - base
    res = torch.tensor([peak], dtype=torch.float64)
    gathered = [torch.zeros(1, dtype=torch.float64) for _ in range(d.world_size)]
    torch.distributed.all_gather(gathered, res)
    if d.is_main:
        with open(out, "w") as f:
            json.dump([float(g) for g in gathered], f)
    torch.distributed.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--child", nargs=3, metavar=("MODE", "DIR", "OUT"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return child(*a.child)

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tmp = tempfile.mkdtemp(prefix="vicuna-loadmem-")
    cfg = LlamaConfig(hidden_size=a.hidden, intermediate_size=int(a.hidden * 2.6875),
                      num_hidden_layers=a.layers, num_attention_heads=a.hidden // 64,
                      vocab_size=32000, tie_word_embeddings=False)
    with torch.device("meta"):
        n_params = sum(p.numel() for p in LlamaForCausalLM(cfg).parameters())
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(os.path.join(tmp, "base"), max_shard_size="200MB")
    del model
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    rows = {}
    for mode in ("sharded", "full"):
        out = os.path.join(tmp, f"{mode}.json")
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        f"--nproc_per_node={a.nproc}", __file__, "--child", mode,
                        os.path.join(tmp, "base"), out], check=True, env=env)
        with open(out) as f:
            rows[mode] = json.load(f)
    res = {"params": n_params, "checkpoint_mib_bf16": n_params * 2 / 2**20,
           "full_model_mib_fp32": n_params * 4 / 2**20, "nproc": a.nproc,
           "peak_rss_growth_mib_per_rank": rows}
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
