"""Process group, device mesh and FSDP2 sharding.

One FSDP2 unit per decoder layer plus the root (embeddings, final norm, LM head), so only
one layer's full weights are gathered at a time (plus one prefetched). With bf16 the
parameters are gathered in bf16 and gradients reduced in fp32 over fp32 master weights.
Multi-node runs use HSDP: shard within a node (fast NVLink), replicate across nodes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

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


def init_distributed(timeout_s: float = 1800) -> Dist:
    """NCCL on GPUs, gloo on CPU. Works without torchrun too (world size 1)."""
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
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


def build_mesh(d: Dist):
    from torch.distributed.device_mesh import init_device_mesh

    if d.nnodes > 1 and d.world_size % d.local_world_size == 0:
        return init_device_mesh(d.device.type, (d.nnodes, d.local_world_size),
                                mesh_dim_names=("replicate", "shard"))
    return init_device_mesh(d.device.type, (d.world_size,), mesh_dim_names=("shard",))


def apply_fsdp(model, mesh, *, dtype: str, activation_checkpointing: bool) -> None:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if activation_checkpointing:
        # HF decoder layers recompute themselves (non-reentrant) without renaming params,
        # so checkpoints and exports keep the Hugging Face parameter names.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if dtype == "bf16" else MixedPrecisionPolicy()
    layers = list(model.model.layers)
    for i, layer in enumerate(layers):
        # The last layer's params are needed right away by backward: keep them gathered.
        fully_shard(layer, mesh=mesh, mp_policy=mp, reshard_after_forward=i < len(layers) - 1)
    fully_shard(model, mesh=mesh, mp_policy=mp)


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
