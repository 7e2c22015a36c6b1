"""Property tests: adversarial conversations thrown at the cleaner, splitter and pipeline.

Invariants: every input lands in exactly one bucket (kept or one drop reason, counts add
up); output turns alternate human/gpt starting with human; no piece exceeds max_length
unless it is a single pair counted as kept for truncation; nothing crashes.
"""

from __future__ import annotations

import json
import os
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import pytest

from vicuna_cloud.data import synthetic
from vicuna_cloud.data.filters import DROP_REASONS, FilterOptions, clean_conversation
from vicuna_cloud.data.pipeline import PrepareOptions, prepare
from vicuna_cloud.data.reader import DataError

ROLES = ["human", "gpt", "user", "assistant", "system", "GPT", "robot", "", "bing"]
html_bits = st.sampled_from([
    "<p>", "</p>", "<div>", "</div>", "<ol>", "<li>", "</li>", "</ol>", "<pre><code class=\"language-py\">",
    "</code></pre>", "<table><tr><td>", "</td></tr></table>", "<span>", "<b>", "&amp;", "&lt;",
    "<!-- c -->", "<script>x</script>", "Copy code", "1 / 2", "\x00", "\x1b[31m", "\u200b",
    "\ud800", "日本語", "🙂", "\n", "  ", "1. ", "openai", synthetic.PROSE_DIV,
])
values = st.one_of(
    st.text(max_size=80),
    st.lists(st.one_of(html_bits, st.text(max_size=12)), max_size=30).map("".join),
    st.just(""),
    st.builds(lambda n: "word " * n, st.integers(100, 300)),
)
turn = st.one_of(
    st.fixed_dictionaries({"from": st.sampled_from(ROLES), "value": values}),
    st.fixed_dictionaries({"from": st.sampled_from(ROLES), "value": st.integers()}),
    st.dictionaries(st.sampled_from(["from", "value", "x"]), st.text(max_size=5), max_size=3),
)
alternating = st.lists(st.tuples(values, values), min_size=1, max_size=6).map(
    lambda ps: [{"from": r, "value": v} for q, a in ps for r, v in (("human", q), ("gpt", a))])
conversation = st.one_of(
    st.fixed_dictionaries({"id": st.text(max_size=6), "conversations": st.lists(turn, max_size=8)}),
    st.fixed_dictionaries({"id": st.integers(0, 5), "conversations": alternating}),
    st.fixed_dictionaries({"id": st.just("p"), "conversations": alternating,
                           "plugins": st.just(["web"])}),
    st.just([]), st.just("string"), st.just({"conversations": None}),
)


@settings(max_examples=120, deadline=None)
@given(conversation)
def test_cleaner_never_crashes_and_output_alternates(item):
    c = clean_conversation(item, "fallback", FilterOptions())
    if c.reason is not None:
        assert c.reason in DROP_REASONS and c.turns == []
        return
    roles = [t["from"] for t in c.turns]
    assert len(roles) >= 2 and roles == ["human", "gpt"] * (len(roles) // 2)
    for t in c.turns:
        assert t["value"] and t["value"] == t["value"].strip()
        t["value"].encode("utf-8")


@pytest.mark.slow  # 20 pipeline runs: seconds
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(conversation, min_size=1, max_size=12), st.sampled_from(["truncate", "drop"]))
def test_pipeline_accounts_for_every_conversation(items, long_pair):
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "in.jsonl")
        with open(src, "w", encoding="utf-8") as f:
            for it in items:
                f.write(json.dumps(it) + "\n")  # lone surrogates become \ud800 escapes
        out = os.path.join(d, "out")
        try:
            res = prepare([src], out, PrepareOptions(max_length=96, long_pair=long_pair,
                                                     chunk_size=4))
        except DataError as e:
            assert "no conversation survived" in str(e)
            assert not os.path.exists(os.path.join(out, "train.jsonl"))
            return
        c = res.manifest["counts"]
        assert c["input"] == len(items) == c["kept"] + sum(c["dropped"].values())
        with open(os.path.join(out, "train.jsonl"), encoding="utf-8") as f:
            rows = [json.loads(x) for x in f]
        assert len(rows) == c["split_pieces"] >= c["kept"]
        from vicuna_cloud.templates import get_template
        from vicuna_cloud.tokenizer import load_tokenizer

        tok, tpl = load_tokenizer("builtin:llama-sp"), get_template("vicuna_v1.1")
        over = 0
        for r in rows:
            roles = [t["from"] for t in r["conversations"]]
            assert roles == ["human", "gpt"] * (len(roles) // 2) and roles
            n = len(tok(tpl.render(r["conversations"]).text).input_ids)
            if n > 96:
                over += 1
                assert len(roles) == 2
        assert over == c["kept_for_truncation"]
        if long_pair == "drop":
            assert over == 0
