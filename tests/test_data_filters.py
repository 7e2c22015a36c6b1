"""Filters (one named reason each), language ID offline, decontamination."""

from __future__ import annotations

import json
import socket

import pytest
from conftest import DUMMY_CONVERSATIONS, EVAL_PROMPTS

from vicuna_cloud.data import synthetic
from vicuna_cloud.data.decontaminate import N, THRESHOLD, Decontaminator, load_prompts
from vicuna_cloud.data.filters import FilterOptions, clean_conversation, has_broken_list

OPTS = FilterOptions()
P = synthetic.PROSE_DIV


def conv(*values, roles=None, **extra):
    roles = roles or ["human" if i % 2 == 0 else "gpt" for i in range(len(values))]
    return {"id": "c", "conversations": [{"from": r, "value": v} for r, v in zip(roles, values)],
            **extra}


Q = "How do I sort a list of numbers in Python?"
A = P + "<p>Use <code>sorted(xs)</code> to get a new sorted list.</p></div>"


@pytest.mark.parametrize("item,reason", [
    ("not a dict", "bad_schema"),
    ({"id": "x"}, "bad_schema"),
    ({"id": "x", "conversations": [{"from": "human"}]}, "bad_schema"),
    ({"id": "x", "conversations": [{"from": "human", "value": 3}]}, "bad_schema"),
    (conv(Q, A, roles=["human", "robot"]), "unknown_role"),
    (conv(Q, A, roles=["human", "bard"]), "other_assistant"),
    (conv(Q, A, Q, A, roles=["human", "gpt", "human", "Bing"]), "other_assistant"),
    (conv(Q, A, "Be terse.", Q, A, roles=["human", "gpt", "system", "human", "gpt"]),
     "system_turn"),
    (conv(Q, "Be terse.", A, roles=["human", "system", "gpt"]), "system_turn"),
    (conv(Q, A, plugins=[{"name": "web"}]), "plugins"),
    (conv(Q, A, Q, A, roles=["human", "gpt", "gpt", "human"]), "roles_not_alternating"),
    (conv(Q), "too_short"),
    (conv("hi", P + "<p>yo</p></div>"), "too_short"),
    (conv(Q, "Too many requests in 1 hour. Try again later."), "assistant_error"),
    (conv(Q, "!Too many requests in 1 hour. Try again later."), "assistant_error"),
    (conv("What is ChatGPT?", A), "blocked_words"),
    (conv(Q, P + "</div>"), "empty_message"),
    (conv(Q, P + "<ol><li>a</li></ol><p>x</p><ol><li>b</li></ol></div>"), "broken_list"),
    (conv(Q, "bad \ud800 surrogate"), "invalid_unicode"),
])
def test_each_filter_has_its_named_reason(item, reason):
    assert clean_conversation(item, "fallback", OPTS).reason == reason


def test_leading_gpt_and_trailing_human_are_trimmed_not_dropped():
    c = clean_conversation(conv(A, Q, A, Q, roles=["gpt", "human", "gpt", "human"]), "f", OPTS)
    assert c.reason is None
    assert [t["from"] for t in c.turns] == ["human", "gpt"]
    assert c.turns[1]["value"] == "Use `sorted(xs)` to get a new sorted list."
    assert c.removed == {"leading_gpt": 1, "trailing_human": 1}


def test_a_leading_system_turn_is_trimmed_and_counted():
    c = clean_conversation(conv("You are terse.", Q, A, roles=["system", "human", "gpt"]),
                           "f", OPTS)
    assert c.reason is None and [t["from"] for t in c.turns] == ["human", "gpt"]
    assert c.removed == {"leading_system": 1}


def test_other_assistants_are_kept_only_when_mapped():
    item = conv(Q, A, Q, A, roles=["human", "bard", "user", "Bing"])
    assert clean_conversation(item, "f", OPTS).detail == "role 'bard'"
    c = clean_conversation(item, "f", FilterOptions(assistant_roles=("bard", "bing")))
    assert c.reason is None and [t["from"] for t in c.turns] == ["human", "gpt"] * 2
    # The default spellings of the two roles need no option (FastChat's human/gpt, the
    # OpenAI-style user/assistant, ShareGPT's chatgpt).
    c = clean_conversation(conv(Q, A, Q, A, roles=["user", "chatgpt", "Human", "assistant"]),
                           "f", OPTS)
    assert c.reason is None and c.removed == {}


