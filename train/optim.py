"""AdamW, the learning-rate schedule and gradient clipping (FastChat's recipe)."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from vicuna_cloud.runspec import Hyperparameters


def no_decay(name: str, param: torch.Tensor) -> bool:
    """Biases and norm weights (all 1-D tensors) take no weight decay."""
    return param.ndim < 2 or name.endswith(".bias") or "norm" in name


def build_optimizer(model, h: Hyperparameters) -> torch.optim.Optimizer:
    decay, plain = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (plain if no_decay(name, p) else decay).append(p)
    groups = [{"params": decay, "weight_decay": h.weight_decay},
              {"params": plain, "weight_decay": 0.0}]
    device = next((p.device.type for g in groups for p in g["params"]), "cpu")
    return torch.optim.AdamW(groups, lr=h.learning_rate, betas=(h.adam_beta1, h.adam_beta2),
                             eps=h.adam_eps, **adamw_impl(device))


def adamw_impl(device_type: str) -> dict:
    """fused on CUDA (one kernel for the whole update, DTensor shards included), foreach
    elsewhere (the CPU runs stay as they were, bit for bit)."""
    return {"fused": True} if device_type == "cuda" else {"foreach": True}


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    return math.ceil(total_steps * warmup_ratio)


def lr_factor(step: int, total_steps: int, warmup: int) -> float:
    """Multiplier for the lr of optimizer step ``step`` (0-based): linear warmup over
    ``warmup`` steps reaching 1 at the last warmup step (so step 0 is not wasted at lr 0),
    then half a cosine towards 0 over the rest."""
    if step < warmup:
        return (step + 1) / warmup
    rest = max(1, total_steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / rest)))


def build_scheduler(optimizer, total_steps: int, warmup_ratio: float) -> LambdaLR:
    w = warmup_steps(total_steps, warmup_ratio)
    return LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, w))


def clip_grad_norm(model, max_norm: float) -> float:
    """Clip to ``max_norm``; returns the global norm before clipping (sharded-aware)."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm, foreach=True)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)
