"""Global batch -> per-rank micro-batches, padded or packed.

- ``padded`` (FastChat-faithful): ``micro_batch_size`` conversations per micro-batch, right
  padded to ``max_length``; an attention mask hides the padding.
- ``packed`` (default): conversations laid end to end in one row up to
  ``micro_batch_tokens``; ``position_ids`` restart at 0 for every conversation and no
  attention mask is passed, which transformers turns into a block-diagonal causal mask
  (SDPA/eager on CPU) or flash-attention varlen (GPU): attention never crosses samples.

Targets are pre-shifted per conversation (see masking.Example), so the two layouts train
exactly the same tokens. Conversations are dealt to ranks longest-first onto the rank with
the fewest tokens, so ranks finish their accumulation loops at about the same time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from train.masking import IGNORE, Example

PAD_ID = 0


@dataclass
class MicroBatch:
    input_ids: torch.Tensor               # [B, T]
    targets: torch.Tensor                 # [B, T], IGNORE where not trained
    position_ids: torch.Tensor            # [B, T]
    attention_mask: Optional[torch.Tensor]  # [B, T] for padded, None for packed
    n_tokens: int                         # real (non-pad) tokens
    n_trained: int                        # tokens with a target
    seq_lens: list[int]                   # real length of each conversation (for FLOPs)
    keep: Optional[torch.Tensor] = None   # columns where some row trains (logits needed)

    def __post_init__(self) -> None:
        if self.keep is None:  # computed on the host: no device sync in the loss
            keep = (self.targets != IGNORE).any(dim=0).nonzero().view(-1)
            self.keep = keep if keep.numel() else torch.zeros(1, dtype=torch.long)

    @property
    def n_slots(self) -> int:
        return self.input_ids.numel()

    def to(self, device) -> "MicroBatch":
        mv = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return MicroBatch(mv(self.input_ids), mv(self.targets), mv(self.position_ids),
                          mv(self.attention_mask), self.n_tokens, self.n_trained, self.seq_lens,
                          mv(self.keep))


def _long(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=torch.long)


def split_across_ranks(indices: Sequence[int], lengths: Sequence[int],
                       world_size: int) -> list[list[int]]:
    """Deal indices to ranks, longest first onto the least-loaded rank (deterministic)."""
    order = sorted(indices, key=lambda i: (-lengths[i], i))
    load = [0] * world_size
    out: list[list[int]] = [[] for _ in range(world_size)]
    for i in order:
        r = min(range(world_size), key=lambda k: (load[k], len(out[k]), k))
        out[r].append(i)
        load[r] += lengths[i]
    return out


def padded_batches(examples: Sequence[Example], micro_batch_size: int,
                   max_length: int) -> list[MicroBatch]:
    out = []
    for s in range(0, len(examples), micro_batch_size):
        group = examples[s: s + micro_batch_size]
        ids = torch.full((len(group), max_length), PAD_ID, dtype=torch.long)
        tgt = torch.full((len(group), max_length), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(group), max_length), dtype=torch.long)
        for r, ex in enumerate(group):
            n = len(ex)
            ids[r, :n] = _long(ex.input_ids)
            tgt[r, :n] = _long(ex.targets)
            mask[r, :n] = 1
        pos = torch.arange(max_length).unsqueeze(0).expand(len(group), -1).contiguous()
        out.append(MicroBatch(ids, tgt, pos, mask, int(mask.sum()),
                              sum(e.n_trained for e in group), [len(e) for e in group]))
    return out


def pack_bins(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """First-fit decreasing: positions into bins of at most ``budget`` tokens."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(budget - lengths[i])
    return bins


def packed_batches(examples: Sequence[Example], budget: int) -> list[MicroBatch]:
    out = []
    for b in pack_bins([len(e) for e in examples], budget):
        group = [examples[i] for i in b]
        ids = _long(np.concatenate([np.asarray(e.input_ids) for e in group])).unsqueeze(0)
        tgt = _long(np.concatenate([np.asarray(e.targets) for e in group])).unsqueeze(0)
        pos = torch.cat([torch.arange(len(e)) for e in group]).unsqueeze(0)
        out.append(MicroBatch(ids, tgt, pos, None, ids.shape[1],
                              sum(e.n_trained for e in group), [len(e) for e in group]))
    return out


def make_micro_batches(examples: Sequence[Example], mode: str, *, micro_batch_size: int,
                       micro_batch_tokens: int, max_length: int) -> list[MicroBatch]:
    if mode == "padded":
        return padded_batches(examples, micro_batch_size, max_length)
    if mode == "packed":
        return packed_batches(examples, micro_batch_tokens)
    raise ValueError(f"unknown batching mode {mode!r}: use 'packed' or 'padded'")


def filler_batch() -> MicroBatch:
    """Two untrained tokens: keeps a rank with fewer micro-batches in step with the others
    (FSDP collectives need every rank to run the same number of forward/backward passes)."""
    ids = torch.full((1, 2), PAD_ID, dtype=torch.long)
    return MicroBatch(ids, torch.full_like(ids, IGNORE), torch.arange(2).unsqueeze(0),
                      None, 0, 0, [])
