"""Single-process checks of the trainer's parts: packed == padded (loss and gradients),
RoPE scaling rule, data order and resume position, optimizer groups and lr schedule."""

from __future__ import annotations

import json
import math

import pytest
import torch

from vicuna_cloud.recipes import TINY
from vicuna_cloud.runspec import Hyperparameters, rope_factor_for
from vicuna_cloud.templates import TEMPLATES
from vicuna_cloud.tokenizer import load_tokenizer

from conftest import DUMMY_CONVERSATIONS
from train import batching, optim
from train.loss import micro_batch_loss
from train.masking import TokenStore, tokenize_conversation
from train.sampler import GlobalBatchSampler, epoch_permutation, total_steps


@pytest.fixture(scope="module")
def examples():
    tok = load_tokenizer("builtin:llama-sp")
    convs = [r["conversations"] for r in json.loads(DUMMY_CONVERSATIONS.read_text())]
    # Mixed lengths (57-128 tokens), some truncated at 100.
    picked = [convs[i] for i in (0, 3, 17, 40, 77, 101, 150, 222, 333)]
    return [tokenize_conversation(tok, TEMPLATES["vicuna_v1.1"], c, 100) for c in picked]


def tiny_model(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(**TINY.as_llama_config())
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).float()


def loss_and_grads(model, mbs, n_trained):
    model.zero_grad(set_to_none=True)
    total = 0.0
    for mb in mbs:
        ce = micro_batch_loss(model, mb)
        (ce / n_trained).backward()
        total += float(ce.detach())
    return total / n_trained, {n: p.grad.clone() for n, p in model.named_parameters()}


def test_packed_and_padded_give_the_same_loss_and_gradients(examples):
    model = tiny_model()
    n = sum(e.n_trained for e in examples)
    assert any(e.truncated for e in examples) and len({len(e) for e in examples}) > 3
    padded = batching.padded_batches(examples, micro_batch_size=2, max_length=100)
    # Packed from the flat TokenStore the trainer uses (numpy views), padded from lists.
    store = TokenStore.from_examples(examples)
    packed = batching.packed_batches([store[i] for i in range(len(store))], budget=300)
    assert len(packed) < len(examples) and max(len(mb.seq_lens) for mb in packed) > 1
    assert sum(mb.n_trained for mb in packed) == sum(mb.n_trained for mb in padded) == n
    l_pad, g_pad = loss_and_grads(model, padded, n)
    l_pack, g_pack = loss_and_grads(model, packed, n)
    assert l_pack == pytest.approx(l_pad, rel=1e-5)
    for name in g_pad:
        torch.testing.assert_close(g_pack[name], g_pad[name], rtol=1e-4, atol=1e-6, msg=name)
    # Micro-batch boundaries do not matter either (the loss is normalised per global batch).
    l_one, g_one = loss_and_grads(model, batching.padded_batches(examples, 5, 100), n)
    assert l_one == pytest.approx(l_pad, rel=1e-5)
    torch.testing.assert_close(g_one["model.embed_tokens.weight"],
                               g_pad["model.embed_tokens.weight"], rtol=1e-4, atol=1e-6)


def test_packing_without_position_restarts_would_differ(examples):
    """Control: the equality above is not vacuous; attention across samples changes it."""
    model = tiny_model()
    n = sum(e.n_trained for e in examples)
    packed = batching.packed_batches(examples, budget=300)
    l_pack, _ = loss_and_grads(model, packed, n)
    for mb in packed:
        mb.position_ids = torch.arange(mb.input_ids.shape[1]).unsqueeze(0)
    l_leaky, _ = loss_and_grads(model, packed, n)
    assert abs(l_leaky - l_pack) > 1e-4


