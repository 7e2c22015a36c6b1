"""What a real GPU node needs that a CPU run never showed: the shard group the estimate
divides by, FSDP units for the embedding and [norm, head], fused AdamW on CUDA, the
allocator setting, and a node without usable CUDA stopping before it trains on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from vicuna_cloud.exit_codes import (EXIT_CONFIG, EXIT_GPU_UNAVAILABLE, EXIT_TRANSIENT,
                                     RECOVERABLE_EXIT_CODES)
from vicuna_cloud.recipes import TINY, all_presets, get_preset
from vicuna_cloud.run_store import spec_from_preset
from vicuna_cloud.skypilot.run_script import run_script

from train import optim, parallel
from train.inputs import CONFIG_ERRORS
from helpers.train import REPO, tiny_spec


def _dist(world: int, local: int) -> parallel.Dist:
    return parallel.Dist(0, 0, world, local, torch.device("cpu"))


def _config(arch):
    from transformers import LlamaConfig
    return LlamaConfig(**arch.as_llama_config())


@pytest.mark.parametrize("preset", [p for p in all_presets() if p.hardware.accelerator != "cpu"],
                         ids=lambda p: f"{p.name}-{p.version}")
def test_trainer_shards_over_the_estimates_divisor(preset, tmp_path):
    """The trainer's mesh (from run.json, on the preset's world) shards over exactly the
    GPUs the memory and cost estimate divides by."""
    spec = spec_from_preset(preset, run_id="shard", dataset_uri=str(tmp_path), dataset_sha256=None,
                            bucket_uri=str(tmp_path / "b"))
    hw = preset.hardware
    d = _dist(hw.world_size, hw.gpus_per_node)
    shard = parallel.shard_size(spec, _config(preset.arch), d)
    shape = parallel.mesh_shape(d, shard)
    assert shard == preset.shard_size
    assert shape["shard"] * shape.get("replicate", 1) == hw.world_size
    assert preset.memory_estimate().sharded_state_gib == pytest.approx(
        16 * preset.arch.n_params / shape["shard"] / 2**30)
    if preset.name == "33b":
        assert (hw.nodes, shape) == (2, {"shard": 16})      # full shard across both nodes
        assert preset.memory_estimate().total_gib < 0.65 * 80
    else:
        assert (hw.nodes, shape) == (1, {"shard": 8})


def test_replicas_only_where_one_node_fits():
    seven = get_preset("7b", nodes=2)                      # fits one node: HSDP 2 x 8
    assert seven.shard_size == 8
    assert parallel.mesh_shape(_dist(16, 8), seven.shard_size) == {"replicate": 2, "shard": 8}
    assert get_preset("33b", nodes=4).shard_size == 16     # two nodes per shard group
    assert parallel.mesh_shape(_dist(32, 8), 16) == {"replicate": 2, "shard": 16}
    # An accelerator the recipes do not know: shard within a node, as before.
    spec, _ = tiny_spec_like("T4:4")
    assert parallel.shard_size(spec, _config(TINY), _dist(8, 4)) == 4


def tiny_spec_like(accelerators: str):
    import tempfile
    from pathlib import Path
    tmp = Path(tempfile.mkdtemp())
    spec, uri = tiny_spec(tmp, limit=4)
    res = spec.resources.model_copy(update={"accelerators": accelerators})
    return spec.model_copy(update={"resources": res}), uri


def test_fsdp_units_embedding_and_head_of_their_own():
    """FSDP2 on this process (gloo, world 1): embedding, each layer, [norm, head], root."""
    import torch.distributed as dist
    from transformers import LlamaConfig, LlamaForCausalLM

    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(29000 + os.getpid() % 1000))
        dist.init_process_group("gloo", rank=0, world_size=1)
    model = LlamaForCausalLM(LlamaConfig(**TINY.as_llama_config()))
    parallel.apply_fsdp(model, parallel.build_mesh(_dist(1, 1)), dtype="fp32",
                        activation_checkpointing=False)
    units = parallel.fsdp_units(model)
    assert units[0] == "" and "model.embed_tokens" in units
    assert {"model.layers.0", "model.layers.1"} <= set(units)
    assert {"model.norm", "lm_head"} <= set(units)
    # norm and head are one unit: one state object (one all-gather, one reduce-scatter)
    from torch.distributed.fsdp import FSDPModule
    norm, head = model.model.norm, model.lm_head
    assert isinstance(norm, FSDPModule) and norm._get_fsdp_state() is head._get_fsdp_state()
    out = model(input_ids=torch.ones(1, 8, dtype=torch.long), use_cache=False).logits
    out.sum().backward()
    assert model.lm_head.weight.grad is not None


def test_adamw_is_fused_on_cuda_and_foreach_on_cpu():
    assert optim.adamw_impl("cuda") == {"fused": True}
    assert optim.adamw_impl("cpu") == {"foreach": True}
    from vicuna_cloud.runspec import Hyperparameters
    opt = optim.build_optimizer(torch.nn.Linear(2, 2), Hyperparameters())
    assert opt.defaults["foreach"] is True and not opt.defaults.get("fused")


def test_run_script_sets_expandable_segments_unless_the_user_did():
    text = run_script()
    line = 'export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"'
    assert line in text and text.index(line) < text.index("torchrun \\\n")
    out = subprocess.run(["bash", "-c", line + '; echo "$PYTORCH_CUDA_ALLOC_CONF"'],
                         capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    assert out.stdout.strip() == "expandable_segments:True"


# ---- fail fast -----------------------------------------------------------------------------
def _problem(**over):
    kw = dict(want_gpus=True, wheel_cuda="12.8", available=True, device_count=8,
              local_processes=8, init_error=None)
    return parallel.cuda_problem(**{**kw, **over})


def test_cuda_problems_are_told_apart():
    assert _problem() is None
    assert _problem(want_gpus=False, wheel_cuda=None, available=False) is None
    cpu_wheel = _problem(wheel_cuda=None, available=False, device_count=0)
    assert isinstance(cpu_wheel, CONFIG_ERRORS) and "CPU wheel" in str(cpu_wheel)
    old = _problem(available=False, device_count=0, init_error=(
        "RuntimeError: The NVIDIA driver on your system is too old (found version 11040)."))
    assert isinstance(old, parallel.GPUConfigError) and "driver" in str(old)
    gone = _problem(available=False, device_count=0,
                    init_error="RuntimeError: CUDA error: no CUDA-capable device is detected")
    assert isinstance(gone, parallel.GPUUnavailable) and not isinstance(gone, CONFIG_ERRORS)
    fewer = _problem(device_count=7)
    assert isinstance(fewer, parallel.GPUUnavailable) and "7 GPU(s) visible but 8" in str(fewer)
    for p in (cpu_wheel, old, gone, fewer):
        assert "\n" not in str(p)


@pytest.mark.slow  # the trainer in a child process (torch import and start-up: seconds)
def test_gpu_run_on_a_cpu_torch_stops_before_training(tmp_path):
    """The real trainer, with this machine's CPU torch, for a run that asks for A100s:
    exit 78 with one line saying why, and no metrics, ledger or checkpoint written."""
    if torch.version.cuda is not None:
        pytest.skip("needs a CPU-only torch build")
    spec, _ = tiny_spec(tmp_path, limit=8)
    res = spec.resources.model_copy(update={"accelerators": "A100-80GB:1"})
    spec = spec.model_copy(update={"resources": res, "run_id": "asks-for-gpus"})
    from vicuna_cloud.run_store import write_run_spec
    from vicuna_cloud.storage import open_bucket
    bucket = open_bucket(spec.bucket_uri)
    uri = write_run_spec(bucket, spec)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "train", "--run-uri", uri, "--local-root",
                           str(tmp_path / "node")], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == EXIT_CONFIG, proc.stderr[-2000:]
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("error")]
    assert len(err) == 1 and "asks for GPUs" in err[0] and "CPU wheel" in err[0]
    assert [i.key for i in bucket.list(f"runs/{spec.run_id}/")] == [f"runs/{spec.run_id}/run.json"]
    # A driver/wheel mismatch stays 78; a lost GPU is the VM's fault: the transient 69,
    # which job_recovery restarts on a new cluster (not an error restart).
    assert EXIT_GPU_UNAVAILABLE == EXIT_TRANSIENT and EXIT_GPU_UNAVAILABLE != EXIT_CONFIG
    assert EXIT_GPU_UNAVAILABLE in RECOVERABLE_EXIT_CODES


@pytest.mark.slow
def test_resume_never_reads_the_base_weights(tmp_path):
    """A base model from a directory (meta init + sharded load), 2 ranks under torchrun:
    the first attempt stops after 2 steps with a committed checkpoint; then the base
    weights are deleted, and the resume still completes: it never touches them."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from helpers.train import torchrun_train
    from vicuna_cloud.run_store import write_run_spec
    from vicuna_cloud.runspec import CheckpointPolicy
    from vicuna_cloud.storage import open_bucket

    spec, _ = tiny_spec(tmp_path, run_id="seed-spec", limit=48,
                        checkpoint=CheckpointPolicy(interval_steps=1))
    base = tmp_path / "base"
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**spec.model.architecture)).save_pretrained(base)
    spec = spec.model_copy(update={"run_id": "from-base", "model": spec.model.model_copy(
        update={"base_model": str(base)})})
    uri = write_run_spec(open_bucket(spec.bucket_uri), spec)
    first = torchrun_train(uri, local_root=str(tmp_path / "node"),
                           extra_args=("--stop-after-steps", "2"))
    assert "preempted at step 2/3" in first.stderr, first.stderr[-3000:]
    (base / "model.safetensors").unlink()  # what a resume must not need
    second = torchrun_train(uri, local_root=str(tmp_path / "node"))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming at step 2" in second.stderr and "completed at step 3/3" in second.stderr
    # Control: a fresh run from the same (now weightless) base fails on the weights.
    fresh = spec.model_copy(update={"run_id": "from-base-fresh"})
    p = torchrun_train(write_run_spec(open_bucket(spec.bucket_uri), fresh),
                       local_root=str(tmp_path / "node2"))
    assert p.returncode != 0 and "no safetensors weights" in p.stderr
