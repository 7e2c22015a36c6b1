"""Issue 14 #2, #3, #5, #7, #9: every file read back from the bucket is untrusted input.

Each test writes the bad file the issue names into a real bucket (a local directory, and
the moto S3 server where the backend matters) and checks that the reader reports and
skips it: a COMMIT.json cannot write outside its directory or stop a resume, a bad
metrics line cannot stop training, a garbage ledger segment is named, a final/ without
EXPORT.json is not an export.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from train.checkpoint import (
    COMMIT_NAME, CheckpointManager, CorruptCheckpoint, TrainProgress, download_checkpoint,
    step_prefix,
)
from vicuna_cloud.records import CommitRecord, InvalidRecord, parse, safe_name
from vicuna_cloud.runspec import CheckpointPolicy
from vicuna_cloud.storage import open_bucket

from test_checkpoint import make, run_steps
from helpers.train import tiny_spec


@pytest.fixture
def spec(tmp_path):
    s, _ = tiny_spec(tmp_path, limit=4, checkpoint=CheckpointPolicy(interval_steps=2, keep=3))
    return s


def _saved(spec, tmp_path, n=4):
    """A run with committed checkpoints at steps 2 and 4; returns the params at step 2."""
    m, opt, sched = make()
    ckpt = CheckpointManager(spec, m, opt, sched, rank=0, world_size=1,
                             local_root=str(tmp_path / "local"))
    p = TrainProgress()
    run_steps(ckpt, m, opt, sched, p, 2)
    ckpt.wait()
    at_2 = [x.detach().clone() for x in m.parameters()]
    run_steps(ckpt, m, opt, sched, p, n - 2)
    ckpt.close()
    return at_2


@pytest.mark.parametrize("name", ["../../../../outside.txt", "/abs/path", "a/../../b",
                                  "", ".", "x\x00y", "a\\..\\b", "ranks//0.json"])
def test_unsafe_names_are_refused(name):
    with pytest.raises(ValueError):
        safe_name(name)


def test_plain_names_pass():
    for name in (".metadata", "__0_0.distcp", "extra-1.pt", "ranks/0.json"):
        assert safe_name(name) == name


@pytest.mark.parametrize("which", ["local", "s3"])
def test_commit_with_a_path_outside_never_writes_there(tmp_path, which, request):
    """#2: a COMMIT.json naming ../../../../x wrote x on every resuming node (S3) or
    crashed the trainer (local bucket refused the key)."""
    uri = str(tmp_path / "bucket") if which == "local" else request.getfixturevalue("s3_bucket_uri")
    bucket = open_bucket(uri)
    sp = step_prefix("r1", 2)
    evil = "../../../../" + str(tmp_path / "home" / ".bashrc").lstrip("/")
    bucket.put_bytes(f"{sp}/{evil}" if which == "s3" else f"{sp}/x", b"pwned")
    bucket.put_bytes(f"{sp}/{COMMIT_NAME}", json.dumps({
        "format": 1, "step": 2, "run_id": "r1", "training_hash": "h", "world_size": 1,
        "progress": {}, "files": [{"name": evil, "size": 5, "sha256": "0" * 64}]}).encode())
    dest = tmp_path / "nodes" / "a" / "b" / "c" / "restore"
    with pytest.raises(CorruptCheckpoint, match="plain relative name"):
        download_checkpoint(bucket, "r1", 2, str(dest))
    assert not (tmp_path / "home").exists()
    assert not any(p.name == ".bashrc" for p in tmp_path.rglob("*"))


@pytest.mark.parametrize("body", [
    b"{}", b"[]", b"null", b'"x"', b"not json", b"\xff\xfe",
    json.dumps({"format": 1, "step": 4, "run_id": "tiny-test", "training_hash": "h",
                "world_size": 1}).encode(),                                    # no files
    json.dumps({"format": 1, "step": 4, "run_id": "tiny-test", "training_hash": "h",
                "world_size": 1, "files": "abc"}).encode(),                   # files a str
    json.dumps({"format": 1, "step": 4, "run_id": "tiny-test", "training_hash": "h",
                "world_size": 1, "files": [{"name": "a", "size": "9",
                                             "sha256": "0" * 64}]}).encode(),  # size a str
    json.dumps({"format": 1, "step": 6, "run_id": "tiny-test", "training_hash": "h",
                "world_size": 1, "files": [{"name": "a", "size": 1,
                                             "sha256": "0" * 64}]}).encode(),  # other step
])
def test_malformed_commit_falls_back_to_the_previous_checkpoint(spec, tmp_path, body):
    """#3: {} was a spec mismatch (exit 78, never retried), [] an AttributeError, bad
    'files' a KeyError/TypeError. Now: that checkpoint is invalid, reported, skipped."""
    at_2 = _saved(spec, tmp_path)
    bucket = open_bucket(spec.bucket_uri)
    bucket.put_bytes(f"{step_prefix(spec.run_id, 4)}/{COMMIT_NAME}", body)
    m2, opt2, sched2 = make(seed=1)
    ckpt = CheckpointManager(spec, m2, opt2, sched2, rank=0, world_size=1,
                             local_root=str(tmp_path / "local2"))
    prog = ckpt.restore()
    assert prog.step == 2 and ckpt.restored_step == 2
    kinds = [e["event"] for e in ckpt.events]
    assert "checkpoint_invalid" in kinds and kinds[-1] == "checkpoint_restored"
    for a, b in zip(at_2, m2.parameters()):
        assert torch.equal(a, b)


def test_commit_record_accepts_what_the_writer_writes(spec, tmp_path):
    _saved(spec, tmp_path)
    bucket = open_bucket(spec.bucket_uri)
    key = f"{step_prefix(spec.run_id, 4)}/{COMMIT_NAME}"
    c = parse(CommitRecord, bucket.get_bytes(key), key)
    assert c.step == 4 and {f.name for f in c.files} >= {".metadata", "extra-0.pt"}
    with pytest.raises(InvalidRecord, match="files"):
        parse(CommitRecord, json.dumps({**c.model_dump(), "files": []}).encode(), key)


def test_bad_metrics_lines_never_stop_training(tmp_path):
    """#7: [1], {"step":"x"} or invalid UTF-8 in metrics.jsonl killed every attempt."""
    from train.metrics import MetricsLog

    bucket = open_bucket(str(tmp_path / "b"))
    good = [json.dumps({"step": 1, "loss": 2.0}), json.dumps({"event": "start", "step": 0}),
            json.dumps({"step": 9, "loss": 1.0})]
    data = "\n".join([good[0], "[1]", '{"step":"x"}', good[1], '{"step": -3}', "{torn",
                      good[2]]).encode() + b"\n\xff\xfe garbage\n"
    bucket.put_bytes("runs/r/metrics.jsonl", data)
    log = MetricsLog(bucket, "runs/r", resume_step=5, console=False)
    assert log.lines == good[:2] and log.skipped_lines == 5
    log.close()

    from vicuna_cloud.run_progress import read_progress

    prog = read_progress(bucket, "r")
    assert prog.error is None and prog.last_metrics["step"] == 9


