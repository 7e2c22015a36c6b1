"""Assistant-only loss masks with a real LLaMA-format SentencePiece tokenizer.

The unmasked tokens of each conversation, decoded run by run, must be exactly the
assistant replies followed by the template's stop string: nothing of the system prompt,
the user turns or the role tags is trained, and nothing of a reply is lost.
"""

from __future__ import annotations

import json

import pytest

from vicuna_cloud.templates import TEMPLATES
from vicuna_cloud.tokenizer import load_tokenizer

from train.masking import IGNORE, TokenStore, tokenize_batch, tokenize_conversation
from conftest import DUMMY_CONVERSATIONS

TRICKY = [
    [{"from": "human", "value": "Who are you?"},
     {"from": "gpt", "value": "I am Vicuna.\n1. yes"},
     {"from": "human", "value": "Hi"},
     {"from": "gpt", "value": " 12 leading space"},
     {"from": "human", "value": "code?"},
     {"from": "gpt", "value": "\n```python\nprint('héllo ✓ 你好')\n```"}],
    [{"from": "human", "value": "###"},
     {"from": "gpt", "value": "USER: not a turn ### ASSISTANT: either"},
     {"from": "human", "value": "emoji"},
     {"from": "gpt", "value": "🙂🙂 ok"}],
]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("builtin:llama-sp")


def multi_turn(n: int) -> list[list[dict]]:
    convs = [r["conversations"] for r in json.loads(DUMMY_CONVERSATIONS.read_text())]
    return [c for c in convs if len(c) >= 4][:n]


def trained_runs(ex) -> list[list[int]]:
    """Contiguous runs of trained token ids (targets are shifted: target i is token i+1)."""
    runs, cur = [], []
    for t in ex.targets:
        if t == IGNORE:
            if cur:
                runs.append(cur)
            cur = []
        else:
            cur.append(t)
    if cur:
        runs.append(cur)
    return runs


@pytest.fixture(scope="module")
def legacy_tok():
    """The same model with legacy=True: a "▁" is inserted after special tokens, so
    "</s>USER" becomes "</s>", "▁US", "ER" -- the Llama-2 tokenizer behaviour that broke
    FastChat's per-turn "-2" arithmetic."""
    from transformers import AutoTokenizer
    from vicuna_cloud.tokenizer import resolve_tokenizer_path

    tok = AutoTokenizer.from_pretrained(resolve_tokenizer_path("builtin:llama-sp"),
                                        legacy=True, from_slow=True)
    conv = TRICKY[0]
    text = TEMPLATES["vicuna_v1.1"].render(conv).text
    assert "▁US" in tok.convert_ids_to_tokens(tok(text)["input_ids"])   # really different
    return tok


@pytest.mark.parametrize("legacy", [False, True], ids=["llama-sp", "legacy-llama2-style"])
@pytest.mark.parametrize("template", ["vicuna_v1.1", "vicuna_v0"])
def test_unmasked_tokens_are_exactly_the_replies(request, template, legacy):
    tok = request.getfixturevalue("legacy_tok" if legacy else "tok")
    tpl = TEMPLATES[template]
    convs = multi_turn(40) + TRICKY
    assert len(convs) > 20
    for conv in convs:
        ex = tokenize_conversation(tok, tpl, conv, max_length=100_000)
        replies = [t["value"] + tpl.sep2 for t in conv[1::2]]
        decoded = [tok.decode(r, skip_special_tokens=False) for r in trained_runs(ex)]
        assert decoded == replies, conv
        assert not ex.misaligned and not ex.truncated
        # BOS, the system prompt and the first user turn are never trained.
        assert ex.input_ids[0] == tok.bos_token_id
        first_reply_at = tpl.render(conv).assistant_spans[0][0]
        n_prompt = len(tok(tpl.render(conv).text[:first_reply_at])["input_ids"]) - 1
        assert all(t == IGNORE for t in ex.targets[: n_prompt - 1])


def test_v11_trains_the_eos_token(tok):
    ex = tokenize_conversation(tok, TEMPLATES["vicuna_v1.1"], TRICKY[0], max_length=10_000)
    trained = [t for t in ex.targets if t != IGNORE]
    assert trained.count(tok.eos_token_id) == 3   # one </s> per reply, as a single token
    assert len(ex.input_ids) == len(ex.targets)


def test_truncation_is_counted_and_keeps_a_prefix(tok):
    conv = multi_turn(1)[0]
    full = tokenize_conversation(tok, TEMPLATES["vicuna_v1.1"], conv, max_length=100_000)
    cut = tokenize_conversation(tok, TEMPLATES["vicuna_v1.1"], conv, max_length=40)
    assert cut.truncated and not full.truncated
    assert len(cut) == 40 and cut.input_ids == full.input_ids[:40]
    assert cut.targets[:-1] == full.targets[:39] and cut.targets[-1] == IGNORE


def test_misaligned_token_is_counted():
    from train.masking import token_labels
    text = "ab cd"
    # A token "b c" straddles the span start at 3 ("cd") by more than the separator space.
    labels, bad = token_labels(text, [(3, 5)], [(0, 1), (1, 4), (4, 5)], [7, 8, 9])
    assert bad and labels == [IGNORE, 8, 9]
    labels, bad = token_labels(text, [(3, 5)], [(0, 2), (2, 4), (4, 5)], [7, 8, 9])
    assert not bad and labels == [IGNORE, 8, 9]   # "▁c" starting at the space is expected


def test_batched_encoding_and_token_store_match_one_by_one(tok, tmp_path):
    tpl = TEMPLATES["vicuna_v1.1"]
    convs = multi_turn(30) + TRICKY
    one = [tokenize_conversation(tok, tpl, c, 90) for c in convs]
    many = tokenize_batch(tok, tpl, convs, 90)
    assert [(e.input_ids, e.targets, e.truncated) for e in one] == \
        [(e.input_ids, e.targets, e.truncated) for e in many]
    assert any(e.truncated for e in one)
    TokenStore.from_examples(one).save(str(tmp_path / "t.npz"))
    store = TokenStore.load(str(tmp_path / "t.npz"))
    assert len(store) == len(one) and list(store.lengths) == [len(e) for e in one]
    for i, e in enumerate(one):
        assert store[i].input_ids.tolist() == e.input_ids
        assert store[i].targets.tolist() == e.targets and store[i].n_trained == e.n_trained


def test_dataset_statistics_count_every_dropped_and_cut_conversation(tok):
    from train.inputs import ConfigError, tokenize_all

    short = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello there"}]
    long_prompt = [{"from": "human", "value": "word " * 200}, {"from": "gpt", "value": "ok"}]
    long_reply = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "word " * 200}]
    bad = [{"from": "gpt", "value": "I speak first"}, {"from": "human", "value": "no"}]
    store, stats = tokenize_all([short, long_prompt, long_reply, bad], tok, "vicuna_v1.1", 80)
    assert (stats.conversations, stats.kept, stats.dropped_invalid) == (4, 2, 1)
    assert stats.dropped_untrained == 1          # the reply of long_prompt is cut away
    assert stats.truncated == 2 and len(store) == 2
    assert list(store.lengths) == [len(tok(TEMPLATES["vicuna_v1.1"].render(short).text)
                                       ["input_ids"]), 80]
    assert stats.trained_tokens == sum(store[i].n_trained for i in range(2))
    with pytest.raises(ConfigError, match="no conversation has a trained token"):
        tokenize_all([bad, long_prompt], tok, "vicuna_v1.1", 80)
