"""Attention FLOPs as the kernel in use computes them (torch-free: shared by the cost
estimate, the trainer's MFU and bench/gpu_check.py, so a measured MFU converts back into
hours with the same FLOP count it was measured with).

PaLM's 12·L·H·S per token counts the whole S x S square of scores and values (forward +
backward). What the trainer's kernels compute instead, per query, averaged over a document
of s tokens (``attention_context``):
- ``varlen`` (flash varlen over cu_seqlens, CUDA bf16; its CPU kernel): causal inside the
  document only, (s + 1) / 2 keys;
- ``flex`` (FlexAttention with the document BlockMask, CUDA fp32): whole 128-token tiles on
  the diagonal, about (s + 128) / 2 keys, at most s;
- ``dense`` (transformers' SDPA with the dense packed [T, T] mask, no block skipping):
  every key of the packed row, T.
FLOPs per token of attention = 12·L·H·context.
"""

from __future__ import annotations

from typing import Optional

KERNELS = ("varlen", "flex", "dense")
FLEX_TILE = 128


def kernel_for(device_type: str, dtype: str) -> str:
    """The trainer's packed-attention kernel for a device and compute dtype: flash varlen
    needs bf16/fp16 on CUDA; CUDA fp32 takes FlexAttention; CPU runs varlen's CPU kernel."""
    return "flex" if device_type == "cuda" and dtype in ("fp32", "float32") else "varlen"


def attention_context(kernel: str, seq: float, row: Optional[float] = None) -> float:
    """Keys per query the kernel computes for a document of ``seq`` tokens in a row of
    ``row`` tokens (``dense`` needs the row)."""
    if kernel == "varlen":
        return (seq + 1) / 2
    if kernel == "flex":
        return min(float(seq), (seq + FLEX_TILE) / 2)
    if kernel == "dense":
        if row is None:
            raise ValueError("the dense kernel's attention cost needs the packed row length")
        return float(row)
    raise ValueError(f"unknown attention kernel {kernel!r}; known: {', '.join(KERNELS)}")


def attention_flops_per_token(kernel: str, n_layers: int, hidden: int, seq: float,
                              row: Optional[float] = None) -> float:
    return 12.0 * n_layers * hidden * attention_context(kernel, seq, row)
