"""Process group, device mesh and FSDP2 sharding.

One FSDP2 unit per decoder layer, one for the input embedding and one for [final norm,
LM head], so only one unit's full weights are gathered at a time (plus one prefetched) and
the head's large gradient is reduced as soon as backward leaves it, not at the very end
with the root's. With bf16 the parameters are gathered in bf16 and gradients reduced in
fp32 over fp32 master weights.

The shard group is the one the cost and memory estimate divides by
(``vicuna_cloud.recipes.shard_size_for``): whole nodes, as few as fit. Nodes beyond it hold
replicas (HSDP), and replicas all-reduce their gradients only on a step's last micro-batch
(``set_requires_all_reduce``); the reduce-scatter inside the shard group runs every
micro-batch, which keeps gradients sharded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        return self.local_rank == 0

    @property
    def nnodes(self) -> int:
        return max(1, self.world_size // max(1, self.local_world_size))


class GPUConfigError(ValueError):
    """The run asks for GPUs and this torch build cannot use this node's CUDA (a CPU wheel,
    a driver older than the wheel's CUDA): the same on every retry (exit 78; one of
    train.inputs.CONFIG_ERRORS)."""


class GPUUnavailable(RuntimeError):
    """The run asks for GPUs and this node shows fewer usable GPUs than it runs processes:
    a fault of this VM, which a new VM may not share: exit 69 (EXIT_GPU_UNAVAILABLE is
    EXIT_TRANSIENT), recovered on a new cluster without counting as an error restart."""


_DRIVER_MISMATCH = ("driver on your system is too old", "driver version is insufficient",
                    "cudaErrorInsufficientDriver", "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH",
                    "forward compatibility was attempted")


def cuda_problem(*, want_gpus: bool, wheel_cuda: Optional[str], available: bool,
                 device_count: int, local_processes: int,
                 init_error: Optional[str]) -> Optional[Exception]:
    """Why this node must not train, or None. Pure, so each case is testable here."""
    if not want_gpus:
        return None
    if wheel_cuda is None:
        return GPUConfigError(
            "the run asks for GPUs but this torch build has no CUDA (a CPU wheel); install "
            "the CUDA build of torch on the node (setup's `pip install torch==...` on a GPU "
            "image), or launch on CPU")
    if not available or device_count == 0:
        why = (init_error or "torch.cuda.is_available() is False").strip().splitlines()[0]
        if any(m.lower() in why.lower() for m in _DRIVER_MISMATCH):
            return GPUConfigError(
                f"CUDA unusable: the NVIDIA driver does not support this torch build's CUDA "
                f"{wheel_cuda} ({why}); use an image with a newer driver or a torch build "
                "for an older CUDA")
        return GPUUnavailable(
            f"the run asks for GPUs but CUDA sees none ({why}); the GPU may have failed or "
            "fallen off the bus on this VM (nvidia-smi, dmesg for Xid errors)")
    if device_count < local_processes:
        return GPUUnavailable(
            f"{device_count} GPU(s) visible but {local_processes} processes on this node: a "
            "GPU is missing or failed on this VM (nvidia-smi, CUDA_VISIBLE_DEVICES)")
    return None


def _probe_cuda() -> tuple[bool, int, Optional[str]]:
    """(available, device count, the error CUDA's initialisation raised, if any)."""
    try:
        torch.cuda.init()
    except Exception as e:  # noqa: BLE001 - the message is the diagnosis
        return False, 0, f"{type(e).__name__}: {e}"
    return torch.cuda.is_available(), torch.cuda.device_count(), None


def check_cuda(want_gpus: bool, local_processes: int) -> None:
    """Raise GPUConfigError / GPUUnavailable before any training on a node without the
    GPUs the run pays for (it used to fall back to CPU and gloo at ~0 tokens/s)."""
    if not want_gpus:
        return
    available, count, err = _probe_cuda() if torch.version.cuda else (False, 0, None)
    problem = cuda_problem(want_gpus=True, wheel_cuda=torch.version.cuda, available=available,
                           device_count=count, local_processes=local_processes, init_error=err)
    if problem is not None:
        raise problem


def gpus_requested(accelerators: str) -> bool:
    """A run spec's ``resources.accelerators`` ("A100-80GB:8") names GPUs ("cpu:2" does not)."""
    return accelerators.split(":")[0].strip().lower() not in ("", "cpu")


def init_distributed(timeout_s: float = 1800, *, want_gpus: bool = False) -> Dist:
    """NCCL on GPUs, gloo on CPU. Works without torchrun too (world size 1). With
    ``want_gpus`` a node without usable CUDA stops here (check_cuda), never on CPU."""
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    check_cuda(want_gpus, local_world)
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
        torch.set_float32_matmul_precision("high")  # TF32 for any fp32 matmul left
        torch.backends.cudnn.allow_tf32 = True
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        dist.init_process_group(backend, rank=rank, world_size=world,
                                timeout=timedelta(seconds=timeout_s),
                                device_id=device if device.type == "cuda" else None)
    return Dist(rank, local_rank, world, local_world, device)


def shard_size(spec, config, d: Dist) -> int:
    """The planner's shard size for this run on this world (see the module docstring).
    An accelerator the recipes do not know (memory unknown): one node per shard group."""
    from vicuna_cloud.recipes import Architecture, RecipeError, hardware_for, shard_size_for

    try:
        hw = hardware_for(spec.resources.accelerators.split(":")[0], d.local_world_size,
                          d.nnodes)
    except RecipeError:
        return d.local_world_size
    arch = Architecture(
        n_params=spec.model.n_params, n_layers=config.num_hidden_layers,
        hidden=config.hidden_size, intermediate=config.intermediate_size,
        n_heads=config.num_attention_heads, vocab=config.vocab_size,
        context=spec.model.context_length)
    return shard_size_for(arch, hw, spec.hyper.micro_batch_tokens)


def mesh_shape(d: Dist, shard: int) -> dict[str, int]:
    """{"replicate": R, "shard": S} (R > 1 only), S = ``shard`` when it divides the world."""
    if shard <= 0 or d.world_size % shard:
        shard = d.world_size
    replicate = d.world_size // shard
    return {"replicate": replicate, "shard": shard} if replicate > 1 else {"shard": shard}


def build_mesh(d: Dist, shard: Optional[int] = None):
    """The device mesh for ``mesh_shape(d, shard)`` (default: shard within a node)."""
    from torch.distributed.device_mesh import init_device_mesh

    shape = mesh_shape(d, shard if shard is not None else d.local_world_size)
    return init_device_mesh(d.device.type, tuple(shape.values()),
                            mesh_dim_names=tuple(shape.keys()))


def apply_fsdp(model, mesh, *, dtype: str, activation_checkpointing: bool) -> None:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if activation_checkpointing:
        # HF decoder layers recompute themselves (non-reentrant) without renaming params,
        # so checkpoints and exports keep the Hugging Face parameter names.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if dtype == "bf16" else MixedPrecisionPolicy()
    inner = model.model
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    if not tied:  # a tied embedding is the head's weight: both stay in the root unit
        fully_shard(inner.embed_tokens, mesh=mesh, mp_policy=mp)
    layers = list(inner.layers)
    for i, layer in enumerate(layers):
        # The last layer's params are needed right away by backward: keep them gathered.
        fully_shard(layer, mesh=mesh, mp_policy=mp, reshard_after_forward=i < len(layers) - 1)
    if not tied:  # backward starts with the head: keep it gathered after forward
        fully_shard([inner.norm, model.lm_head], mesh=mesh, mp_policy=mp,
                    reshard_after_forward=False)
    fully_shard(model, mesh=mesh, mp_policy=mp)


def fsdp_units(model) -> list[str]:
    """Names of the modules that are their own FSDP unit (root = '')."""
    from torch.distributed.fsdp import FSDPModule

    return [n for n, m in model.named_modules() if isinstance(m, FSDPModule)]


def set_micro_batch(model, *, last: bool) -> None:
    """Before each micro-batch's backward: replicas all-reduce only on the last one, and
    FSDP waits for pending reductions only then."""
    if hasattr(model, "set_requires_all_reduce"):
        model.set_requires_all_reduce(last)
        model.set_is_last_backward(last)


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


def all_reduce_max(value: int, device: torch.device) -> int:
    t = torch.tensor([value], dtype=torch.long, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's decision, on every rank (budget stop, preemption)."""
    t = torch.tensor([1 if flag else 0], dtype=torch.long, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast(t, src=0)
    return bool(t.item())
