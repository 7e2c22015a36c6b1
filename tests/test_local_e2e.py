"""End to end: `vicuna-cloud launch tiny --local` with real torchrun (2 processes, gloo).

Three runs share the module (same seed, same shipped corpus, prepared once):
- ``p0``: no preemption, on S3 served by moto;
- ``p2``: two simulated preemptions (SIGKILL of the whole tree), on a local directory;
- ``cancel``: Ctrl-C (SIGINT to the launcher) mid-run, then the same --run-id again, on
  GCS served by fake-gcs-server.
All three must export the very same weights; the ledgers must tell the story.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from vicuna_cloud.lease import read_state
from vicuna_cloud.ledger import read_ledger
from vicuna_cloud.exported_model import local_export_dir
from vicuna_cloud.local.supervisor import EXIT_CANCELLED, PreemptionPlan
from vicuna_cloud.storage import open_bucket

pytestmark = pytest.mark.slow
SEED = "7"


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("vchome")


def launch_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "vicuna_cloud", "launch", "tiny", "--local", "--seed", SEED,
            *args]


def env_for(home: Path) -> dict:
    return dict(os.environ, VICUNA_CLOUD_HOME=str(home), COLUMNS="200")


def launch(home: Path, *args: str, timeout: int = 420) -> subprocess.CompletedProcess:
    return subprocess.run(launch_cmd(*args), env=env_for(home), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def p0(home, s3_server):
    uri = f"s3://{s3_server.create_bucket()}/vicuna"
    r = launch(home, "--bucket", uri, "--run-id", "e2e-p0")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return uri, r


@pytest.fixture(scope="module")
def p2(home):
    uri = str(home / "bucket-p2")
    r = launch(home, "--bucket", uri, "--run-id", "e2e-p2", "--preemptions", "2",
               "--price-per-hour", "1.5")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return uri, r


@pytest.fixture(scope="module")
def cancelled(home, gcs_server):
    """Launch, Ctrl-C once a checkpoint is committed, then launch the same run id again."""
    uri = f"gs://{gcs_server.create_bucket()}/vicuna"
    bucket = open_bucket(uri)
    proc = subprocess.Popen(launch_cmd("--bucket", uri, "--run-id", "e2e-cancel"),
                            env=env_for(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    family: dict[int, psutil.Process] = {}
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        for p in psutil.Process(proc.pid).children(recursive=True):
            family.setdefault(p.pid, p)
        segs = read_ledger(bucket, "e2e-cancel").segments if _exists(bucket) else []
        if segs and (segs[-1].last_checkpoint_step or 0) >= 3:
            break
        time.sleep(0.5)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    for p in psutil.Process(proc.pid).children(recursive=True):
        family.setdefault(p.pid, p)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C delivers to the launcher
    out, err = proc.communicate(timeout=120)
    first = (proc.returncode, out, err, list(family.values()))
    ledger_after_cancel = read_ledger(bucket, "e2e-cancel").segments
    r = launch(home, "--bucket", uri, "--run-id", "e2e-cancel")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return uri, first, ledger_after_cancel, r


def _exists(bucket, run_id: str = "e2e-cancel") -> bool:
    return bool(bucket.list(f"runs/{run_id}/ledger/"))


@pytest.fixture(scope="module")
def orphaned(home):
    """Launch, SIGKILL the launcher (the local supervisor) once a checkpoint is committed,
    wait for its orphaned torchrun and workers to end by themselves, then relaunch the
    same run id (no --take-over). Returns what each step saw."""
    uri, run_id = str(home / "bucket-orphan"), "e2e-orphan"
    bucket = open_bucket(uri)
    proc = subprocess.Popen(launch_cmd("--bucket", uri, "--run-id", run_id), env=env_for(home),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        segs = read_ledger(bucket, run_id).segments if _exists(bucket, run_id) else []
        if segs and (segs[-1].last_checkpoint_step or 0) >= 3:
            break
        time.sleep(0.5)
    assert proc.poll() is None, "the run ended before its launcher could be killed"
    family = psutil.Process(proc.pid).children(recursive=True)
    assert any("train" in " ".join(p.cmdline()) for p in family), "no trainer was running"
    proc.kill()  # SIGKILL: no handler runs, the supervisor is simply gone
    proc.wait()
    t0 = time.time()
    _, alive = psutil.wait_procs(family, timeout=120)
    orphans_s = time.time() - t0
    after = read_ledger(bucket, run_id).segments
    lease = read_state(bucket, run_id)
    exported = bool(bucket.list(f"runs/{run_id}/final/"))
    r = launch(home, "--bucket", uri, "--run-id", run_id)
    return uri, run_id, alive, orphans_s, after, lease, exported, r


def weights(bucket_uri: str, run_id: str, home: Path) -> dict:
    from safetensors.torch import load_file

    os.environ["VICUNA_CLOUD_HOME"] = str(home)
    d = Path(local_export_dir(open_bucket(bucket_uri), run_id))
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(str(f)))
    assert out, f"no safetensors in {d}"
    return out


def assert_same_weights(a: dict, b: dict) -> None:
    import torch

    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def cost_json(home: Path, bucket_uri: str, run_id: str) -> dict:
    r = subprocess.run([sys.executable, "-m", "vicuna_cloud", "cost", run_id, "--bucket",
                        bucket_uri, "--json"], env=env_for(home), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_plain_run_on_s3_exports_a_model_and_costs_one_local_segment(p0, home):
    uri, r = p0
    assert "Exported model:" in r.stdout and "Cost of e2e-p0" in r.stdout
    c = cost_json(home, uri, "e2e-p0")
    assert len(c["segments"]) == 1 and c["segments"][0]["end_reason"] == "completed"
    assert c["segments"][0]["where"].startswith("local") and c["spend_usd"] == 0
    # Downloaded from S3 to the run's local directory, so chat can load it.
    assert (home / "local" / "e2e-p0" / "final" / "config.json").is_file()


def test_two_preemptions_end_with_the_same_weights_and_three_segments(p0, p2, home):
    uri, r = p2
    assert "2 of 2 simulated" in r.stdout
    assert_same_weights(weights(p0[0], "e2e-p0", home), weights(uri, "e2e-p2", home))
    c = cost_json(home, uri, "e2e-p2")
    segs = c["segments"]
    assert len(segs) == 3
    assert [s["end_reason"] for s in segs][-1] == "completed"
    assert all(s["price_per_hour"] == 1.5 and s["where"].startswith("local") for s in segs)
    assert c["spend_usd"] > 0
    # Each kill came at the seeded plan's step (the ledger's heartbeat may lag the kill,
    # so the bound is on the restart): each restart resumed from a committed checkpoint
    # (every LOCAL_CHECKPOINT_STEPS) at or before that point, never from scratch twice.
    from vicuna_cloud.local.launch import LOCAL_CHECKPOINT_STEPS

    ledger = read_ledger(open_bucket(uri), "e2e-p2").segments
    targets = PreemptionPlan(2, seed=int(SEED)).targets(ledger[0].total_steps)
    assert ledger[0].first_step == 0
    for nxt, target in zip(ledger[1:], targets):
        assert nxt.first_step <= target and nxt.first_step % LOCAL_CHECKPOINT_STEPS == 0
    assert ledger[2].first_step > 0
    assert ledger[2].last_step == ledger[2].total_steps


def test_ctrl_c_stops_cleanly_and_a_relaunch_resumes(p0, cancelled, home):
    uri, (code, out, err, family), after_cancel, r = cancelled
    assert code == EXIT_CANCELLED, err[-2000:]
    assert "Resume with" in err
    assert family, "no child processes were seen"
    stray = [p for p in family if _alive(p)]
    assert not stray, f"stray processes after Ctrl-C: {[p.pid for p in stray]}"
    assert after_cancel and after_cancel[-1].end_reason == "cancelled"
    assert after_cancel[-1].end_time is not None
    # The relaunch found run.json and resumed: its segment starts past step 0.
    segs = read_ledger(open_bucket(uri), "e2e-cancel").segments
    assert len(segs) == len(after_cancel) + 1
    assert segs[-1].first_step > 0 and segs[-1].end_reason == "completed"
    assert "Resuming run e2e-cancel" in r.stdout
    assert_same_weights(weights(p0[0], "e2e-p0", home), weights(uri, "e2e-cancel", home))


def test_trainers_of_a_sigkilled_launcher_stop_and_free_the_run(p0, orphaned, home):
    """Issue 14: the launcher (the local supervisor) SIGKILLed, its torchrun and workers
    lived on and kept renewing the run's lease, so the relaunch was refused. Now they
    notice (VICUNA_SUPERVISOR, polled with the preemption notices), stop at the next step
    boundary with a checkpoint, release the lease and exit; the relaunch (no --take-over)
    resumes at once and ends with the weights of the uninterrupted run."""
    uri, run_id, alive, orphans_s, after, lease, exported, r = orphaned
    assert not alive, f"orphaned trainers still running: {[p.pid for p in alive]}"
    print(f"\norphaned trainers ended {orphans_s:.1f}s after the launcher's SIGKILL")
    seg = after[-1]
    assert seg.end_reason == "cancelled" and seg.last_step < seg.total_steps, seg
    assert seg.last_checkpoint_step == seg.last_step  # the stop's own checkpoint
    assert lease.released and not exported  # freed, and they did not finish the run
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "held by" not in r.stdout + r.stderr and "Resuming run e2e-orphan" in r.stdout
    segs = read_ledger(open_bucket(uri), run_id).segments
    assert len(segs) == len(after) + 1 and segs[-1].end_reason == "completed"
    assert segs[-1].first_step == seg.last_checkpoint_step  # nothing trained twice
    assert_same_weights(weights(p0[0], "e2e-p0", home), weights(uri, run_id, home))


def test_chat_with_the_trained_export(p2, home):
    uri, _ = p2
    r = subprocess.run([sys.executable, "-m", "vicuna_cloud", "chat", "e2e-p2", "--bucket", uri,
                        "--prompt", "How do I sort a list in Python?", "--max-new-tokens", "12"],
                       env=env_for(home), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip(), "the trained model produced no reply"


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
