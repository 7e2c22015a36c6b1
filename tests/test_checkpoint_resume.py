"""Resume end to end: the real trainer under torchrun (2 ranks, FSDP2, gloo, CPU).

One uninterrupted run is the reference. Every other run is SIGKILLed (whole job) at exact
points (VICUNA_TEST_KILL_AT, see train/checkpoint.py), preempted through the emulated
metadata service, stopped, or runs against a faulty S3, and restarted until done; each must
end with the reference's weights (every tensor, bit for bit) and the reference's loss at
every step it trained. Launches are few and carry many assertions (each costs ~10-20 s).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load as load_safetensors

from train.checkpoint import (
    CorruptCheckpoint, download_checkpoint, list_checkpoints, step_prefix,
)
from vicuna_cloud.runspec import CheckpointPolicy
from vicuna_cloud.storage import open_bucket

from helpers.metadata_server import MetadataServer
from helpers.train import REPO, read_metrics, tiny_spec, torchrun_train

pytestmark = pytest.mark.slow

EVERY_2 = CheckpointPolicy(interval_steps=2)
RUN_ID = "ckpt-resume"
SMALL = {"limit": 64, "global_batch_size": 8}  # 8 steps of 8 conversations: quick launches
_LINE = re.compile(r"step (\d+)/\d+ loss ([0-9.]+)")


def console_losses(proc) -> dict[int, str]:
    """step -> loss as printed (4 decimals) by rank 0 in this attempt."""
    return {int(s): v for s, v in _LINE.findall(proc.stderr + proc.stdout)}


def final_weights(bucket_uri: str) -> dict[str, torch.Tensor]:
    b = open_bucket(bucket_uri)
    names = [o.key for o in b.list(f"runs/{RUN_ID}/final/") if o.key.endswith(".safetensors")]
    assert names, "no exported weights"
    out: dict[str, torch.Tensor] = {}
    for n in names:
        out.update(load_safetensors(b.get_bytes(n)))
    return out


def losses(bucket_uri: str) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(bucket_uri, RUN_ID) if "loss" in r}


def events(bucket_uri: str, kind: str) -> list[dict]:
    return [r for r in read_metrics(bucket_uri, RUN_ID) if r.get("event") == kind]


def run(uri, tmp, *, env=None, args=()):
    return torchrun_train(uri, local_root=str(tmp / "local"), env=env, extra_args=args)


def assert_same_as_reference(reference, bucket_uri):
    ref_w, ref_losses = reference["weights"], reference["losses"]
    got = final_weights(bucket_uri)
    assert got.keys() == ref_w.keys()
    for k in ref_w:
        assert torch.equal(got[k], ref_w[k]), f"{k} differs from the uninterrupted run"
    got_losses = losses(bucket_uri)
    assert got_losses == {s: ref_losses[s] for s in got_losses}
    assert max(got_losses) == max(ref_losses)


def assert_all_committed_verify(bucket_uri, tmp):
    b = open_bucket(bucket_uri)
    for step, ok in list_checkpoints(b, RUN_ID).items():
        assert ok, f"uncommitted leftovers at step {step}"
        download_checkpoint(b, RUN_ID, step, str(tmp / f"verify-{step}"))  # size + sha256


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reference")
    spec, uri = tiny_spec(tmp, run_id=RUN_ID, checkpoint=EVERY_2, **SMALL)
    p = run(uri, tmp)
    assert p.returncode == 0, p.stderr[-4000:]
    return {"weights": final_weights(spec.bucket_uri), "losses": losses(spec.bucket_uri),
            "console": console_losses(p), "total": 8, "bucket": spec.bucket_uri}


def test_sigkill_mid_upload_mid_write_and_corrupt_newest(reference, tmp_path):
    spec, uri = tiny_spec(tmp_path, run_id=RUN_ID, checkpoint=EVERY_2, **SMALL)
    b = open_bucket(spec.bucket_uri)

    # 1. SIGKILL of the whole job while rank 0 uploads step 4 (one file up, COMMIT not).
    p1 = run(uri, tmp_path, env={"VICUNA_TEST_KILL_AT": "upload:4"})
    assert p1.returncode == -9, p1.stderr[-3000:]
    assert list_checkpoints(b, RUN_ID) == {2: True, 4: False}
    seen = console_losses(p1)
    assert seen and all(reference["console"][s] == v for s, v in seen.items())

    # 2. Resumes from 2, deletes the leftovers of 4; killed after step 6 hit local disk.
    p2 = run(uri, tmp_path, env={"VICUNA_TEST_KILL_AT": "written:6"})
    assert p2.returncode == -9, p2.stderr[-3000:]
    seen = console_losses(p2)
    assert min(seen) == 3 and all(reference["console"][s] == v for s, v in seen.items())
    # Rank 0 died before uploading anything of step 6, so step 6 is not committed. Rank 1's
    # upload thread runs on its own and may put some of its own files up before the SIGKILL
    # reaches it (seen on a loaded machine): legal leftovers (no COMMIT = not a checkpoint),
    # deleted at the next start. Its local staging is cleared at the next start too.
    after_kill = list_checkpoints(b, RUN_ID)
    assert {s: ok for s, ok in after_kill.items() if s != 6} == {2: True, 4: True}
    sp6 = step_prefix(RUN_ID, 6) + "/"
    six = {o.key[len(sp6):] for o in b.list(sp6)}
    assert six <= {"extra-1.pt", "__1_0.distcp", "ranks/1.json"}, six
    assert after_kill.get(6, False) is False
    # (Staging is per lease generation: the second attempt is generation 1.)
    assert (tmp_path / "local" / RUN_ID / "gen-1" / "save" / "step-00000006").is_dir()

    # 3. The newest committed checkpoint is corrupt: fall back to 2 (and say so), finish.
    shard = f"{step_prefix(RUN_ID, 4)}/__1_0.distcp"
    b.put_bytes(shard, b.get_bytes(shard)[:-100])
    with pytest.raises(CorruptCheckpoint, match="bytes"):
        download_checkpoint(b, RUN_ID, 4, str(tmp_path / "probe"))
    p3 = run(uri, tmp_path)
    assert p3.returncode == 0, p3.stderr[-4000:]
    assert not list((tmp_path / "local" / RUN_ID).glob("*/save/step-00000006"))
    assert [d.name for d in (tmp_path / "local" / RUN_ID).glob("gen-*")] == ["gen-2"]
    seen = console_losses(p3)
    assert min(seen) == 3 and max(seen) == 8
    assert all(reference["console"][s] == v for s, v in seen.items())
    fb = events(spec.bucket_uri, "checkpoint_fallback")
    assert [(e["ckpt_step"], e["fallback_to"]) for e in fb] == [(4, 2)]
    assert "__1_0.distcp" in fb[0]["reason"]
    assert events(spec.bucket_uri, "checkpoint_restored")[-1]["ckpt_step"] == 2
    # Step 6's leftovers (if rank 1 got any up) were deleted, never restored or committed.
    deleted = {e["ckpt_step"] for e in events(spec.bucket_uri, "checkpoint_leftovers_deleted")}
    assert (6 in deleted) == (6 in after_kill), (deleted, after_kill)

    # Retention: the last two committed checkpoints, nothing else.
    assert list_checkpoints(b, RUN_ID) == {6: True, 8: True}
    assert_all_committed_verify(spec.bucket_uri, tmp_path)
    assert_same_as_reference(reference, spec.bucket_uri)


def test_preemption_notice_on_faulty_s3_emergency_checkpoint_then_resume(
        reference, tmp_path, faulty_s3_bucket_uri):
    bucket_uri, proxy = faulty_s3_bucket_uri(rate=0.10, seed=7)
    spec, uri = tiny_spec(tmp_path, run_id=RUN_ID, checkpoint=EVERY_2, bucket_uri=bucket_uri, **SMALL)
    with MetadataServer(notice_after_polls=12) as md:
        env = {"VICUNA_AWS_METADATA_URL": md.url, "VICUNA_PREEMPTION_POLL_S": "0.1"}
        p1 = run(uri, tmp_path, env=env)
    assert "exitcode  : 75" in p1.stderr, p1.stderr[-4000:]
    assert md.polls >= 12 and any(r[0] == "PUT" for r in md.requests)
    pre = events(bucket_uri, "preemption")
    assert pre and pre[-1]["reason"] == "aws" and pre[-1]["checkpoint"] == "emergency"
    s = pre[-1]["ckpt_step"]
    assert 1 <= s < reference["total"]
    b = open_bucket(bucket_uri)
    assert max(s_ for s_, ok in list_checkpoints(b, RUN_ID).items() if ok) == s

    p2 = run(uri, tmp_path)
    assert p2.returncode == 0, p2.stderr[-4000:]
    assert events(bucket_uri, "checkpoint_restored")[-1]["ckpt_step"] == s
    seen = console_losses(p2)
    assert min(seen) == s + 1
    assert all(reference["console"][k] == v for k, v in seen.items())
    # The fault proxy really failed requests, and no committed checkpoint is short.
    faults = sum(v for k, v in proxy.stats.items() if k.startswith("fault:"))
    assert faults >= 5 and proxy.stats["requests"] > 50, proxy.stats
    assert_all_committed_verify(bucket_uri, tmp_path)
    assert_same_as_reference(reference, bucket_uri)


def test_gcs_stop_and_resume(reference, tmp_path, gcs_bucket_uri):
    spec, uri = tiny_spec(tmp_path, run_id=RUN_ID, checkpoint=EVERY_2, bucket_uri=gcs_bucket_uri,
                          **SMALL)
    p1 = run(uri, tmp_path, args=("--stop-after-steps", "3"))
    assert "exitcode  : 75" in p1.stderr, p1.stderr[-4000:]
    b = open_bucket(gcs_bucket_uri)
    assert list_checkpoints(b, RUN_ID) == {2: True}
    commit = json.loads(b.get_bytes(f"{step_prefix(RUN_ID, 2)}/COMMIT.json"))
    assert commit["world_size"] == 2 and commit["progress"]["step"] == 2
    assert {f["name"] for f in commit["files"]} == {
        ".metadata", "__0_0.distcp", "__1_0.distcp", "extra-0.pt", "extra-1.pt"}
    p2 = run(uri, tmp_path)
    assert p2.returncode == 0, p2.stderr[-4000:]
    assert min(console_losses(p2)) == 3
    assert_same_as_reference(reference, gcs_bucket_uri)


def cli(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "vicuna_cloud", *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=300)


def test_export_any_committed_step(reference, tmp_path):
    bucket = reference["bucket"]
    # The newest committed checkpoint (step 8) exports to exactly the trainer's final model.
    out = tmp_path / "hf8"
    p = cli("export", RUN_ID, "--bucket", bucket, "--out", str(out), "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads(p.stdout)
    assert summary["step"] == 8 and summary["committed_steps"] == [6, 8]
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= set(os.listdir(out))
    assert "chat_template" in json.loads((out / "tokenizer_config.json").read_text())
    got = load_safetensors((out / "model.safetensors").read_bytes())
    assert got.keys() == reference["weights"].keys()
    assert all(torch.equal(got[k], reference["weights"][k]) for k in got)
    # An older step through the data-plane entry point: a different, complete model.
    out6 = tmp_path / "hf6"
    p = subprocess.run([sys.executable, "-m", "train.export_cli", "--run",
                        f"{bucket}/runs/{RUN_ID}/run.json", "--step", "6", "--out", str(out6)],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    six = load_safetensors((out6 / "model.safetensors").read_bytes())
    assert six.keys() == got.keys() and not all(torch.equal(six[k], got[k]) for k in got)
    assert not (tmp_path / "hf6.partial").exists()

    # Bad input: one line, exit 2, nothing written.
    for args, msg in [
        (("--step", "3", "--out", str(tmp_path / "x")), "no committed checkpoint at step 3; committed: 6, 8"),
        (("--out", str(out)), "not an empty directory"),
    ]:
        p = cli("export", RUN_ID, "--bucket", bucket, *args)
        # (rich may wrap the one-line message at 80 columns: compare whitespace-normalised)
        assert p.returncode == 2 and msg in " ".join(p.stderr.split()), p.stderr
        assert "Traceback" not in p.stderr
    p = cli("export", "no-such-run", "--bucket", bucket, "--out", str(tmp_path / "y"))
    assert p.returncode == 2 and "no run spec" in p.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