def test_final_without_export_marker_is_not_exported(tmp_path):
    """#5: final/ with config files and no EXPORT.json was 'finished (final/ exported)'
    and chat died in a traceback."""
    from vicuna_cloud.exported_model import ExportNotFound, local_export_dir
    from vicuna_cloud.run_progress import read_progress

    bucket = open_bucket(str(tmp_path / "b"))
    bucket.put_bytes("runs/r/run.json", b"{}")
    bucket.put_bytes("runs/r/final/config.json", b"{}")
    bucket.put_bytes("runs/r/final/tokenizer.json", b"{}")
    assert read_progress(bucket, "r").final is False
    assert "finished" not in read_progress(bucket, "r").summary
    with pytest.raises(ExportNotFound, match="EXPORT.json"):
        local_export_dir(bucket, "r")
    bucket.put_bytes("runs/r/final/EXPORT.json", b'{"step": 3, "files": "oops"}')
    assert read_progress(bucket, "r").final is False
    bucket.put_bytes("runs/r/final/EXPORT.json", json.dumps(
        {"step": 3, "files": {"config.json": 2, "tokenizer.json": 2}}).encode())
    assert read_progress(bucket, "r").final is True
    assert local_export_dir(bucket, "r").endswith("runs/r/final")
    bucket.put_bytes("runs/r/final/EXPORT.json", json.dumps(
        {"step": 3, "files": {"config.json": 2, "../../x": 2}}).encode())
    with pytest.raises(ExportNotFound):
        local_export_dir(bucket, "r")


def test_ledger_with_wrong_types_is_named_not_a_traceback(tmp_path):
    """#9: wrong types made `cost` exit with a TypeError; garbage read as 'no ledger yet'."""
    from vicuna_cloud.costs import report
    from vicuna_cloud.ledger import LedgerUnreadable, read_ledger

    bucket = open_bucket(str(tmp_path / "b"))
    seg = {"segment_id": "0001", "run_id": "r", "cloud": "local", "accelerators": "cpu",
           "nodes": "two", "use_spot": False, "price_source": "x", "start_time": "soon"}
    bucket.put_bytes("runs/r/ledger/0001.json", json.dumps(seg).encode())
    bucket.put_bytes("runs/r/ledger/0002.json", b"\x00garbage")
    led = read_ledger(bucket, "r")
    assert led.segments == [] and len(led.problems) == 2 and "nodes" in led.problems[0]
    with pytest.raises(LedgerUnreadable, match="unreadable"):
        report.run_cost(bucket, "r")
    line = report.all_runs(bucket)
    assert [(x.run_id, x.verdict) for x in line] == [("r", "ledger unreadable")]


def test_deleting_a_checkpoint_leaves_no_empty_step_directory(spec, tmp_path):
    """#10: deleted checkpoints left empty step-*/ directories in a local bucket."""
    _saved(spec, tmp_path, n=8)  # keep=3: steps 2 (and its ranks/ dir) deleted
    ckpts = os.path.join(spec.bucket_uri, "runs", spec.run_id, "checkpoints")
    assert sorted(os.listdir(ckpts)) == ["step-00000004", "step-00000006", "step-00000008"]
