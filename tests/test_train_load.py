"""Base-model loading for real checkpoints: meta-device init, FSDP2 sharding, then each
rank reads only its own rows from the safetensors files (2 processes, gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from vicuna_cloud.recipes import TINY

from helpers.train import REPO

pytestmark = pytest.mark.slow


def test_sharded_load_matches_the_checkpoint(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**{**TINY.as_llama_config(), "num_hidden_layers": 3, "hidden_size": 48,
                         "intermediate_size": 100, "vocab_size": 1001})  # odd: uneven shards
    torch.manual_seed(3)
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(tmp_path / "base",
                                                             max_shard_size="200KB")
    assert (tmp_path / "base" / "model.safetensors.index.json").exists()
    out = tmp_path / "result.json"
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(REPO / "tests" / "helpers" / "children" / "train_load_child.py"), str(tmp_path / "base"), str(out)],
        env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(out.read_text())
    assert res["bad"] == []
    assert res["max_diff"] < 1e-4
    # Rank 0 holds about half of every tensor's rows, not the whole model.
    assert res["local_rows"] <= res["full_rows"] // 2 + 64
