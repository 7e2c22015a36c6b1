"""Which conversations each optimizer step trains on, as a pure function of the position.

The data stream is epoch 0's seeded permutation, then epoch 1's, and so on. Step k takes
the next ``global_batch`` indices from the stream; a batch may straddle an epoch boundary.
The run lasts ``ceil(epochs * n / global_batch)`` steps and trains exactly
``round(epochs * n)`` conversations, so only the very last batch can be short.
The position is ``(epoch, offset)``: resuming computes one permutation, it replays nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def total_steps(n_samples: int, epochs: float, global_batch: int) -> int:
    return max(1, math.ceil(total_samples(n_samples, epochs) / global_batch))


def total_samples(n_samples: int, epochs: float) -> int:
    return max(1, round(epochs * n_samples))


@dataclass
class GlobalBatchSampler:
    n_samples: int
    global_batch: int
    epochs: float
    seed: int

    def __post_init__(self) -> None:
        self._cache: dict[int, np.ndarray] = {}

    @property
    def steps(self) -> int:
        return total_steps(self.n_samples, self.epochs, self.global_batch)

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            self._cache = {epoch: epoch_permutation(self.n_samples, self.seed, epoch)}
        return self._cache[epoch]

    def batch(self, epoch: int, offset: int, step: int) -> tuple[list[int], int, int]:
        """Indices of step ``step`` starting at ``(epoch, offset)``, and the next position."""
        remaining = total_samples(self.n_samples, self.epochs) - step * self.global_batch
        want = min(self.global_batch, remaining)
        out: list[int] = []
        while len(out) < want:
            perm = self._perm(epoch)
            take = perm[offset: offset + want - len(out)]
            out.extend(int(i) for i in take)
            offset += len(take)
            if offset >= self.n_samples:
                epoch, offset = epoch + 1, 0
        return out, epoch, offset