def test_rope_scaling_rule_and_model():
    from transformers import LlamaConfig, LlamaForCausalLM
    from train.model import apply_rope_scaling

    assert rope_factor_for(2048, 2048) is None
    assert rope_factor_for(4096, 4096) is None
    assert rope_factor_for(3000, 2048) == 2.0
    assert rope_factor_for(16384, 4096) == 4.0     # Vicuna v1.5-16k
    assert rope_factor_for(16385, 4096) == 5.0
    base = LlamaConfig(**TINY.as_llama_config())
    scaled = LlamaConfig(**TINY.as_llama_config())
    apply_rope_scaling(scaled, 4.0)
    assert scaled.rope_parameters["rope_type"] == "linear"
    inv0 = LlamaForCausalLM(base).model.rotary_emb.inv_freq
    inv4 = LlamaForCausalLM(scaled).model.rotary_emb.inv_freq
    torch.testing.assert_close(inv4, inv0 / 4.0)


def test_rope_scaling_from_run_spec(tmp_path):
    from train.model import build_config
    from helpers.train import tiny_spec

    # tiny context is 512; packing needs micro_batch_tokens >= max_length (run spec check)
    spec, _ = tiny_spec(tmp_path, limit=4, max_length=1100, micro_batch_tokens=1100)
    assert spec.rope_scaling_factor == 3.0
    assert build_config(spec, None).rope_parameters["factor"] == 3.0
    spec, _ = tiny_spec(tmp_path / "b", limit=4)
    assert "factor" not in (build_config(spec, None).rope_parameters or {})


def test_sampler_walks_seeded_epochs_and_resumes_from_any_position():
    s = GlobalBatchSampler(n_samples=10, global_batch=4, epochs=2.5, seed=7)
    assert s.steps == total_steps(10, 2.5, 4) == math.ceil(25 / 4) == 7
    stream = [int(i) for e in range(3) for i in epoch_permutation(10, 7, e)][:25]
    got, pos = [], (0, 0)
    positions = []
    for step in range(s.steps):
        positions.append(pos)
        idx, e, o = s.batch(*pos, step)
        got.extend(idx)
        pos = (e, o)
    assert got == stream                      # last batch is short: 25 = 6 x 4 + 1
    assert sorted(stream[:10]) == list(range(10)) and stream[:10] != stream[10:20]
    # O(1) resume: a fresh sampler at a saved position yields the same batch.
    fresh = GlobalBatchSampler(10, 4, 2.5, 7)
    assert fresh.batch(*positions[5], 5)[0] == got[20:24]


def test_split_across_ranks_balances_tokens():
    lengths = [100, 90, 80, 10, 10, 10, 5, 5]
    parts = batching.split_across_ranks(range(8), lengths, 2)
    assert sorted(i for p in parts for i in p) == list(range(8))
    loads = [sum(lengths[i] for i in p) for p in parts]
    assert sorted(loads) == [140, 170]          # the best split: two of 100/90/80 must share


