"""Assistant-only labels from the template's character spans and the tokenizer's offsets.

The whole conversation is rendered once and tokenized once; a token is trained when its
character range overlaps a trained span (assistant reply + stop string). No per-turn
length arithmetic, so tokenizers that merge or split across turn boundaries cannot shift
the mask (FastChat's hard-coded ``-2`` did with Llama-2 tokenizers).

A SentencePiece token may start one character early, at the space that the template puts
between ``ASSISTANT:`` and the reply (``▁Hello``); that is expected. Any other token that
straddles a span edge is counted as *misaligned* (still trained: it holds reply text).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from vicuna_cloud.templates import ChatTemplate

IGNORE = -100


@dataclass
class Example:
    """One tokenized conversation. ``targets[i]`` is the label for predicting token i+1,
    already shifted, so packing samples end to end never trains across a boundary."""

    input_ids: Sequence[int]   # list, or a numpy view into a TokenStore
    targets: Sequence[int]
    truncated: bool = False
    misaligned: bool = False

    @property
    def n_trained(self) -> int:
        return int(np.count_nonzero(np.asarray(self.targets) != IGNORE))

    def __len__(self) -> int:
        return len(self.input_ids)


def token_labels(text: str, spans: Sequence[tuple[int, int]],
                 offsets: Sequence[tuple[int, int]], ids: Sequence[int]) -> tuple[list[int], bool]:
    """Unshifted labels (token id or IGNORE) and whether any token straddled a span edge."""
    labels = [IGNORE] * len(ids)
    misaligned = False
    j = 0
    for i, (start, end) in enumerate(offsets):
        if end <= start:  # BOS and other zero-width specials
            continue
        while j < len(spans) and spans[j][1] <= start:
            j += 1
        if j == len(spans):
            break
        s, e = spans[j]
        if end <= s:
            continue
        labels[i] = ids[i]
        if start < s and not (start == s - 1 and text[start] == " "):
            misaligned = True
        if end > e:
            misaligned = True
    return labels, misaligned


def tokenize_conversation(tokenizer, template: ChatTemplate,
                          conversation: Sequence[Mapping[str, str]],
                          max_length: int) -> Example:
    """Render, tokenize with offsets, mask, truncate to ``max_length`` tokens, shift."""
    rendered = template.render(conversation)
    enc = tokenizer(rendered.text, return_offsets_mapping=True, add_special_tokens=True)
    ids = list(enc["input_ids"])
    labels, misaligned = token_labels(rendered.text, rendered.assistant_spans,
                                      enc["offset_mapping"], ids)
    truncated = len(ids) > max_length
    ids, labels = ids[:max_length], labels[:max_length]
    return Example(ids, labels[1:] + [IGNORE], truncated=truncated, misaligned=misaligned)


def tokenize_batch(tokenizer, template: ChatTemplate,
                   conversations: Sequence[Sequence[Mapping[str, str]]],
                   max_length: int) -> list[Example]:
    """``tokenize_conversation`` for many conversations in one (parallel, Rust) encode call.
    Conversations that do not render raise TemplateError from ``template.render``."""
    rendered = [template.render(c) for c in conversations]
    enc = tokenizer([r.text for r in rendered], return_offsets_mapping=True,
                    add_special_tokens=True)
    out = []
    for r, ids, offs in zip(rendered, enc["input_ids"], enc["offset_mapping"]):
        labels, misaligned = token_labels(r.text, r.assistant_spans, offs, ids)
        truncated = len(ids) > max_length
        ids, labels = list(ids[:max_length]), labels[:max_length]
        out.append(Example(ids, labels[1:] + [IGNORE], truncated=truncated,
                           misaligned=misaligned))
    return out


class TokenStore:
    """All examples of a run in three flat int32 arrays (a 125K-conversation dataset as
    Python lists would cost gigabytes per rank). Indexing returns Examples of views."""

    def __init__(self, ids: np.ndarray, targets: np.ndarray, offsets: np.ndarray):
        self.ids, self.targets, self.offsets = ids, targets, offsets
        self.lengths = np.diff(offsets)

    @classmethod
    def from_examples(cls, examples: Sequence[Example]) -> "TokenStore":
        offsets = np.zeros(len(examples) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(e) for e in examples])
        cat = lambda xs: np.concatenate([np.asarray(x, dtype=np.int32) for x in xs]) \
            if xs else np.zeros(0, np.int32)  # noqa: E731
        return cls(cat([e.input_ids for e in examples]), cat([e.targets for e in examples]),
                   offsets)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> Example:
        a, b = self.offsets[i], self.offsets[i + 1]
        return Example(self.ids[a:b], self.targets[a:b])

    def save(self, path: str) -> None:
        tmp = f"{path}.tmp.npz"
        np.savez(tmp, ids=self.ids, targets=self.targets, offsets=self.offsets)
        import os
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> "TokenStore":
        with np.load(path) as z:
            return cls(z["ids"], z["targets"], z["offsets"])
