"""Drop conversations whose human turns reproduce an evaluation prompt.

Evaluation files are JSONL with a ``turns`` list of prompt strings (MT-Bench, Vicuna
bench) or a ``prompt``/``question``/``text`` field. Matching, on normalized text (NFKC,
case-folded, every run of non-alphanumerics collapsed to one space):

- exact: a human turn equals an evaluation prompt;
- near: at least ``THRESHOLD`` (0.5) of the prompt's word ``N``-grams (N = 6) occur in a
  single human turn. Half of the 6-grams means a user pasted the prompt with light edits
  or wrapped it in extra text; unrelated questions on the same topic share almost none
  (measured on the 500 dummy conversations: 0 hits). Prompts shorter than N words are
  matched exactly only.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field

N = 6
THRESHOLD = 0.5
_NON_ALNUM = re.compile(r"[^\w]+|_+")


def normalize(text: str) -> str:
    return _NON_ALNUM.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def ngrams(words: list[str], n: int = N) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def load_prompts(paths: list[str]) -> list[str]:
    from vicuna_cloud.data.reader import DataError

    prompts: list[str] = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}: line {lineno}: invalid JSON ({e.msg})") from None
                    turns = obj.get("turns") if isinstance(obj, dict) else None
                    if isinstance(turns, list):
                        prompts += [t for t in turns if isinstance(t, str)]
                        continue
                    for key in ("prompt", "question", "text"):
                        if isinstance(obj, dict) and isinstance(obj.get(key), str):
                            prompts.append(obj[key])
                            break
                    else:
                        raise DataError(
                            f"{path}: line {lineno}: no 'turns', 'prompt', 'question' or 'text' field")
        except FileNotFoundError:
            raise DataError(f"{path}: no such evaluation prompt file") from None
        except UnicodeDecodeError:
            raise DataError(f"{path}: not UTF-8 text") from None
    return prompts


@dataclass
class Decontaminator:
    prompts: list[str]
    exact: set[str] = field(default_factory=set)
    index: dict[tuple[str, ...], list[int]] = field(default_factory=dict)
    sizes: list[int] = field(default_factory=list)

    def __post_init__(self):
        for i, p in enumerate(self.prompts):
            norm = normalize(p)
            if not norm:
                self.sizes.append(0)
                continue
            self.exact.add(norm)
            grams = ngrams(norm.split())
            self.sizes.append(len(grams))
            for g in grams:
                self.index.setdefault(g, []).append(i)

    def match(self, text: str) -> int | None:
        """Index of the evaluation prompt this human turn reproduces, else None."""
        norm = normalize(text)
        if not norm:
            return None
        if norm in self.exact:
            return next(i for i, p in enumerate(self.prompts) if normalize(p) == norm)
        words = norm.split()
        if len(words) < N:
            return None
        hits: dict[int, int] = {}
        for g in ngrams(words):
            for i in self.index.get(g, ()):
                hits[i] = hits.get(i, 0) + 1
        for i, h in hits.items():
            if h >= THRESHOLD * self.sizes[i]:
                return i
        return None

    def contaminated(self, turns: list[dict[str, str]]) -> int | None:
        for t in turns:
            if t["from"] == "human":
                hit = self.match(t["value"])
                if hit is not None:
                    return hit
        return None