def test_no_weight_decay_on_norms_and_biases_and_lr_schedule():
    from vicuna_cloud.runspec import Hyperparameters

    model = tiny_model()
    opt = optim.build_optimizer(model, Hyperparameters(weight_decay=0.1))
    decay, plain = opt.param_groups
    assert decay["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decay["params"])
    n_norms = sum(1 for n, _ in model.named_parameters() if "norm" in n)
    assert len(plain["params"]) == n_norms > 0
    total, w = 100, optim.warmup_steps(100, 0.03)
    f = [optim.lr_factor(s, total, w) for s in range(total)]
    assert w == 3 and f[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert all(a >= b for a, b in zip(f[2:], f[3:])) and f[-1] < 0.01
    assert f[3 + 48] == pytest.approx(0.5 * (1 + math.cos(math.pi * 48 / 97)))


def test_mfu_figures_and_gpu_peaks():
    from train import metrics
    assert metrics.gpu_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert metrics.gpu_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert metrics.gpu_peak_tflops(None) is None and metrics.gpu_peak_tflops("Tesla T4") is None
    # 6N per token plus 12·L·H·(s+1)/2 per token of a length-s sample (the causal
    # per-document varlen kernel computes (s+1)/2 keys per query on average).
    attn = 12 * 2 * 8 * (3 * 2 + 5 * 3)
    assert metrics.step_flops(100, 2, 8, [3, 5]) == 6 * 100 * 8 + attn
    # LM head (40 of the 100 params) only at 3 trained positions.
    assert metrics.step_flops(100, 2, 8, [3, 5], 40, 3) == 6 * 60 * 8 + 6 * 40 * 3 + attn
    # The dense-mask path computes every key of its 8-token row for every token.
    assert metrics.step_flops(100, 2, 8, [3, 5], kernel="dense", row_tokens=8) == \
        6 * 100 * 8 + 12 * 2 * 8 * 8 * 8
    assert metrics.mfu(1e15, 1.0, 2, 1000.0) == pytest.approx(0.5)
    assert metrics.mfu(1e15, 1.0, 2, None) is None


def test_metrics_log_keeps_lines_up_to_the_resume_step(tmp_path):
    from train.metrics import MetricsLog
    from vicuna_cloud.storage import open_bucket

    bucket = open_bucket(str(tmp_path))
    log = MetricsLog(bucket, "runs/r", console=False, flush_seconds=0)
    for step in (1, 2, 3, 4):
        log.log({"step": step, "loss": 1.0 / step}, total_steps=10)
    log.close()
    # Resumed from a checkpoint at step 2: steps 3-4 were lost work and are dropped.
    again = MetricsLog(bucket, "runs/r", resume_step=2, console=False, flush_seconds=0)
    again.log({"step": 3, "loss": 0.25}, total_steps=10)
    again.close()
    lines = [json.loads(x) for x in bucket.get_bytes("runs/r/metrics.jsonl").decode().splitlines()]
    assert [(x["step"], x["loss"]) for x in lines] == [(1, 1.0), (2, 0.5), (3, 0.25)]


def test_metrics_upload_failure_does_not_stop_training(tmp_path):
    from train.metrics import MetricsLog
    from vicuna_cloud.storage import StorageError, open_bucket

    # The outage is injected at the bucket boundary (the outer edge): a real LocalBucket
    # whose uploads fail until told otherwise. tests/fault_proxy.py does the same for S3.
    class Flaky(type(open_bucket(str(tmp_path)))):
        fail = True

        def put_bytes(self, key, data):
            if Flaky.fail:
                raise StorageError("503 slow down")
            super().put_bytes(key, data)

    bucket = Flaky(open_bucket(str(tmp_path)).location)
    log = MetricsLog(bucket, "runs/r", console=False, flush_seconds=0)
    log.log({"step": 1, "loss": 2.0}, total_steps=2)      # upload fails: no exception
    assert not bucket.exists("runs/r/metrics.jsonl")
    Flaky.fail = False
    log.log({"step": 2, "loss": 1.0}, total_steps=2)
    log.close()
    assert len(bucket.get_bytes("runs/r/metrics.jsonl").decode().splitlines()) == 2


@pytest.mark.slow  # a slow bucket on purpose: seconds
def test_metrics_upload_does_not_hold_up_the_step(tmp_path):
    """Rank 0 re-uploads metrics.jsonl every flush interval; a slow object store must not
    stall the step (every other rank would wait for rank 0 in the next collective)."""
    import time

    from train.metrics import MetricsLog
    from vicuna_cloud.storage import open_bucket

    class Slow(type(open_bucket(str(tmp_path)))):  # a real LocalBucket, 1 s per upload
        def put_bytes(self, key, data):
            time.sleep(1.0)
            super().put_bytes(key, data)

    bucket = Slow(open_bucket(str(tmp_path)).location)
    log = MetricsLog(bucket, "runs/r", console=False, flush_seconds=0)
    t0 = time.monotonic()
    for step in range(1, 6):
        log.log({"step": step, "loss": 1.0 / step}, total_steps=5)
    assert time.monotonic() - t0 < 0.9
    log.close()  # waits for the uploads: everything is in the bucket afterwards
    lines = [json.loads(x) for x in bucket.get_bytes("runs/r/metrics.jsonl").decode().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4, 5]


def test_run_spec_refuses_a_packed_micro_batch_smaller_than_max_length():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="micro_batch_tokens 512 < max_length 1024"):
        Hyperparameters(max_length=1024, micro_batch_tokens=512)
    # Padded rows never hold more than one conversation: no token budget to fit.
    assert Hyperparameters(max_length=1024, micro_batch_tokens=512, batching="padded")
