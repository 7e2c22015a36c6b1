"""End to end: the real trainer under torchrun (2 processes, gloo, FSDP2 on CPU) on the
shared dummy ShareGPT conversations, then its Hugging Face export loaded back.

Loss threshold, from real runs of this exact set-up (192 conversations, 12 steps, tiny
preset, lr 2e-3): the first step's loss is ~10.37 (= ln 32000, uniform over the vocab)
and the mean of the last 5 steps ~8.82 (a drop of ~1.56); we require a drop of at least 1.0.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from vicuna_cloud.storage import open_bucket
from vicuna_cloud.templates import TEMPLATES, to_messages

from conftest import DUMMY_CONVERSATIONS
from helpers.train import REPO, read_metrics, tiny_spec, torchrun_train

N_CONVERSATIONS = 192
LOSS_DROP = 1.0

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    spec, uri = tiny_spec(tmp, run_id="e2e-tiny", limit=N_CONVERSATIONS)
    proc = torchrun_train(uri, local_root=str(tmp / "node"), extra_args=("--export-shard-mb", "4"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return spec, tmp, proc


def test_two_process_fsdp_run_lowers_the_loss(trained):
    spec, _, proc = trained
    recs = read_metrics(spec.bucket_uri, spec.run_id)
    start = next(m for m in recs if m.get("event") == "start")
    assert start["mesh"] == {"shard": 2} and start["data"]["kept"] == N_CONVERSATIONS
    steps = [m for m in recs if "loss" in m]
    assert [m["step"] for m in steps] == list(range(1, 13))        # ceil(192 / 16) steps
    first, last5 = steps[0]["loss"], sum(m["loss"] for m in steps[-5:]) / 5
    assert first > 10.0
    assert last5 < first - LOSS_DROP, [round(m["loss"], 3) for m in steps]
    for m in steps:
        assert m["tokens_per_s"] > 0 and m["mfu"] is None             # CPU: no peak
        assert m["padding_fraction"] == 0.0                          # packed rows
        assert 0.2 < m["trained_fraction"] < 0.7
        assert m["grad_norm"] > 0
    assert steps[0]["lr"] == pytest.approx(spec.hyper.learning_rate)  # 1 warmup step
    assert steps[-1]["lr"] < 0.05 * spec.hyper.learning_rate
    assert "completed at step 12/12" in proc.stderr


def test_export_round_trip(trained):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec, tmp, _ = trained
    bucket = open_bucket(spec.bucket_uri)
    final = tmp / "final"
    marker = json.loads(bucket.get_bytes(f"runs/{spec.run_id}/final/EXPORT.json"))
    assert marker["step"] == 12
    for name in marker["files"]:
        bucket.get_file(f"runs/{spec.run_id}/final/{name}", str(final / name))
    shards = [n for n in marker["files"] if n.endswith(".safetensors")]
    assert len(shards) > 1 and "model.safetensors.index.json" in marker["files"]
    assert "chat_template" in json.loads((final / "tokenizer_config.json").read_text())

    tok = AutoTokenizer.from_pretrained(final)
    tpl = TEMPLATES[spec.template]
    convs = [r["conversations"] for r in json.loads(DUMMY_CONVERSATIONS.read_text())]
    multi = [c for c in convs if len(c) >= 4][:5]
    assert_serves_training_ids(tok, tpl, multi)

    model = AutoModelForCausalLM.from_pretrained(final)
    model.eval()
    ids = tok(tpl.prompt(multi[0][:1]), return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=8, do_sample=False, min_new_tokens=8)
    assert out.shape[1] == ids.shape[1] + 8
    # The exported weights are the trained ones, not the seeded initialisation.
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(spec.hyper.seed)
    init = LlamaForCausalLM(LlamaConfig(**spec.model.architecture))
    assert not torch.allclose(init.model.norm.weight, model.model.norm.weight.float())


def test_v0_chat_template_round_trip(tmp_path):
    """The other template family, without another training run."""
    from transformers import AutoTokenizer
    from vicuna_cloud.tokenizer import load_tokenizer
    from train.export import save_tokenizer

    save_tokenizer(load_tokenizer("builtin:llama-sp"), "vicuna_v0", str(tmp_path))
    tok = AutoTokenizer.from_pretrained(tmp_path)
    tpl = TEMPLATES["vicuna_v0"]
    convs = [r["conversations"] for r in json.loads(DUMMY_CONVERSATIONS.read_text())]
    assert_serves_training_ids(tok, tpl, [c for c in convs if len(c) >= 4][:5])


def assert_serves_training_ids(tok, tpl, convs) -> None:
    """The exported tokenizer's apply_chat_template(tokenize=True), which adds no special
    tokens of its own (as vLLM's chat endpoint renders), gives exactly the training ids,
    BOS included; so does the generation prompt."""
    from vicuna_cloud.tokenizer import load_tokenizer
    from train.masking import tokenize_conversation

    train_tok = load_tokenizer("builtin:llama-sp")
    assert tok.chat_template.startswith("{{ bos_token")
    for conv in convs:
        msgs = to_messages(conv)
        trained = list(tokenize_conversation(train_tok, tpl, conv, 10**6).input_ids)
        served = tok.apply_chat_template(msgs, tokenize=True)["input_ids"]
        assert served == trained and served[0] == tok.bos_token_id
        assert tok.apply_chat_template(msgs, tokenize=False).startswith(tok.bos_token)
        prompt = tok.apply_chat_template(msgs[:-1], tokenize=True, add_generation_prompt=True)
        assert prompt["input_ids"] == train_tok(tpl.prompt(conv[:-1])).input_ids


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _single(uri: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, MASTER_PORT=str(_free_port()), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "train", uri], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_changed_dataset_is_refused_with_a_one_line_error(tmp_path):
    spec, uri = tiny_spec(tmp_path, run_id="bad-sha", limit=8)
    with open(os.path.join(spec.dataset.uri, "train.jsonl"), "a") as f:
        f.write(json.dumps({"id": "x", "conversations": []}) + "\n")
    proc = _single(uri)
    assert proc.returncode == 78, proc.stderr
    assert "Traceback" not in proc.stderr
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("error")]
    assert len(err) == 1 and "sha256" in err[0] and spec.dataset.sha256 in err[0]


def test_exit_code_survives_torchrun_through_the_exit_code_file(tmp_path):
    """torchrun turns any worker failure into exit 1; the file keeps the trainer's 78."""
    spec, uri = tiny_spec(tmp_path, run_id="bad-sha-2", limit=8)
    with open(os.path.join(spec.dataset.uri, "train.jsonl"), "a") as f:
        f.write("{}\n")
    code_file = tmp_path / "exit_code"
    proc = torchrun_train(uri, env={"VICUNA_EXIT_CODE_FILE": str(code_file)})
    assert proc.returncode != 0
    assert code_file.read_text().strip() == "78"


def test_missing_run_spec_exits_78(tmp_path):
    proc = _single(str(tmp_path / "runs" / "nope" / "run.json"))
    assert proc.returncode == 78 and "Traceback" not in proc.stderr
    assert "does not exist" in proc.stderr


def test_packed_micro_batch_below_max_length_exits_78_naming_both(tmp_path):
    """The combination is refused by the run spec's pydantic model (at launch too); a
    run.json edited by hand still gets the one-line error on the node."""
    spec, uri = tiny_spec(tmp_path, run_id="bad-mbt", limit=8)
    raw = json.loads(open_bucket(spec.bucket_uri).get_bytes(f"runs/{spec.run_id}/run.json"))
    raw["hyper"]["micro_batch_tokens"] = raw["hyper"]["max_length"] - 1
    open_bucket(spec.bucket_uri).put_bytes(f"runs/{spec.run_id}/run.json",
                                           json.dumps(raw).encode())
    proc = _single(uri)
    assert proc.returncode == 78 and "Traceback" not in proc.stderr, proc.stderr
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("error")]
    assert len(err) == 1 and "micro_batch_tokens 255 < max_length 256" in err[0], err


