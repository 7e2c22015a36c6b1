"""Split long conversations at human/gpt pair boundaries, measured exactly.

Lengths are token counts of the *rendered* conversation (chat template, system prompt,
BOS) with the real tokenizer, the same text the trainer tokenizes. Each conversation is
tokenized once; the token index of every pair's end gives the length of any run of
pairs (plus the system prefix) as an estimate, pieces are packed greedily, and every piece
of a split conversation is then rendered and tokenized again to confirm it fits (a piece
that does not, from tokenization at its edges, is split further). So no piece exceeds
``max_length`` except a single pair that alone is longer: ``long_pair="truncate"`` keeps
it (the trainer truncates it; counted as ``kept_for_truncation``), ``"drop"`` drops it
(counted). Unlike FastChat, the last pair is never lost.

Assistant (trained) tokens are counted exactly from the template's character spans via
the tokenizer's char-to-token map.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from vicuna_cloud.templates import ChatTemplate


@dataclass
class Piece:
    turns: list[dict[str, str]]
    tokens: int
    assistant_tokens: int
    over_length: bool = False


@dataclass
class SplitResult:
    pieces: list[Piece] = field(default_factory=list)
    dropped_pairs: int = 0        # single pairs over max_length dropped (long_pair="drop")


def _token_at(enc, char: int, lo: int) -> int:
    """Token index covering character ``char`` (searching left past unmapped chars)."""
    while char >= lo:
        t = enc.char_to_token(char)
        if t is not None:
            return t
        char -= 1
    return -1


def _assistant_tokens(enc, spans: Sequence[tuple[int, int]]) -> int:
    n = 0
    for s, e in spans:
        if e <= s:
            continue
        a = _token_at(enc, s, 0)
        a = a if a >= 0 else 0
        b = _token_at(enc, e - 1, s)
        if b >= a:
            n += b - a + 1
    return n


def fast_backend(backend):
    """A copy of a SentencePiece-style BPE tokenizer that pre-splits at word starts.

    LLaMA's fast tokenizer runs BPE over the whole text as one "word" (Metaspace with
    split=False): quadratic-ish on long texts and never cached. When no vocabulary entry
    has "▁" after another character, no merge can cross the start of a "▁" run, so
    splitting there first yields the same ids and offsets (a test checks it on real
    data) at several times the speed. Any other tokenizer is returned unchanged.
    """
    try:
        from tokenizers import Regex, Tokenizer, pre_tokenizers
        from tokenizers.models import BPE

        pre = backend.pre_tokenizer
        if not isinstance(pre, pre_tokenizers.Metaspace) or pre.split \
                or not isinstance(backend.model, BPE):
            return backend
        repl = pre.replacement
        if any(repl in t.lstrip(repl) for t in backend.get_vocab()):
            return backend
        fast = Tokenizer.from_str(backend.to_str())
        fast.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Metaspace(replacement=repl, prepend_scheme=pre.prepend_scheme,
                                     split=False),
            pre_tokenizers.Split(Regex(f"{repl}+[^{repl}]*|[^{repl}]+"), "isolated"),
        ])
        return fast
    except Exception:  # any API mismatch: the exact original is always correct
        return backend


class Splitter:
    def __init__(self, tokenizer, template: ChatTemplate, max_length: int,
                 long_pair: str = "truncate"):
        if long_pair not in ("truncate", "drop"):
            raise ValueError("long_pair must be 'truncate' or 'drop'")
        if max_length < 16:
            raise ValueError(f"max_length {max_length} is too small; use at least 16 tokens")
        # The Rust tokenizer directly: no per-call Python overhead, Encoding objects
        # carry lengths and char->token maps without building lists.
        self.tok = fast_backend(getattr(tokenizer, "backend_tokenizer", tokenizer))
        self.template = template
        self.max_length = max_length
        self.long_pair = long_pair

    def encode(self, texts: list[str]):
        return self.tok.encode_batch(texts, add_special_tokens=True)

    def split_batch(self, convs: list[list[dict[str, str]]]) -> list[SplitResult]:
        rendered = [self.template.render(c) for c in convs]
        encs = self.encode([r.text for r in rendered])
        results: list[SplitResult] = []
        redo: list[tuple[int, list[list[dict[str, str]]]]] = []
        for ci, (conv, r, enc) in enumerate(zip(convs, rendered, encs)):
            total = len(enc)
            if total <= self.max_length:
                results.append(SplitResult([Piece(list(conv), total,
                                                  _assistant_tokens(enc, r.assistant_spans))]))
                continue
            results.append(SplitResult())
            redo.append((ci, self._pack(conv, r, enc)))
        if redo:
            self._measure(redo, results)
        return results

    def _pack(self, conv, r, enc) -> list[list[dict[str, str]]]:
        """Greedy packing of pairs by estimated lengths (prefix + tokens of the pairs)."""
        pairs = r.pair_spans
        prefix = _token_at(enc, pairs[0][0] - 1, 0) + 1 if pairs[0][0] > 0 else 1
        ends = [_token_at(enc, e - 1, 0) + 1 for _, e in pairs]
        groups: list[list[dict[str, str]]] = []
        start_pair, start_tok = 0, prefix
        for k in range(len(pairs)):
            length = prefix + ends[k] - start_tok
            if length > self.max_length and k > start_pair:
                groups.append(conv[2 * start_pair: 2 * k])
                start_pair, start_tok = k, ends[k - 1]
        groups.append(conv[2 * start_pair:])
        return groups

    def _measure(self, redo, results) -> None:
        """Render and tokenize each piece; split again any multi-pair piece over the limit."""
        work = [(ci, (k,), g) for ci, groups in redo for k, g in enumerate(groups)]
        done: dict[int, list[tuple[tuple[int, ...], Piece]]] = {}
        while work:
            rendered = [self.template.render(g) for _, _, g in work]
            encs = self.encode([r.text for r in rendered])
            again = []
            for (ci, key, g), r, enc in zip(work, rendered, encs):
                n = len(enc)
                if n > self.max_length and len(g) > 2:
                    half = (len(g) // 2 + 1) // 2 * 2  # split at a pair boundary
                    again += [(ci, key + (0,), g[:half]), (ci, key + (1,), g[half:])]
                    continue
                piece = Piece(g, n, _assistant_tokens(enc, r.assistant_spans),
                              over_length=n > self.max_length)
                if piece.over_length and self.long_pair == "drop":
                    results[ci].dropped_pairs += 1
                else:
                    done.setdefault(ci, []).append((key, piece))
            work = again
        for ci, keyed in done.items():
            results[ci].pieces = [p for _, p in sorted(keyed, key=lambda kp: kp[0])]
