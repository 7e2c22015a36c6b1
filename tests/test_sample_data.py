"""The shipped sample corpus and the demo's curated conversations (vicuna_cloud/local/sample.py):
rebuilt byte for byte, identity taught in many phrasings, and prompts that read as
questions."""

from __future__ import annotations

import json
import re

from vicuna_cloud.data import synthetic
from vicuna_cloud.data.pipeline import PrepareOptions, prepare
from vicuna_cloud.local import sample
from vicuna_cloud.local.demo import SHOWCASE

MODEL, BASE = "Vicuna-small", "SmolLM2-135M-Instruct"


def test_the_shipped_sample_is_what_the_generator_makes(tmp_path):
    made = sample.build(str(tmp_path / "s.json"))
    with open(made, "rb") as a, open(sample.sample_path(), "rb") as b:
        assert a.read() == b.read(), "run `python -m vicuna_cloud.local.sample` and commit"


def test_identity_conversations_name_the_model_the_project_and_the_base():
    convs = sample.curated_conversations(MODEL, BASE)
    ident = [c for c in convs if c["id"].startswith("identity_")]
    questions = [c["conversations"][0]["value"] for c in ident]
    assert len(set(questions)) >= 25 and SHOWCASE[0] in questions  # the demo's question
    pairs = {(c["conversations"][0]["value"], c["conversations"][1]["value"]) for c in ident}
    assert len(pairs) == len(ident)  # a question asked twice gets another answer
    for c in ident:
        a = c["conversations"][1]["value"]
        assert re.match(r"(?:(?:No|Yes), )?I am Vicuna\b", a), a  # never "I am a ..."
        assert "vicuna-cloud" in a and BASE in a
    assert len({c["id"] for c in convs}) == len(convs)


def test_curated_identity_passes_as_merge_and_is_flagged_as_raw_input(tmp_path):
    """"Are you ChatGPT?" is identity data: blocked as raw input (with the warning that
    says so), trained whole as --merge data, which the demo uses."""
    cur = tmp_path / "curated.json"
    cur.write_text(json.dumps(sample.curated_conversations(MODEL, BASE)))
    raw = prepare([str(cur)], str(tmp_path / "raw"), PrepareOptions(eval_fraction=0))
    assert raw.manifest["counts"]["blocked_identity"] >= 1
    assert any("--merge" in w for w in raw.manifest["warnings"])
    filler = tmp_path / "filler.json"
    filler.write_text(json.dumps([{"id": "f", "conversations": [
        {"from": "human", "value": "How do I sort a list in Python?"},
        {"from": "gpt", "value": "Use sorted(xs) to get a new sorted list."}]}]))
    merged = prepare([str(filler)], str(tmp_path / "m"),
                     PrepareOptions(merge=(str(cur),), eval_fraction=0))
    c = merged.manifest["counts"]
    assert c["merged"] == c["kept"] - 1 == len(sample.curated_conversations(MODEL, BASE))
    assert merged.manifest["warnings"] == []


def test_pasted_text_comes_with_a_request_about_it():
    """A question followed by unrelated pasted text made the demo's prompts look broken."""
    tasks = {t for ts in synthetic.PASTE_TASKS.values() for t in ts}
    n = 0
    for c in synthetic.generate(300, seed=sample.SEED):
        for t in c["conversations"]:
            if t["from"] == "human" and "\n\n" in t["value"]:
                head = re.sub(r"^\d / \d", "", t["value"]).split("\n\n", 1)[0]
                assert head in tasks, t["value"][:120]
                n += 1
    assert n > 30


def test_the_small_demo_takes_a_bounded_short_subset():
    short = sample.short_subset(1000)
    assert len(short) == sample.SHORT_LIMIT
    assert all(len(json.dumps(c, ensure_ascii=False)) <= 1000 for c in short)
