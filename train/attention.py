"""Packed-row attention without a dense [T, T] mask.

transformers 5.x under ``sdpa`` turns a packed row (position_ids restarting, no attention
mask) into a dense boolean [1, 1, T, T] mask and runs SDPA with ``is_causal=False``: every
score of the square is computed, then masked (64 MiB of mask at 8,192 tokens, no block
skipping). Here every micro-batch carries its documents' lengths on the host
(:class:`PackedLayout`): ``cu_seqlens`` is built from them with numpy and copied to the
device (no device-to-host sync, no [T, T] tensor), and the attention function registered
with transformers as :data:`IMPL` runs one of two kernels:

- ``varlen`` (CUDA bf16/fp16, and CPU): ``torch.nn.attention.varlen.varlen_attn``, i.e. the
  flash-attention varlen kernel over ``cu_seqlens``: each document attends causally to
  itself only and no masked score is ever computed. torch ships that op for CUDA only; on
  CPU this module registers a CPU kernel *for the same op* (forward and backward, exact
  math per document, with the log-sum-exp), so the CPU trainer and tests go through the
  very call, autograd formula and dispatch that the GPU takes. Only the innermost kernel
  differs.
- ``flex`` (CUDA fp32, where flash has no kernel): FlexAttention, compiled, with a
  ``BlockMask`` built on the host from the same lengths (fully masked tiles skipped).
  FlexAttention has no backward on CPU in torch 2.13 (NotImplementedError), so on CPU it is
  only checked forward-only against ``varlen``.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from vicuna_cloud.costs.flops import kernel_for

#: Name under which the attention function is registered with transformers.
IMPL = "vicuna_packed"
#: The comparison path of the benchmarks: transformers' SDPA with its dense packed mask.
DENSE = "sdpa"
KERNELS = ("varlen", "flex")
#: FlexAttention's tile size (queries and keys).
BLOCK = 128


def select_kernel(device: torch.device, dtype: torch.dtype) -> str:
    """The kernel the trainer uses for a compute dtype on a device (never a dense mask).
    Flash varlen needs bf16/fp16 on CUDA; CUDA fp32 takes FlexAttention; CPU takes varlen
    through the CPU kernel registered below. (One rule, with the cost estimate's.)"""
    return kernel_for(device.type, "fp32" if dtype == torch.float32 else "bf16")


def kernel_name(device: torch.device, run_dtype: str) -> str:
    """The kernel for a run spec's ``hyper.dtype`` ("bf16" computes in bf16 under FSDP)."""
    return kernel_for(device.type, run_dtype)


@dataclass
class PackedLayout:
    """The documents of a micro-batch: ``rows[r]`` = lengths of row r's documents, in
    order, in a [B, T] tensor (padding after the last one, if any, is its own segment, so
    it never mixes with real tokens). Host data only until :meth:`to` is called."""

    rows: list[list[int]]
    length: int
    kernel: Optional[str] = None  # None: select_kernel(device, compute dtype) at the call
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    _cache: dict = field(default_factory=dict, repr=False)

    def segments(self) -> list[int]:
        """Segment lengths over the flattened [B * T] tokens (documents, then padding)."""
        out: list[int] = []
        for r, lens in enumerate(self.rows):
            used = int(sum(lens))
            if used > self.length:
                raise ValueError(f"row {r} holds {used} tokens, more than its length "
                                 f"{self.length}")
            out += [int(n) for n in lens if n > 0]
            if used < self.length:
                out.append(self.length - used)
        return out

    @property
    def max_len(self) -> int:
        return max(self.segments())

    @property
    def cu_seqlens(self) -> torch.Tensor:
        """int32 [segments + 1] on the device, made once per micro-batch (not per layer)."""
        if "cu" not in self._cache:
            cu = np.concatenate([[0], np.cumsum(self.segments())]).astype(np.int32)
            self._cache["cu"] = torch.from_numpy(cu).to(self.device, non_blocking=True)
        return self._cache["cu"]

    @property
    def block_mask(self):
        if "bm" not in self._cache:
            self._cache["bm"] = block_mask(self.rows, self.length, self.device)
        return self._cache["bm"]


# ---- the varlen op's CPU kernel ------------------------------------------------------------
def _segments(cu: torch.Tensor) -> list[tuple[int, int]]:
    b = cu.tolist()  # CPU tensor: no device sync
    return [(b[i], b[i + 1]) for i in range(len(b) - 1) if b[i + 1] > b[i]]


def _expand_kv(t: torch.Tensor, heads: int) -> torch.Tensor:
    return t if t.shape[1] == heads else t.repeat_interleave(heads // t.shape[1], dim=1)


def _bhsd(t: torch.Tensor) -> torch.Tensor:
    """[s, H, D] -> [1, H, s, D], the layout of ATen's CPU flash kernel."""
    return t.transpose(0, 1).unsqueeze(0)


def _check_cpu_args(cu_seq_q, cu_seq_k, window_size, seqused_k=None, block_table=None):
    if cu_seq_k is not None and not torch.equal(cu_seq_q, cu_seq_k):
        raise NotImplementedError("CPU varlen_attn: queries and keys must share cu_seqlens")
    if window_size not in (None, [-1, -1], [-1, 0]) or seqused_k is not None \
            or block_table is not None:
        raise NotImplementedError("CPU varlen_attn: no sliding window or paged KV")


# Each document is one call of ATen's CPU flash-attention kernel (the one SDPA runs on CPU;
# it returns the log-sum-exp the backward needs): exact softmax attention within the
# document, no score across documents ever computed (bench/attention.py, CPU, 8 x 512
# tokens, fwd+bwd: 202 ms; the einsum kernel it replaced: 367 ms).
def _varlen_fwd_cpu(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False,
                    scale=None, window_size=None, enable_gqa=False, seqused_k=None,
                    block_table=None, num_splits=None):
    _check_cpu_args(cu_seq_q, cu_seq_k, window_size, seqused_k, block_table)
    heads = query.shape[1]
    out = torch.zeros_like(query)
    lse = torch.full((heads, query.shape[0]), float("-inf"), dtype=torch.float32)
    k, v = _expand_kv(key, heads), _expand_kv(value, heads)
    for a, b in _segments(cu_seq_q):
        o, m = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            _bhsd(query[a:b]), _bhsd(k[a:b]), _bhsd(v[a:b]), 0.0, bool(is_causal),
            scale=scale)
        out[a:b] = o[0].transpose(0, 1)
        lse[:, a:b] = m[0]
    return out, lse, torch.zeros(2, dtype=torch.uint64)


def _varlen_bwd_cpu(grad_out, query, key, value, out, lse, cu_seq_q, cu_seq_k, max_q, max_k,
                    is_causal, rng_state, scale=None, window_size=None):
    _check_cpu_args(cu_seq_q, cu_seq_k, window_size)
    heads, kv_heads = query.shape[1], key.shape[1]
    dq = torch.zeros_like(query)
    # fp32: a kv head's gradient is the sum over its query heads, rounded once at the end.
    dk = torch.zeros(key.shape[0], heads, key.shape[2], dtype=torch.float32)
    dv = torch.zeros(value.shape[0], heads, value.shape[2], dtype=torch.float32)
    k, v = _expand_kv(key, heads), _expand_kv(value, heads)
    for a, b in _segments(cu_seq_q):
        gq, gk, gv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            _bhsd(grad_out[a:b]), _bhsd(query[a:b]), _bhsd(k[a:b]), _bhsd(v[a:b]),
            _bhsd(out[a:b]), lse[None, :, a:b].contiguous(), 0.0, bool(is_causal),
            scale=scale)
        dq[a:b], dk[a:b], dv[a:b] = (g[0].transpose(0, 1) for g in (gq, gk, gv))
    if kv_heads != heads:  # GQA: a kv head's gradient sums over its query heads
        g = heads // kv_heads
        dk = dk.view(dk.shape[0], kv_heads, g, -1).sum(2)
        dv = dv.view(dv.shape[0], kv_heads, g, -1).sum(2)
    return dq, dk.to(key.dtype), dv.to(value.dtype)


