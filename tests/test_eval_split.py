"""`data prepare --eval-fraction`: a held-out split by id hash, capped, never curated
data, written beside train.jsonl, uploaded and verified with it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import DUMMY_CONVERSATIONS
from vicuna_cloud.data.pipeline import PrepareOptions, held_out, prepare
from vicuna_cloud.data.reader import DataError


def ids(path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


RAW_IDS = {c["id"] for c in json.loads(DUMMY_CONVERSATIONS.read_text())}


def base_id(piece_id: str) -> str:
    """The conversation's id (a split conversation's pieces are ID_0, ID_1, ...)."""
    return piece_id if piece_id in RAW_IDS else piece_id.rpartition("_")[0]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("evalsplit")
    res = prepare([str(DUMMY_CONVERSATIONS)], str(out / "a"),
                  PrepareOptions(eval_fraction=0.1, max_length=512))
    return out, res


def test_held_out_split_is_by_id_hash_and_disjoint(prepared):
    out, res = prepared
    m, c = res.manifest, res.manifest["counts"]
    train, ev = ids(out / "a" / "train.jsonl"), ids(out / "a" / "eval.jsonl")
    assert ev and not set(train) & set(ev)
    assert all(held_out(base_id(i), 0.1) for i in ev)
    assert 0.05 < c["eval_conversations"] / c["kept"] < 0.15
    assert c["eval_pieces"] == len(ev) and c["split_pieces"] == len(train)
    assert m["samples"] == len(train)
    assert m["conversations"] == c["kept"] - c["eval_conversations"]
    assert m["eval"]["samples"] == len(ev)
    import hashlib
    assert m["eval"]["sha256"] == hashlib.sha256((out / "a" / "eval.jsonl").read_bytes()).hexdigest()
    # The training token statistics cover train.jsonl only.
    assert m["tokens"]["conversations"] == len(train)


def test_same_ids_are_held_out_whatever_the_order_or_the_rest(prepared, tmp_path):
    out, res = prepared
    convs = json.loads(DUMMY_CONVERSATIONS.read_text())
    half = list(reversed(convs[: len(convs) // 2]))
    src = tmp_path / "half.json"
    src.write_text(json.dumps(half))
    res2 = prepare([str(src)], str(tmp_path / "b"), PrepareOptions(eval_fraction=0.1, max_length=512))
    first = set(ids(out / "a" / "eval.jsonl"))
    second = set(ids(tmp_path / "b" / "eval.jsonl"))
    in_half = {c["id"] for c in half}
    assert second == {i for i in first if base_id(i) in in_half}
    assert res2.manifest["counts"]["eval_conversations"] > 0


def test_cap_and_curated_conversations(tmp_path):
    merge = tmp_path / "curated.json"
    merge.write_text(json.dumps([
        {"id": f"cur{i}", "conversations": [{"from": "human", "value": f"question {i}?"},
                                            {"from": "gpt", "value": f"answer number {i}."}]}
        for i in range(200)]))
    res = prepare([str(DUMMY_CONVERSATIONS)], str(tmp_path / "c"),
                  PrepareOptions(eval_fraction=0.5, eval_max=7, merge=(str(merge),)))
    assert res.manifest["counts"]["eval_conversations"] == 7
    ev = ids(tmp_path / "c" / "eval.jsonl")
    assert not any(i.startswith("cur") for i in ev)
    # No split, no file (and an old one is removed).
    res = prepare([str(DUMMY_CONVERSATIONS)], str(tmp_path / "c"), PrepareOptions(), force=True)
    assert "eval" not in res.manifest and not (tmp_path / "c" / "eval.jsonl").exists()


@pytest.mark.parametrize("frac", [-0.1, 1.0])
def test_bad_fraction_is_a_one_line_error(tmp_path, frac):
    with pytest.raises(DataError, match="--eval-fraction"):
        prepare([str(DUMMY_CONVERSATIONS)], str(tmp_path / "x"), PrepareOptions(eval_fraction=frac))
    r = subprocess.run([sys.executable, "-m", "vicuna_cloud", "data", "prepare",
                        str(DUMMY_CONVERSATIONS), "--out", str(tmp_path / "y"),
                        "--eval-fraction", str(frac)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--eval-fraction" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_upload_carries_the_split_and_verifies_it(prepared, tmp_path):
    from vicuna_cloud.data.upload import upload_dataset
    from vicuna_cloud.storage import open_bucket

    out, res = prepared
    up = upload_dataset(str(out / "a"), str(tmp_path / "bucket"))
    b = open_bucket(up.uri)
    assert b.get_bytes("eval.jsonl") == (out / "a" / "eval.jsonl").read_bytes()
    assert json.loads(b.get_bytes("manifest.json"))["eval"]["sha256"] == res.manifest["eval"]["sha256"]
    assert upload_dataset(str(out / "a"), str(tmp_path / "bucket")).uploaded is False
    (out / "a" / "eval.jsonl").write_text("tampered\n")
    try:
        with pytest.raises(DataError, match="eval.jsonl"):
            upload_dataset(str(out / "a"), str(tmp_path / "bucket2"))
    finally:
        (out / "a" / "eval.jsonl").write_bytes(b.get_bytes("eval.jsonl"))