def test_blocked_identity_data_is_flagged():
    """The drop is the same; the flag lets prepare warn that identity belongs in --merge."""
    who = clean_conversation(conv("Are you ChatGPT?", "No, I am Vicuna, trained by LMSYS."),
                             "f", OPTS)
    assert who.reason == "blocked_words" and who.identity
    name = clean_conversation(conv("Hi. What is your name?", "My name is ChatGPT."), "f", OPTS)
    assert name.identity
    # Blocked for a word, but not about who the model is.
    other = clean_conversation(conv("How do I call the OpenAI API from Python?", A), "f", OPTS)
    assert other.reason == "blocked_words" and not other.identity
    kept = clean_conversation(conv("Who are you?", "I am Vicuna, a chat assistant."), "f", OPTS)
    assert kept.reason is None and not kept.identity


def test_empty_later_message_truncates_there_at_a_pair_boundary():
    c = clean_conversation(conv(Q, A, Q, A, Q, P + "</div>", Q, A), "f", OPTS)
    assert c.reason is None and c.truncated
    assert len(c.turns) == 4 and c.removed == {"after_empty_message": 4}


def test_control_characters_are_removed_and_roles_normalized():
    c = clean_conversation(conv("How\x00 do I\x07 sort this list please?", A,
                                roles=["User", "ASSISTANT"]), "f", OPTS)
    assert c.turns[0] == {"from": "human", "value": "How do I sort this list please?"}
    assert c.turns[1]["from"] == "gpt"


def test_blocked_words_are_configurable():
    item = conv("What is ChatGPT exactly?", A)
    assert clean_conversation(item, "f", FilterOptions(blocked_words=())).reason is None
    assert clean_conversation(conv(Q, A), "f", FilterOptions(blocked_words=("sorted",))).reason \
        == "blocked_words"


def test_broken_list_detection():
    assert has_broken_list("Steps:\n1. a\ntext\n1. b")
    assert not has_broken_list("1. a\n2. b\n\nOther list:\n- x\n3. c")
    assert not has_broken_list("1. a\n   1. nested first\n2. b")
    assert not has_broken_list("```\n1. a\n1. b\n```")


def test_dummy_conversations_survive_except_blocked_words():
    data = json.loads(DUMMY_CONVERSATIONS.read_text())
    reasons = [clean_conversation(c, "f", OPTS).reason for c in data]
    mentions = [("openai" in json.dumps(c).lower() or "chatgpt" in json.dumps(c).lower())
                for c in data]
    assert [r for r, m in zip(reasons, mentions) if not m] == [None] * mentions.count(False)
    assert all(r == "blocked_words" for r, m in zip(reasons, mentions) if m)
    assert mentions.count(False) >= 400
    # FastChat's dummy data is identity data: every blocked one is recognised as such.
    flagged = [clean_conversation(c, "f", OPTS).identity for c, m in zip(data, mentions) if m]
    assert all(flagged) and len(flagged) == 60


def test_language_id_offline(monkeypatch, tmp_path):
    from vicuna_cloud.data import language

    def no_network(*a, **k):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("FTLANG_CACHE", str(tmp_path))  # no previously downloaded model
    language._detector.cache_clear()
    for lang in ("en", "fr", "es", "de", "zh", "ko", "ja", "ru"):
        text = " ".join(synthetic.SENTENCES[lang][:3])
        assert language.detect_language(text) == lang
    assert language.detect_language("```python\nx = 1\n```") == "unknown"
    # Code does not sway the verdict on prose.
    assert language.detect_language(
        "서울의 겨울은 춥지만 하늘은 자주 맑습니다.\n```python\nfor item in items: print(item)\n```") == "ko"
    language._detector.cache_clear()


def test_decontamination_exact_near_and_unrelated():
    prompts = load_prompts(sorted(str(p) for p in EVAL_PROMPTS.glob("*.jsonl")))
    assert len(prompts) > 100
    d = Decontaminator(prompts)
    target = next(p for p in prompts if len(p.split()) > 15)
    words = target.split()
    assert d.match(target) is not None
    assert d.match(target.upper().replace(" ", "  ")) is not None
    assert d.match("Hi! Could you help me? " + target + " Thanks a lot.") is not None
    # Half the words kept in order (one long run) still matches: above THRESHOLD of 6-grams.
    keep = words[: int(len(words) * 0.8)]
    assert d.match(" ".join(keep)) is not None
    # A question on a similar topic shares few n-grams: not contaminated.
    assert d.match("How do I improve my skills at cooking pasta for my family?") is None
    data = json.loads(DUMMY_CONVERSATIONS.read_text())
    assert sum(d.contaminated(c["conversations"]) is not None for c in data) == 0
    assert N == 6 and THRESHOLD == 0.5
