"""The loss of a micro-batch, and why the trainer scales it the way it does.

Loss normalisation (why packed and padded agree, and micro-batch boundaries don't matter):
the loss of an optimizer step is the *sum* of token cross-entropies over every trained
token of the global batch divided by the number of trained tokens in the global batch,
``N``. ``N`` is all-reduced before the first micro-batch, each micro-batch backpropagates
``sum_CE(mb) * world_size / N``, and FSDP's gradient reduction averages over ranks
(divides by ``world_size``): the accumulated gradient is exactly d(sum_CE / N). A
conversation weighs by its trained tokens (FastChat's per-micro-batch mean weighted short
replies more, and depended on how samples fell into micro-batches).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from train import attention
from train.batching import MicroBatch
from train.masking import IGNORE


def micro_batch_loss(model, mb: MicroBatch) -> torch.Tensor:
    """Summed token cross-entropy of one micro-batch (fp32 logits).

    Logits are computed only at positions some row trains (``logits_to_keep`` = those
    column indices): the prompt is ~60% of a Vicuna conversation, and a [tokens x 32000]
    fp32 logit tensor is the largest activation of the step. (A filler micro-batch keeps
    one untrained column, so the LM head stays in the graph.)"""
    out = model(input_ids=mb.input_ids, position_ids=mb.position_ids, use_cache=False,
                logits_to_keep=mb.keep, **attention.model_kwargs(model, mb))
    logits = out.logits.float()
    targets = mb.targets[:, mb.keep]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE, reduction="sum")