def test_two_nodes_use_hybrid_sharding(tmp_path):
    """Two single-process 'nodes' on this host: the mesh is (replicate 2, shard 1)."""
    spec, uri = tiny_spec(tmp_path, run_id="hsdp", limit=32)
    port = str(_free_port())
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={r}",
         "--nproc_per_node=1", "--master-addr=127.0.0.1", f"--master-port={port}",
         "-m", "train", uri, "--local-root", str(tmp_path / f"node{r}")],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for r in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-3000:] + outs[1][1][-3000:]
    recs = read_metrics(spec.bucket_uri, spec.run_id)
    start = next(m for m in recs if m.get("event") == "start")
    assert start["mesh"] == {"replicate": 2, "shard": 1} and start["world_size"] == 2
    assert [m["step"] for m in recs if "loss" in m] == [1, 2]


def test_a_crash_closes_the_ledger_segment_as_failed(tmp_path, monkeypatch):
    """The trainer in this process (world size 1). The bucket refuses every checkpoint
    upload (a storage outage: the outer edge), so the third failed checkpoint in a row
    raises; the segment must still end, as 'failed', not be left for the cost report to
    guess (it would call it preempted)."""
    import torch.distributed as dist

    from train.checkpoint import CheckpointError
    from train.trainer import TrainerOptions, run
    from vicuna_cloud.ledger import read_ledger
    from vicuna_cloud.runspec import CheckpointPolicy
    from vicuna_cloud.storage import StorageError
    from vicuna_cloud.storage.local import LocalBucket

    spec, uri = tiny_spec(tmp_path, run_id="crash", limit=64,
                          checkpoint=CheckpointPolicy(interval_steps=1, keep=2))
    real_put = LocalBucket.put_file

    def put_file(self, key, path, *a, **kw):
        if "/checkpoints/" in key:
            raise StorageError(f"{key}: injected outage")
        return real_put(self, key, path, *a, **kw)

    monkeypatch.setattr(LocalBucket, "put_file", put_file)
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    try:
        with pytest.raises(CheckpointError, match="3 checkpoints in a row"):
            run(uri, TrainerOptions(local_root=str(tmp_path / "node")))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    seg = read_ledger(open_bucket(spec.bucket_uri), spec.run_id).segments[-1]
    assert seg.end_reason == "failed" and seg.end_time is not None
    assert seg.last_step >= 3


