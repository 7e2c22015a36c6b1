"""Splitting at pair boundaries with the real LLaMA tokenizer on the rendered template."""

from __future__ import annotations

import json

import pytest
from conftest import DUMMY_CONVERSATIONS

from vicuna_cloud.data import synthetic
from vicuna_cloud.data.filters import FilterOptions, clean_conversation
from vicuna_cloud.data.split import Splitter, fast_backend
from vicuna_cloud.templates import get_template
from vicuna_cloud.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("builtin:llama-sp")


TPL = get_template("vicuna_v1.1")


def pairs(n, long_at=(), words=12):
    out = []
    for i in range(n):
        out.append({"from": "human", "value": f"Question number {i}: " + "why " * 5})
        k = 400 if i in long_at else words
        out.append({"from": "gpt", "value": f"Answer {i}. " + "because " * k})
    return out


def n_tokens(tok, turns):
    return len(tok(TPL.render(turns).text).input_ids)


def trained_tokens(tok, turns):
    """The trainer's rule: a token is trained when its offsets overlap a trained span."""
    r = TPL.render(turns)
    enc = tok(r.text, return_offsets_mapping=True)
    return sum(1 for s, e in enc["offset_mapping"] if e > s and any(
        s < b and e > a for a, b in r.assistant_spans))


def test_short_conversation_is_one_piece_with_exact_counts(tok):
    conv = pairs(3)
    (res,) = Splitter(tok, TPL, 2048).split_batch([conv])
    (p,) = res.pieces
    assert p.turns == conv
    assert p.tokens == n_tokens(tok, conv)
    assert p.assistant_tokens == trained_tokens(tok, conv)


def test_long_conversation_split_at_pairs_fits_and_keeps_the_last_pair(tok):
    conv = pairs(12, words=30)
    limit = 200
    (res,) = Splitter(tok, TPL, limit).split_batch([conv])
    assert len(res.pieces) > 2
    joined = [t for p in res.pieces for t in p.turns]
    assert joined == conv  # nothing lost, order kept, last pair included
    for p in res.pieces:
        assert len(p.turns) % 2 == 0 and p.turns[0]["from"] == "human"
        assert p.tokens == n_tokens(tok, p.turns) <= limit
        assert p.assistant_tokens == trained_tokens(tok, p.turns)
    # Greedy packing: no piece could take the next piece's first pair.
    for a, b in zip(res.pieces, res.pieces[1:]):
        assert n_tokens(tok, a.turns + b.turns[:2]) > limit


@pytest.mark.parametrize("policy", ["truncate", "drop"])
def test_single_over_long_pair_is_kept_for_truncation_or_dropped(tok, policy):
    conv = pairs(5, long_at={2}, words=10)
    (res,) = Splitter(tok, TPL, 256, long_pair=policy).split_batch([conv])
    over = [p for p in res.pieces if p.over_length]
    if policy == "truncate":
        assert len(over) == 1 and over[0].turns == conv[4:6] and res.dropped_pairs == 0
        assert [t for p in res.pieces for t in p.turns] == conv
    else:
        assert not over and res.dropped_pairs == 1
        assert [t for p in res.pieces for t in p.turns] == conv[:4] + conv[6:]
    assert all(p.tokens <= 256 for p in res.pieces if not p.over_length)


def test_only_pair_over_long_and_dropped_leaves_no_piece(tok):
    (res,) = Splitter(tok, TPL, 64, long_pair="drop").split_batch([pairs(1, long_at={0})])
    assert res.pieces == [] and res.dropped_pairs == 1


def test_v0_template_is_measured_too(tok):
    v0 = get_template("vicuna_v0")
    conv = pairs(8, words=30)
    (res,) = Splitter(tok, v0, 220).split_batch([conv])
    for p in res.pieces:
        assert p.tokens == len(tok(v0.render(p.turns).text).input_ids) <= 220


def test_fast_backend_gives_identical_ids_and_offsets_on_real_text(tok):
    fast = fast_backend(tok.backend_tokenizer)
    assert fast is not tok.backend_tokenizer  # the optimization is active for LLaMA SP
    texts = [TPL.render(c["conversations"]).text
             for c in json.loads(DUMMY_CONVERSATIONS.read_text())[:200]]
    opts = FilterOptions(blocked_words=())
    for c in synthetic.generate(120, seed=5):
        cl = clean_conversation(c, "x", opts)
        if cl.reason is None:
            texts.append(TPL.render(cl.turns).text)
    texts += ["  leading spaces", "tabs\tand\n\n  newlines  ", "▁ literal meta ▁▁x", "",
              "emoji 😀 and 中文 mixed   with    runs of spaces", "</s><s> specials"]
    slow = tok.backend_tokenizer.encode_batch(texts)
    quick = fast.encode_batch(texts)
    for a, b in zip(slow, quick):
        assert a.ids == b.ids and a.offsets == b.offsets


def test_word_counter_matches_the_tokenizer_exactly(tok):
    """WordCounter's totals and trained counts equal full encoding + the trainer's rule."""
    import random

    from vicuna_cloud.data.split import WordCounter

    backend = fast_backend(tok.backend_tokenizer)
    wc = WordCounter.build(backend, TPL)
    assert wc is not None
    assert WordCounter.build(backend, get_template("vicuna_v0")) is None  # "###" not special
    convs = [c["conversations"] for c in json.loads(DUMMY_CONVERSATIONS.read_text())[:150]]
    for c in synthetic.generate(80, seed=9):
        cl = clean_conversation(c, "x", FilterOptions(blocked_words=()))
        if cl.reason is None:
            convs.append(cl.turns)
    rng = random.Random(0)
    alphabet = ["  ", "\n", " ", "a", "▁", "é", "中", "😀", "\t", "ab ", "   x", "\u200b", "`",
                "<s>", "</s>", "<unk>", "```py\n", "\x00", " ▁ ", "</s", "s>"]
    for _ in range(150):
        def v():
            return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30))).strip() or "x"
        convs.append([{"from": "human", "value": v()}, {"from": "gpt", "value": v()}] * rng.randint(1, 3))
    for turns in convs:
        r = TPL.render(turns)
        assert wc.count(r.text) == len(tok(r.text).input_ids), r.text[:80]
        assert wc.trained(r.text, r.assistant_spans) == trained_tokens(tok, turns), r.text[:80]
        assert wc.count_and_trained(r.text, r.assistant_spans) == (
            wc.count(r.text), wc.trained(r.text, r.assistant_spans))
