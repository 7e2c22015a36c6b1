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
the tokenizer's char-to-token map, or by ``WordCounter`` (same numbers, faster).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice
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


def fast_backend(backend, copy: bool = True):
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
        # copy=False: the caller owns ``backend`` (freshly loaded) and it is changed in
        # place, saving a serialize/parse round trip (~0.1 s).
        fast = Tokenizer.from_str(backend.to_str()) if copy else backend
        fast.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Metaspace(replacement=repl, prepend_scheme=pre.prepend_scheme,
                                     split=False),
            pre_tokenizers.Split(Regex(f"{repl}+[^{repl}]*|[^{repl}]+"), "isolated"),
        ])
        return fast
    except Exception:  # any API mismatch: the exact original is always correct
        return backend


class WordCounter:
    """Exact token counts without running the full tokenizer on every text.

    With a SentencePiece-style BPE (no normalizer, Metaspace pre-tokenizer, a vocabulary
    where "▁" only starts tokens: see ``fast_backend``), a text's tokens are the special
    tokens found in it, plus BOS, plus the BPE of each "word" (a run of "▁" and the
    non-"▁" characters after it) computed independently. So we count each distinct word
    once and sum from a dict: ~10x faster than encoding, same numbers (a test compares
    with the real tokenizer on real and adversarial text). Trained tokens follow the
    trainer's rule (a token is trained when it overlaps a trained span); that reduces to
    word sums when every span starts right after a space and ends with a special token,
    true for vicuna_v1.1 (reply + "</s>"). ``WordCounter.build`` returns None otherwise.
    """

    MAX_CACHE = 2_000_000

    def __init__(self, backend, repl: str, prepend_first: bool, n_added: int,
                 specials: list[str]):
        import re

        self.model = backend.model
        self.repl = repl
        self.prepend_first = prepend_first
        self.n_added = n_added
        self.special_re = re.compile("|".join(re.escape(t) for t in
                                              sorted(specials, key=len, reverse=True)))
        self.word_re = re.compile(f"{repl}+[^{repl}]*|[^{repl}]+")
        self.first_re = re.compile(f"[ {repl}]+[^ {repl}]*")
        self.cache: dict[str, int] = {}
        self.cache_sp: dict[str, int] = {}  # part -> tokens of "▁" + part
        self.bare_first: dict[str, bool] = {}
        # (segment, first) -> tokens, for one batch: a long conversation is counted again
        # per pair and per piece (Splitter), mostly from the same segments. None: off.
        self.memo: dict[tuple[str, bool], int] | None = None

    @classmethod
    def build(cls, backend, template: ChatTemplate):
        try:
            from tokenizers import pre_tokenizers
            from tokenizers.models import BPE

            if backend.normalizer is not None or not isinstance(backend.model, BPE):
                return None
            pre = backend.pre_tokenizer
            if isinstance(pre, pre_tokenizers.Sequence):
                pre = pre[0]
            if not isinstance(pre, pre_tokenizers.Metaspace) or pre.split:
                return None
            repl = pre.replacement
            if pre.prepend_scheme != "first" or len(repl) != 1:
                return None
            if any(repl in t.lstrip(repl) for t in backend.get_vocab()):
                return None
            added = list(backend.get_added_tokens_decoder().values())
            if any(t.lstrip or t.rstrip or t.single_word or t.normalized for t in added):
                return None
            specials = [t.content for t in added]
            if template.sep2 not in specials or not template.assistant_role:
                return None
            n_added = len(backend.encode("", add_special_tokens=True).ids)
            return cls(backend, repl, True, n_added, specials)
        except Exception:  # an unexpected tokenizer API: use full encoding instead
            return None

    def _words(self, segment: str, first: bool) -> list[str]:
        s = segment.replace(" ", self.repl)
        if first and s and not s.startswith(self.repl):
            s = self.repl + s
        return self.word_re.findall(s)

    def _sum(self, words: list[str]) -> int:
        cache = self.cache
        try:
            return sum(map(cache.__getitem__, words))
        except KeyError:
            if len(cache) > self.MAX_CACHE:
                cache.clear()
            tok = self.model.tokenize
            for w in words:
                if w not in cache:
                    cache[w] = len(tok(w))
            return sum(map(cache.__getitem__, words))

    def _segment(self, seg: str, first: bool) -> int:
        """Tokens of a text segment holding no special token."""
        if self.repl in seg:  # a literal "▁" in the text: the general way
            return self._sum(self._words(seg, first))
        # Fast path: every word is " " + part, counted from a dict keyed by the part (the
        # word minus its first "▁"), with no regex and no copy of the text.
        if "  " in seg:  # runs of spaces: "a   b" -> "a ▁▁b" -> parts "a", "▁▁b"
            # every space after a space becomes "▁": pairs first, then what follows a "▁"
            # (the text has no "▁" of its own here)
            repl = self.repl
            seg = seg.replace("  ", " " + repl).replace(repl + " ", repl + repl)
        parts = seg.split(" ")
        cache = self.cache_sp
        n = 0
        head = parts[0]
        if head:
            n = self._one(self.repl + head) if first else self._one(head)
        try:
            return n + sum(map(cache.__getitem__, islice(parts, 1, None)))
        except KeyError:
            if len(cache) > self.MAX_CACHE:
                cache.clear()
            tok = self.model.tokenize
            for p in islice(parts, 1, None):
                if p not in cache:
                    cache[p] = len(tok(self.repl + p))
            return n + sum(map(cache.__getitem__, islice(parts, 1, None)))

    def _one(self, word: str) -> int:
        n = self.cache.get(word)
        if n is None:
            n = self.cache[word] = len(self.model.tokenize(word))
        return n

    def count_body(self, text: str, start_is_first: bool = True) -> int:
        """Tokens of ``text`` without BOS (specials counted)."""
        memo = self.memo
        if memo is None:
            return self._count_body(text, start_is_first)
        key = (text, start_is_first)
        n = memo.get(key)
        if n is None:
            n = memo[key] = self._count_body(text, start_is_first)
        return n

    def _count_body(self, text: str, start_is_first: bool) -> int:
        n = 0
        pos = 0
        for m in self.special_re.finditer(text):
            if m.start() > pos:
                n += self._segment(text[pos:m.start()],
                                   pos == 0 and start_is_first and self.prepend_first)
            n += 1
            pos = m.end()
        if pos < len(text):
            n += self._segment(text[pos:], pos == 0 and start_is_first and self.prepend_first)
        return n

    def count(self, text: str) -> int:
        return self.n_added + self.count_body(text)

    def _bare(self, body: str) -> bool:
        """Whether the first token of ``body`` (which starts with a space) is a lone "▁"."""
        m = self.first_re.match(body)
        if not m:
            return False
        w = m.group()
        sp = self.special_re.search(w)
        if sp:
            w = w[:sp.start()]
        w = w.replace(" ", self.repl)
        bare = self.bare_first.get(w)
        if bare is None:
            toks = self.model.tokenize(w) if w else []
            bare = bool(toks) and toks[0].value == self.repl
            self.bare_first[w] = bare
        return bare

    def count_and_trained(self, text: str, spans) -> tuple[int, int] | None:
        """(tokens, trained tokens) in one pass over ``text``; None when a span does not
        start right after a single space (then the caller encodes)."""
        repl = self.repl
        total = self.n_added
        trained = 0
        pos = 0
        for s, e in spans:
            if s < 2 or text[s - 1] != " " or text[s - 2] in (" ", repl):
                return None
            # The reply's first word starts at the space before it: cut there.
            if s - 1 > pos:
                total += self.count_body(text[pos:s - 1], pos == 0)
            body = text[s - 1:e]
            n = self.count_body(body, False)
            total += n
            trained += n - self._bare(body)
            pos = e
        if pos < len(text):
            total += self.count_body(text[pos:], pos == 0)
        return total, trained

    def trained(self, text: str, spans) -> int | None:
        got = self.count_and_trained(text, spans)
        return None if got is None else got[1]


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
        self.counter = WordCounter.build(self.tok, template)
        self.template = template
        self.max_length = max_length
        self.long_pair = long_pair

    def encode(self, texts: list[str]):
        return self.tok.encode_batch(texts, add_special_tokens=True)

    def measure(self, rendered: list) -> list[tuple[int, int]]:
        """(tokens, trained tokens) of each rendered text, exactly."""
        out: list[tuple[int, int] | None] = []
        todo = []
        for i, r in enumerate(rendered):
            if self.counter is not None:
                got = self.counter.count_and_trained(r.text, r.assistant_spans)
                if got is not None:
                    out.append(got)
                    continue
            out.append(None)
            todo.append(i)
        if todo:
            encs = self.encode([rendered[i].text for i in todo])
            for i, enc in zip(todo, encs):
                out[i] = (len(enc), _assistant_tokens(enc, rendered[i].assistant_spans))
        return out  # type: ignore[return-value]

    def split_batch(self, convs: list[list[dict[str, str]]]) -> list[SplitResult]:
        if self.counter is None:
            return self._split_batch(convs)
        self.counter.memo = {}
        try:
            return self._split_batch(convs)
        finally:
            self.counter.memo = None

    def _split_batch(self, convs: list[list[dict[str, str]]]) -> list[SplitResult]:
        rendered = [self.template.render(c) for c in convs]
        sizes = self.measure(rendered)
        results: list[SplitResult] = []
        redo: list[tuple[int, list[list[dict[str, str]]]]] = []
        for ci, (conv, r, (total, trained)) in enumerate(zip(convs, rendered, sizes)):
            if total <= self.max_length:
                results.append(SplitResult([Piece(list(conv), total, trained)]))
                continue
            results.append(SplitResult())
            redo.append((ci, self._pack(conv, r)))
        if redo:
            self._measure(redo, results)
        return results

    def _pair_ends(self, r) -> tuple[int, list[int]]:
        """Estimated tokens of the prefix and cumulative tokens at each pair's end."""
        pairs = r.pair_spans
        c = self.counter
        if c is not None:
            text = r.text
            prefix = c.count(text[:pairs[0][0]])
            spans = r.assistant_spans
            # A pair cut at the space before its reply counts the same (no word crosses a
            # space that follows a non-space): the two halves are the segments measure()
            # already counted, found in the memo.
            cut = len(spans) == len(pairs)
            ends, acc = [], 0
            for k, (a, b) in enumerate(pairs):
                if cut:
                    s, e = spans[k]
                    if e == b and a < s - 1 and text[s - 1] == " " \
                            and text[s - 2] not in (" ", c.repl):
                        acc += c.count_body(text[a:s - 1], False) \
                            + c.count_body(text[s - 1:b], False)
                        ends.append(prefix + acc)
                        continue
                acc += c.count_body(text[a:b], start_is_first=False)
                ends.append(prefix + acc)
            return prefix, ends
        enc = self.encode([r.text])[0]
        prefix = _token_at(enc, pairs[0][0] - 1, 0) + 1 if pairs[0][0] > 0 else 1
        return prefix, [_token_at(enc, e - 1, 0) + 1 for _, e in pairs]

    def _pack(self, conv, r) -> list[list[dict[str, str]]]:
        """Greedy packing of pairs by estimated lengths (prefix + tokens of the pairs)."""
        prefix, ends = self._pair_ends(r)
        groups: list[list[dict[str, str]]] = []
        start_pair, start_tok = 0, prefix
        for k in range(len(ends)):
            length = prefix + ends[k] - start_tok
            if length > self.max_length and k > start_pair:
                groups.append(conv[2 * start_pair: 2 * k])
                start_pair, start_tok = k, ends[k - 1]
        groups.append(conv[2 * start_pair:])
        return groups

    def _measure(self, redo, results) -> None:
        """Render and count each piece; split again any multi-pair piece over the limit."""
        work = [(ci, (k,), g) for ci, groups in redo for k, g in enumerate(groups)]
        done: dict[int, list[tuple[tuple[int, ...], Piece]]] = {}
        while work:
            rendered = [self.template.render(g) for _, _, g in work]
            sizes = self.measure(rendered)
            again = []
            for (ci, key, g), (n, trained) in zip(work, sizes):
                if n > self.max_length and len(g) > 2:
                    half = (len(g) // 2 + 1) // 2 * 2  # split at a pair boundary
                    again += [(ci, key + (0,), g[:half]), (ci, key + (1,), g[half:])]
                    continue
                piece = Piece(g, n, trained, over_length=n > self.max_length)
                if piece.over_length and self.long_pair == "drop":
                    results[ci].dropped_pairs += 1
                else:
                    done.setdefault(ci, []).append((key, piece))
            work = again
        for ci, keyed in done.items():
            results[ci].pieces = [p for _, p in sorted(keyed, key=lambda kp: kp[0])]
