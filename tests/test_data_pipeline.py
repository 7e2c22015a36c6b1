"""prepare() end to end on real inputs: the dummy conversations and generated raw HTML."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from conftest import DUMMY_CONVERSATIONS, EVAL_PROMPTS

from vicuna_cloud.data import synthetic
from vicuna_cloud.data.filters import DROP_REASONS
from vicuna_cloud.data.manifest import read_manifest
from vicuna_cloud.data.pipeline import PrepareOptions, prepare
from vicuna_cloud.data.reader import DataError


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return synthetic.write_json(str(tmp_path_factory.mktemp("raw") / "raw.json"), 400, seed=3)


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("out1")
    opts = PrepareOptions(max_length=1024, skip_lang=("ko",), workers=1,
                          decontaminate=tuple(str(p) for p in sorted(EVAL_PROMPTS.glob("*.jsonl"))))
    return prepare([raw], str(out), opts), opts


def lines(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(x) for x in f]


def test_manifest_schema_counts_and_output_hash(prepared, raw):
    res, _ = prepared
    m = read_manifest(res.out_dir)
    assert m == res.manifest
    body = open(os.path.join(res.out_dir, "train.jsonl"), "rb").read()
    assert m["output"] == {"file": "train.jsonl", "sha256": hashlib.sha256(body).hexdigest(),
                           "bytes": len(body)}
    assert m["inputs"][0]["sha256"] == hashlib.sha256(open(raw, "rb").read()).hexdigest()
    c = m["counts"]
    assert c["input"] == 400 == c["kept"] + sum(c["dropped"].values())
    assert set(c["dropped"]) <= set(DROP_REASONS)
    # The generator's noise is caught, each under its own reason.
    for reason in ("plugins", "assistant_error", "duplicate_id", "duplicate_content", "language"):
        assert c["dropped"].get(reason, 0) > 0, reason
    assert c["split_pieces"] == len(body.splitlines()) >= c["kept"]
    assert c["split_conversations"] > 0
    t = m["tokens"]
    assert t["conversations"] == c["split_pieces"]
    h = t["histogram"]
    assert sum(h["counts"]) == c["split_pieces"] and len(h["edges"]) == len(h["counts"]) + 1
    assert m["conversations"] == c["kept"] and m["samples"] == c["split_pieces"]
    assert t["mean"] <= t["weighted_length"] <= t["max"]
    # The cost estimator reads this manifest as is.
    from vicuna_cloud.costs.estimate import workload_from_manifest
    from vicuna_cloud.recipes import get_preset

    w = workload_from_manifest(m, get_preset("7b"), "test")
    assert w.tokens_per_epoch == t["total"] and w.samples == c["split_pieces"]
    assert 0 < w.weighted_sample_length <= t["max"]
    assert 0 < t["assistant"] < t["total"] and t["p50"] <= t["p90"] <= t["max"]
    assert m["tokenizer"] == "builtin:llama-sp" and m["template"] == "vicuna_v1.1"
    assert m["max_length"] == 1024 and m["options"]["skip_lang"] == ["ko"]


def test_output_is_well_formed_and_fits(prepared):
    from vicuna_cloud.templates import get_template
    from vicuna_cloud.tokenizer import load_tokenizer

    res, _ = prepared
    tok, tpl = load_tokenizer("builtin:llama-sp"), get_template("vicuna_v1.1")
    rows = lines(os.path.join(res.out_dir, "train.jsonl"))
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids)
    over = 0
    total = 0
    for r in rows:
        roles = [t["from"] for t in r["conversations"]]
        assert roles and roles == ["human", "gpt"] * (len(roles) // 2)
        assert all(t["value"].strip() for t in r["conversations"])
        assert not any("Copy code" in t["value"] or "<div class=\"markdown" in t["value"]
                       for t in r["conversations"] if t["from"] == "gpt")
        n = len(tok(tpl.render(r["conversations"]).text).input_ids)
        total += n
        if n > 1024:
            over += 1
            assert len(roles) == 2  # only a single pair may exceed the limit
    assert over == res.manifest["counts"]["kept_for_truncation"]
    assert total == res.manifest["tokens"]["total"]


def test_workers_give_the_same_bytes(prepared, raw, tmp_path):
    res, opts = prepared
    from dataclasses import replace

    res2 = prepare([raw], str(tmp_path / "w2"), replace(opts, workers=2, chunk_size=16))
    assert res2.manifest["output"] == res.manifest["output"]
    assert res2.manifest["counts"] == res.manifest["counts"]


def test_dummy_conversations_merge_intact_and_clean_mostly(tmp_path, raw):
    data = json.loads(DUMMY_CONVERSATIONS.read_text())
    res = prepare([str(DUMMY_CONVERSATIONS)], str(tmp_path / "a"), PrepareOptions())
    c = res.manifest["counts"]
    assert c["dropped"] == {"blocked_words": 60} and c["kept"] == 440
    # As curated --merge data (what FastChat did with identity data) all 500 survive.
    res = prepare([raw], str(tmp_path / "b"),
                  PrepareOptions(merge=(str(DUMMY_CONVERSATIONS),), max_length=1024))
    c = res.manifest["counts"]
    assert c["merged"] == 500
    rows = lines(os.path.join(tmp_path / "b", "train.jsonl"))
    got = {r["id"]: r["conversations"] for r in rows if r["id"].startswith("identity_")}
    assert len(got) == 500
    assert all(got[d["id"]] == d["conversations"] for d in data)
    assert rows[-1]["id"] == data[-1]["id"]  # appended after the cleaned data, in order


def test_blocked_identity_data_is_counted_and_warned_about(tmp_path):
    res = prepare([str(DUMMY_CONVERSATIONS)], str(tmp_path / "a"), PrepareOptions())
    m = res.manifest
    assert m["counts"]["dropped"]["blocked_words"] == 60 == m["counts"]["blocked_identity"]
    assert len(m["warnings"]) == 1 and "60 conversations" in m["warnings"][0]
    assert "--merge" in m["warnings"][0]
    # Merged, the same conversations are trained and nothing is said.
    res = prepare([str(DUMMY_CONVERSATIONS)], str(tmp_path / "b"),
                  PrepareOptions(blocked_words=()))
    assert res.manifest["counts"]["blocked_identity"] == 0 and res.manifest["warnings"] == []


def test_roles_follow_fastchat_and_every_removed_turn_is_counted(tmp_path):
    """A system turn mid-conversation and another assistant drop the conversation under
    their own reasons; trimmed turns of kept ones are counted; --assistant-role maps."""
    q, a = "How do I sort a list of numbers in Python?", "Use sorted(xs) for a new list."

    def c(cid, *roles):
        return {"id": cid, "conversations": [
            {"from": r, "value": (q if r in ("human", "user") else a) + f" ({cid} {i})"}
            for i, r in enumerate(roles)]}

    items = [c("ok", "human", "gpt"), c("sys_mid", "human", "gpt", "system", "human", "gpt"),
             c("sys_lead", "system", "human", "gpt"), c("bard", "human", "bard"),
             c("lead_trail", "gpt", "human", "gpt", "human"), c("bing2", "user", "Bing")]
    src = tmp_path / "in.json"
    src.write_text(json.dumps(items))
    res = prepare([str(src)], str(tmp_path / "a"), PrepareOptions())
    cnt = res.manifest["counts"]
    assert cnt["dropped"] == {"system_turn": 1, "other_assistant": 2}
    assert cnt["kept"] == 3
    assert cnt["removed_turns"] == {"leading_system": 1, "leading_gpt": 1, "trailing_human": 1}
    res = prepare([str(src)], str(tmp_path / "b"), PrepareOptions(assistant_roles=("bard", "BING")))
    cnt = res.manifest["counts"]
    assert cnt["dropped"] == {"system_turn": 1} and cnt["kept"] == 5
    assert res.manifest["options"]["assistant_roles"] == ["bard", "BING"]
    rows = lines(os.path.join(tmp_path / "b", "train.jsonl"))
    assert {t["from"] for r in rows for t in r["conversations"]} == {"human", "gpt"}


def test_workers_default_to_the_usable_cores(monkeypatch):
    from vicuna_cloud.data import pipeline

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5})  # as under taskset
    assert pipeline.usable_cores() == 3
    big = pipeline.POOL_MIN_BYTES
    assert pipeline.worker_count(PrepareOptions(), big) == 3
    assert pipeline.worker_count(PrepareOptions(), big - 1) == 1  # a pool would cost more
    assert pipeline.worker_count(PrepareOptions(workers=2), 10) == 2
    assert PrepareOptions().workers == 0


def test_the_default_worker_count_runs_a_pool_with_the_same_output(prepared, raw, tmp_path,
                                                                    monkeypatch):
    from dataclasses import replace

    from vicuna_cloud.data import pipeline

    res, opts = prepared
    seen = []
    start = pipeline._start_workers

    def spy(*args):  # records the count the default chose, runs the real pool
        seen.append(args[-1])
        return start(*args)

    monkeypatch.setattr(pipeline, "POOL_MIN_BYTES", 0)
    monkeypatch.setattr(pipeline, "_start_workers", spy)
    res2 = prepare([raw], str(tmp_path / "auto"), replace(opts, workers=0, chunk_size=16))
    assert seen == [pipeline.usable_cores()]
    assert res2.manifest["output"] == res.manifest["output"]


def test_out_dir_is_protected(prepared, raw, tmp_path):
    res, opts = prepared
    before = open(os.path.join(res.out_dir, "train.jsonl"), "rb").read()
    with pytest.raises(DataError, match="different dataset"):
        prepare([raw], res.out_dir, PrepareOptions(max_length=512))
    assert open(os.path.join(res.out_dir, "train.jsonl"), "rb").read() == before
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("precious")
    with pytest.raises(DataError, match="--force"):
        prepare([raw], str(user), opts)
    prepare([raw], str(user), opts, force=True)
    assert (user / "notes.txt").read_text() == "precious"
    # Re-running the same preparation into its own directory is allowed.
    again = prepare([raw], res.out_dir, opts)
    assert again.manifest["output"] == res.manifest["output"]
    assert sorted(os.listdir(res.out_dir)) == ["manifest.json", "train.jsonl"]


def test_failure_leaves_no_partial_output(tmp_path):
    bad = tmp_path / "bad.json"
    good = json.dumps({"id": "a", "conversations": [
        {"from": "human", "value": "How are you doing this fine morning?"},
        {"from": "gpt", "value": "Very well, thank you for asking me!"}]})
    bad.write_text("[" + ",".join([good] * 300) + ", {broken")
    out = tmp_path / "out"
    with pytest.raises(DataError, match="bad.json: line 1"):
        prepare([str(bad)], str(out), PrepareOptions(chunk_size=8))
    assert os.listdir(out) == []


@pytest.mark.parametrize("kwargs,match", [
    ({"tokenizer": "/no/such/tokenizer"}, "cannot load tokenizer"),
    ({"template": "alpaca"}, "unknown chat template"),
    ({"lang": "english!"}, "ISO 639-1"),
    ({"max_length": 4}, "too small"),
    ({"decontaminate": ("/no/such/eval.jsonl",)}, "no such"),
])
def test_bad_options_are_one_line_errors(tmp_path, kwargs, match):
    with pytest.raises(DataError, match=match) as e:
        prepare([str(DUMMY_CONVERSATIONS)], str(tmp_path / "o"), PrepareOptions(**kwargs))
    assert "\n" not in str(e.value)


def test_nothing_survives_is_an_error(tmp_path):
    p = tmp_path / "junk.jsonl"
    p.write_text('{"id": 1, "conversations": [{"from": "alien", "value": "x"}]}\n"str"\n')
    with pytest.raises(DataError, match="bad_schema=1, unknown_role=1"):
        prepare([str(p)], str(tmp_path / "o"))
    assert not os.path.exists(tmp_path / "o" / "train.jsonl")
