"""See the loss mask before paying for a run: conversations rendered with the chat
template, each token marked trained (assistant reply + stop string) or masked.

A token is trained when its character range overlaps a trained span of the rendered
text, the same rule as the trainer's masking (train/masking.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import orjson

from vicuna_cloud.data.reader import DataError, Reader


@dataclass
class InspectedConversation:
    id: str
    text: str
    tokens: list[tuple[int, int, bool]] = field(default_factory=list)  # (start, end, trained)
    n_tokens: int = 0
    n_trained: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "tokens": self.n_tokens,
                "trained_tokens": self.n_trained,
                "trained_spans": _merge_spans([(s, e) for s, e, t in self.tokens if t])}


def _merge_spans(spans: list[tuple[int, int]]) -> list[list[int]]:
    out: list[list[int]] = []
    for s, e in spans:
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return out


def inspect_file(path: str, n: int = 3, tokenizer: str = "builtin:llama-sp",
                 template: str = "vicuna_v1.1") -> list[InspectedConversation]:
    from vicuna_cloud.templates import TemplateError, get_template
    from vicuna_cloud.tokenizer import TokenizerNotFound, load_tokenizer

    if n < 1:
        raise DataError("--n must be at least 1")
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    try:
        tok = load_tokenizer(tokenizer)
        tpl = get_template(template, eos=tok.eos_token)  # the stop trained for this base
    except (TemplateError, TokenizerNotFound) as e:
        raise DataError(str(e)) from None
    out: list[InspectedConversation] = []
    for _, idx, item in Reader([path]):
        if len(out) >= n:
            break
        if not isinstance(item, dict) or not isinstance(item.get("conversations"), list):
            raise DataError(f"{path}: item {idx} has no 'conversations' list; "
                            "inspect a train.jsonl written by `data prepare`")
        try:
            r = tpl.render(item["conversations"])
        except (TemplateError, AttributeError, TypeError) as e:
            raise DataError(f"{path}: item {idx}: {e}") from None
        enc = tok(r.text, return_offsets_mapping=True, add_special_tokens=True)
        conv = InspectedConversation(str(item.get("id", idx)), r.text)
        spans = r.assistant_spans
        j = 0
        for s, e in enc["offset_mapping"]:
            while j < len(spans) and spans[j][1] <= s:
                j += 1
            trained = e > s and j < len(spans) and e > spans[j][0]
            conv.tokens.append((s, e, trained))
            conv.n_trained += trained
        conv.n_tokens = len(enc["input_ids"])
        out.append(conv)
    return out


def jsonl_line(obj: Any) -> bytes:
    return orjson.dumps(obj)