def test_a_crash_mid_training_closes_everything_and_commits_nothing(tmp_path, monkeypatch):
    """The Trainer in this process (world size 1), used as `run` uses it: train() in try,
    close() in finally. Step 3 raises (the injected crash, as a CUDA OOM would) while step
    2's checkpoint is still uploading: the bucket holds that upload (a slow store: the
    outer edge). close() must not wait for it and it must never be committed; the ledger
    segment ends as 'failed', the metrics buffered in memory (flush interval 1 h) reach
    the bucket, and the SIGTERM handler the preemption watcher installed is removed."""
    import signal
    import threading
    import time

    import torch.distributed as dist

    from train.checkpoint import list_checkpoints
    from train.trainer import Trainer, TrainerOptions
    from vicuna_cloud.ledger import read_ledger
    from vicuna_cloud.runspec import CheckpointPolicy
    from vicuna_cloud.storage.local import LocalBucket

    spec, uri = tiny_spec(tmp_path, run_id="crash-mid", limit=64,   # 4 steps of 16
                          checkpoint=CheckpointPolicy(interval_steps=2, keep=2))
    release = threading.Event()
    real_put = LocalBucket.put_file

    def put_file(self, key, path, *a, **kw):
        if "/checkpoints/step-00000002/" in key:
            release.wait(60)
        return real_put(self, key, path, *a, **kw)

    class CrashInStep3(Trainer):
        def train_step(self):
            if self.progress.step == 2:
                raise RuntimeError("injected failure in step 3")
            return super().train_step()

    monkeypatch.setattr(LocalBucket, "put_file", put_file)
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    sigterm_before = signal.getsignal(signal.SIGTERM)
    try:
        trainer = CrashInStep3(uri, TrainerOptions(local_root=str(tmp_path / "node"),
                                                   metrics_flush_seconds=3600))
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match="injected failure in step 3"):
            try:
                trainer.train()
            finally:
                trainer.close()
        assert time.monotonic() - t0 < 30  # close() did not wait for the held upload
        assert signal.getsignal(signal.SIGTERM) is sigterm_before
        release.set()
        assert trainer.checkpointer.wait(timeout=60)  # the abandoned save has finished
    finally:
        release.set()
        if dist.is_initialized():
            dist.destroy_process_group()

    bucket = open_bucket(spec.bucket_uri)
    assert list_checkpoints(bucket, spec.run_id) == {2: False}  # uploaded in part, no COMMIT
    seg = read_ledger(bucket, spec.run_id).segments[-1]
    assert seg.end_reason == "failed" and seg.end_time is not None and seg.last_step == 2
    recs = read_metrics(spec.bucket_uri, spec.run_id)
    assert [m["step"] for m in recs if "loss" in m] == [1, 2]
    assert recs[-1]["event"] == "failed" and recs[-1]["step"] == 2


def test_a_failure_while_starting_up_still_stops_the_watcher(tmp_path, monkeypatch):
    """Construction fails after the preemption watcher started (reading metrics.jsonl
    hits a storage outage: the outer edge): the Trainer closes what it started before
    raising, so no SIGTERM handler of a half-built trainer is left behind."""
    import signal

    import torch.distributed as dist

    from train.trainer import Trainer, TrainerOptions
    from vicuna_cloud.ledger import read_ledger
    from vicuna_cloud.storage import StorageError
    from vicuna_cloud.storage.local import LocalBucket

    spec, uri = tiny_spec(tmp_path, run_id="start-fails", limit=16)
    real_get = LocalBucket.get_bytes

    def get_bytes(self, key, *a, **kw):
        if key.endswith("metrics.jsonl"):
            raise StorageError(f"{key}: injected outage")
        return real_get(self, key, *a, **kw)

    monkeypatch.setattr(LocalBucket, "get_bytes", get_bytes)
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    sigterm_before = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(StorageError, match="injected outage"):
            Trainer(uri, TrainerOptions(local_root=str(tmp_path / "node")))
        assert signal.getsignal(signal.SIGTERM) is sigterm_before
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    assert read_ledger(open_bucket(spec.bucket_uri), spec.run_id).segments == []
