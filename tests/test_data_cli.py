"""`vicuna-cloud data prepare | upload | inspect` through the real CLI entry point."""

from __future__ import annotations

import json

import pytest
from conftest import DUMMY_CONVERSATIONS
from helpers.cli import run_cli


def _one_line_error(r, *words):
    assert r.code == 2, (r.out, r.err)
    lines = [ln for ln in r.err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.err
    assert "Traceback" not in r.err
    for w in words:
        assert w in lines[0], lines[0]


def test_prepare_upload_inspect_json(capsys, monkeypatch, tmp_path):
    out, bucket = str(tmp_path / "ds"), str(tmp_path / "bucket")
    r = run_cli(capsys, monkeypatch, "data", "prepare", str(DUMMY_CONVERSATIONS), "--out", out,
                "--max-length", "512", "--blocked-words", "", "--workers", "2", "--json")
    assert r.code == 0, r.err
    m = json.loads(r.out)
    assert m["counts"]["kept"] == 500 and m["options"]["blocked_words"] == []
    r = run_cli(capsys, monkeypatch, "data", "upload", out, bucket, "--json")
    assert r.code == 0, r.err
    up = json.loads(r.out)
    assert up["uploaded"] and up["sha256"] == m["output"]["sha256"]
    assert up["uri"].endswith(f"datasets/{m['output']['sha256']}")
    r = run_cli(capsys, monkeypatch, "data", "upload", out, bucket, "--json")
    assert json.loads(r.out)["uploaded"] is False
    r = run_cli(capsys, monkeypatch, "data", "inspect", f"{out}/train.jsonl", "--n", "2", "--json")
    assert r.code == 0, r.err
    convs = json.loads(r.out)
    assert len(convs) == 2
    for c in convs:
        assert 0 < c["trained_tokens"] < c["tokens"]
        # Every trained span starts inside an assistant reply.
        for s, e in c["trained_spans"]:
            assert "ASSISTANT:" in c["text"][:s + 1]
            assert c["text"][s:e].rstrip().endswith("</s>")


def test_human_output_tables(capsys, monkeypatch, tmp_path):
    out = str(tmp_path / "ds")
    r = run_cli(capsys, monkeypatch, "data", "prepare", str(DUMMY_CONVERSATIONS), "--out", out)
    assert r.code == 0, r.err
    assert "dropped: blocked_words" in r.out and "train.jsonl sha256" in r.out
    # FastChat's dummy data is identity data: blocked words drop 60 of it, and it says so.
    warn = [ln for ln in r.err.splitlines() if ln.startswith("warning:")]
    assert len(warn) == 1 and "dropped 60 conversations that look like identity" in warn[0]
    assert "--merge" in warn[0]
    r = run_cli(capsys, monkeypatch, "data", "upload", out, str(tmp_path / "b"))
    assert "uploaded and verified" in r.out and "launch 7b --data" in r.out
    r = run_cli(capsys, monkeypatch, "data", "inspect", f"{out}/train.jsonl", "--n", "1")
    assert r.code == 0 and "trained" in r.out and "USER:" in r.out
    # Piped (no colour): trained spans are bracketed, and only inside assistant replies.
    body = r.out.split("ASSISTANT:", 1)
    assert "[[trained]]" in body[0] and "USER:[[" not in r.out
    assert "[[" in body[1] and "]]" in body[1]


@pytest.mark.parametrize("args,words", [
    (["prepare", "/no/such.json", "--out", "{tmp}/o"], ["/no/such.json", "no such file"]),
    (["prepare", "{bad}", "--out", "{tmp}/o"], ["line 2", "byte"]),
    (["prepare", "{dummy}", "--out", "{tmp}/o", "--tokenizer", "{tmp}/nothing"],
     ["cannot load tokenizer"]),
    (["prepare", "{dummy}", "--out", "{tmp}/o", "--long-pair", "keep"], ["truncate", "drop"]),
    (["upload", "{tmp}", "{tmp}/b"], ["no manifest"]),
    (["upload", "{tmp}/nope", "s3://Bad_Bucket/x"], ["not a directory"]),
    (["inspect", "{bad}"], ["no 'conversations' list"]),
    (["inspect", "{dummy}", "--template", "nope"], ["unknown chat template"]),
])
def test_bad_input_is_one_line_exit_2(capsys, monkeypatch, tmp_path, args, words):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"id": 1},\n{"id": 2,,}]')
    fill = {"tmp": str(tmp_path), "bad": str(bad), "dummy": str(DUMMY_CONVERSATIONS)}
    r = run_cli(capsys, monkeypatch, "data", *[a.format(**fill) for a in args])
    _one_line_error(r, *words)


def test_roles_option_and_removed_turns_in_the_report(capsys, monkeypatch, tmp_path):
    q, a = "How do I sort a list of numbers in Python?", "Use sorted(xs) to get a new list."
    src = tmp_path / "in.json"
    src.write_text(json.dumps([
        {"id": "1", "conversations": [{"from": "system", "value": "Be terse."},
                                      {"from": "human", "value": q}, {"from": "bard", "value": a}]},
        {"id": "2", "conversations": [{"from": "human", "value": q + " 2"},
                                      {"from": "gpt", "value": a + " 2"}]}]))
    r = run_cli(capsys, monkeypatch, "data", "prepare", str(src), "--out", str(tmp_path / "a"),
                "--eval-fraction", "0")
    assert r.code == 0, r.err
    assert "dropped: other_assistant" in r.out and "warning" not in r.err
    r = run_cli(capsys, monkeypatch, "data", "prepare", str(src), "--out", str(tmp_path / "b"),
                "--eval-fraction", "0", "--assistant-role", "bard")
    assert r.code == 0, r.err
    assert "dropped:" not in r.out and "turns removed from kept ones: leading_system" in r.out


def test_workers_help_names_the_default(capsys, monkeypatch):
    import os

    r = run_cli(capsys, monkeypatch, "data", "prepare", "--help")
    text = " ".join(r.out.replace("│", " ").split())
    assert f"default: every usable core ({len(os.sched_getaffinity(0))} here" in text
    assert "--assistant-role" in text
