"""Eval loss on the held-out split (``eval.jsonl`` of ``data prepare --eval-fraction``).

Same normalisation as training (train/loss.py): the sum of token cross-entropies over
every trained (assistant) token of the whole split, divided by the number of those tokens,
so an eval loss and a step's training loss are the same quantity on different data. The
split is sharded across ranks by length like a global batch; every rank runs the same
number of forwards (fillers), since FSDP's all-gathers are collectives. No gradient, no
RNG use, and the model goes back to train mode: evaluating never changes the weights a
resumed run ends with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from train import batching, parallel


@dataclass(frozen=True)
class EvalResult:
    loss: float
    trained_tokens: int
    conversations: int
    seconds: float


class Evaluator:
    """Holds the tokenized split; ``run(model)`` is collective (call it on every rank)."""

    def __init__(self, store, hyper, d: parallel.Dist):
        self.store, self.h, self.d = store, hyper, d
        idx = list(range(len(store)))
        lengths = store.lengths.tolist()
        self.mine = batching.split_across_ranks(idx, lengths, d.world_size)[d.rank]

    def due(self, step: int, total: int, first_step: int) -> bool:
        """At the start of the run, every ``eval_every_steps`` and at the end."""
        every = self.h.eval_every_steps
        return (step == 0 and first_step == 0) or step == total or bool(
            every and step % every == 0 and step != first_step)

    @torch.no_grad()
    def run(self, model, loss_fn) -> EvalResult:
        import time

        t0 = time.perf_counter()
        h = self.h
        mbs = batching.make_micro_batches(
            [self.store[i] for i in self.mine], h.batching, micro_batch_size=h.micro_batch_size,
            micro_batch_tokens=h.micro_batch_tokens, max_length=h.max_length)
        n_mb = parallel.all_reduce_max(len(mbs), self.d.device)
        mbs += [batching.filler_batch() for _ in range(n_mb - len(mbs))]
        was_training = model.training
        model.eval()
        ce = torch.zeros((), dtype=torch.float64, device=self.d.device)
        try:
            for mb in mbs:
                ce += loss_fn(model, mb.to(self.d.device)).double()
        finally:
            model.train(was_training)
        total, n = parallel.all_reduce_sum(
            [float(ce), sum(mb.n_trained for mb in mbs)], self.d.device)
        return EvalResult(total / max(n, 1.0), int(n), len(self.store),
                          time.perf_counter() - t0)


def build(spec, examples, d) -> Optional[Evaluator]:
    """An Evaluator, or None when the run has no held-out split."""
    if examples is None or len(examples) == 0:
        return None
    return Evaluator(examples, spec.hyper, d)