@functools.lru_cache(maxsize=1)
def register_cpu_varlen() -> None:
    """Give torch's ``torch_attn::_varlen_attn`` (and its backward) a CPU kernel."""
    import torch.nn.attention.varlen  # noqa: F401 - defines the ops

    torch.library.register_kernel("torch_attn::_varlen_attn", "cpu", _varlen_fwd_cpu)
    torch.library.register_kernel("torch_attn::_varlen_attn_backward", "cpu", _varlen_bwd_cpu)


# ---- FlexAttention -------------------------------------------------------------------------
def document_ids(rows: Sequence[Sequence[int]], length: int) -> np.ndarray:
    """[B, length] int32 document index of every token (padding = one more document)."""
    out = np.empty((len(rows), length), dtype=np.int32)
    for r, lens in enumerate(rows):
        used = int(sum(lens))
        out[r, :used] = np.repeat(np.arange(len(lens), dtype=np.int32),
                                  np.asarray(lens, dtype=np.int64))
        out[r, used:] = len(lens)
    return out


def block_structure(doc: np.ndarray, block: int = BLOCK):
    """Per (query tile, key tile): some pair attends (``partial``, mask evaluated) or all
    pairs attend (``full``), for causal attention inside documents. Documents are contiguous
    and numbered in order, so each tile's first and last document id decide."""
    t = doc.shape[1]
    n = -(-t // block)
    starts = np.arange(n) * block
    first, last = doc[:, starts], doc[:, np.minimum(starts + block, t) - 1]
    q_first, q_last = first[:, :, None], last[:, :, None]
    k_first, k_last = first[:, None, :], last[:, None, :]
    below = np.tril(np.ones((n, n), dtype=bool), k=-1)[None]
    touches = (k_last >= q_first) & below
    full = touches & (k_first == q_last)
    partial = (touches & ~full) | np.eye(n, dtype=bool)[None]
    return partial, full


def _kv_blocks(sel: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    num = sel.sum(-1).astype(np.int32)
    order = np.argsort(~sel, axis=-1, kind="stable").astype(np.int32)
    return torch.from_numpy(num[:, None]), torch.from_numpy(order[:, None])


def block_mask(rows: Sequence[Sequence[int]], length: int, device: torch.device,
               block: int = BLOCK):
    """FlexAttention BlockMask of rows of packed documents, built on the host."""
    from torch.nn.attention.flex_attention import BlockMask

    doc_np = document_ids(rows, length)
    partial, full = block_structure(doc_np, block)
    doc = torch.from_numpy(doc_np).to(device, non_blocking=True)

    def doc_causal(b, h, q_idx, kv_idx):
        return (doc[b, q_idx] == doc[b, kv_idx]) & (kv_idx <= q_idx)

    mask = BlockMask.from_kv_blocks(*_kv_blocks(partial), *_kv_blocks(full), BLOCK_SIZE=block,
                                    mask_mod=doc_causal, seq_lengths=(length, length))
    return mask if device.type == "cpu" else mask.to(device)


@functools.lru_cache(maxsize=2)
def _flex(compiled: bool):
    from torch.nn.attention.flex_attention import flex_attention

    # dynamic: every packed micro-batch has its own length; one graph for all of them.
    return torch.compile(flex_attention, dynamic=True) if compiled else flex_attention


# ---- the attention function transformers calls ---------------------------------------------
def layout_from_positions(position_ids: Optional[torch.Tensor], batch: int,
                          length: int, device: torch.device) -> PackedLayout:
    """For callers outside the trainer (no layout given): documents where position_ids
    restart, as transformers infers them, else one causal sequence per row. Reading the
    positions is a device-to-host copy; the trainer passes its layout and never pays it."""
    if position_ids is None:
        return PackedLayout([[length]] * batch, length, device=device)
    pos = position_ids.expand(batch, -1).cpu().numpy()
    rows = []
    for r in pos:
        starts = [0] + [i for i in range(1, length) if r[i] != r[i - 1] + 1] + [length]
        rows.append([b - a for a, b in zip(starts, starts[1:])])
    return PackedLayout(rows, length, device=device)


def packed_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                   packed_layout: Optional[PackedLayout] = None, position_ids=None, **kwargs):
    """transformers attention interface: q [B, H, T, D], k/v [B, Hkv, T, D] -> [B, T, H, D]."""
    if packed_layout is None:
        packed_layout = layout_from_positions(position_ids, query.shape[0], query.shape[2],
                                              query.device)
    if dropout:
        raise ValueError(f"attention {IMPL!r} has no dropout; set attention_dropout=0")
    b, h, t, d = query.shape
    gqa = key.shape[1] != h
    kernel = packed_layout.kernel or select_kernel(query.device, query.dtype)
    if kernel not in KERNELS:
        raise ValueError(f"unknown packed attention kernel {kernel!r}; use one of {KERNELS}")
    if kernel == "flex":
        out = _flex(query.device.type == "cuda" or os.environ.get("VICUNA_FLEX_COMPILE") == "1")(
            query, key, value, block_mask=packed_layout.block_mask, scale=scaling,
            enable_gqa=gqa)
        return out.transpose(1, 2).contiguous(), None
    from torch.nn.attention.varlen import varlen_attn

    if query.device.type == "cpu":
        register_cpu_varlen()
    flat = lambda x: x.transpose(1, 2).reshape(b * t, x.shape[1], d)  # noqa: E731
    cu = packed_layout.cu_seqlens
    out = varlen_attn(flat(query), flat(key), flat(value), cu, cu, packed_layout.max_len,
                      packed_layout.max_len, scale=scaling, window_size=(-1, 0),
                      enable_gqa=gqa)
    return out.view(b, t, h, d), None


def register() -> None:
    """Make :data:`IMPL` a transformers attention implementation (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(IMPL, packed_forward)


def layout_of(mb, kernel: Optional[str] = None) -> PackedLayout:
    """A micro-batch's documents (train.batching.MicroBatch): a packed row holds
    ``seq_lens`` end to end; a padded batch holds one conversation per row."""
    t = mb.input_ids.shape[1]
    rows = [list(mb.seq_lens)] if mb.attention_mask is None else [[n] for n in mb.seq_lens]
    return PackedLayout(rows, t, kernel=kernel, device=mb.input_ids.device)


def model_kwargs(model, mb) -> dict:
    """The attention inputs of one forward: the layout under :data:`IMPL`, else the 2-D
    padding mask (eager/sdpa, as transformers expects)."""
    if getattr(model.config, "_attn_implementation", None) == IMPL:
        # ``attention_kernel`` on the model: a benchmark's override of select_kernel.
        return {"packed_layout": layout_of(mb, getattr(model, "attention_kernel", None))}
    return {"attention_mask": mb.attention_mask}
