"""Packed-row attention (train/attention.py): documents in one row give exactly what each
document gives alone (outputs and gradients), the CUDA selection never reaches a dense
[T, T] mask, and the FlexAttention block mask built on the host is the document mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from vicuna_cloud.recipes import TINY

from train import attention, batching, model as model_lib
from train.loss import micro_batch_loss
from train.masking import IGNORE, Example

LENS = [37, 90, 13]          # three documents in one packed row of T = 140 tokens
T = sum(LENS)

# FlexAttention is compiled on the CPU (seconds for a process' first call): `make test`,
# not test-fast.
pytestmark = pytest.mark.slow


def tiny(impl: str, seed: int = 0, **over):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**{**TINY.as_llama_config(), **over})
    cfg._attn_implementation = impl
    cfg.use_cache = False  # as the trainer: with a cache transformers ignores packing
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).float()


def ours(**over):
    model_lib.attn_implementation(torch.device("cpu"))  # registers the implementation
    return tiny(attention.IMPL, **over)


def row(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 32000, (1, T), generator=g)
    pos = torch.cat([torch.arange(n) for n in LENS]).unsqueeze(0)
    return ids, pos


def assert_grads_close(a, b, name):
    """Equal to fp32 rounding: the largest difference under 1e-5 of the largest entry
    (elementwise rtol fails on entries near 0 of a tensor whose entries reach ~500)."""
    err = (a - b).abs().max().item()
    assert err <= 1e-5 * b.abs().max().item(), f"{name}: max |diff| {err}"


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kv_heads", [4, 2])  # plain and grouped-query attention
def test_packed_row_equals_each_document_alone_outputs_and_gradients(kv_heads):
    model = ours(num_key_value_heads=kv_heads)
    ids, pos = row()
    w = torch.randn(T, 32000, generator=torch.Generator().manual_seed(2))
    layout = attention.PackedLayout([LENS], T)
    packed = model(input_ids=ids, position_ids=pos, packed_layout=layout).logits[0]
    (packed * w).sum().backward()
    g_packed = grads(model)

    model.zero_grad(set_to_none=True)
    alone, s = [], 0
    for n in LENS:
        out = model(input_ids=ids[:, s:s + n], position_ids=torch.arange(n)[None],
                    packed_layout=attention.PackedLayout([[n]], n)).logits[0]
        (out * w[s:s + n]).sum().backward()  # gradients accumulate over the documents
        alone.append(out.detach())
        s += n
    g_alone = grads(model)
    torch.testing.assert_close(packed.detach(), torch.cat(alone), rtol=1e-5, atol=1e-5)
    assert g_packed.keys() == g_alone.keys() and len(g_packed) > 10
    for name in g_alone:
        assert_grads_close(g_packed[name], g_alone[name], name)

    # And the same as transformers' own SDPA on each document alone (same weights).
    ref = tiny("sdpa", num_key_value_heads=kv_heads)
    s = 0
    for n, out in zip(LENS, alone):
        r = ref(input_ids=ids[:, s:s + n], position_ids=torch.arange(n)[None]).logits[0]
        torch.testing.assert_close(out, r.detach(), rtol=1e-5, atol=1e-5)
        s += n


def test_control_without_the_layout_documents_would_mix():
    """The equality above is not vacuous: one document of T tokens differs."""
    model = ours()
    ids, pos = row()
    with torch.no_grad():
        a = model(input_ids=ids, position_ids=pos,
                  packed_layout=attention.PackedLayout([LENS], T)).logits
        b = model(input_ids=ids, position_ids=pos,
                  packed_layout=attention.PackedLayout([[T]], T)).logits
    assert not torch.allclose(a[0, LENS[0]:], b[0, LENS[0]:], atol=1e-3)
    torch.testing.assert_close(a[0, :LENS[0]], b[0, :LENS[0]])  # the first is causal anyway


class Ops(TorchDispatchMode):
    """Records every op and the trailing shape of every tensor it returns."""

    def __init__(self):
        super().__init__()
        self.names: list[str] = []
        self.square = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.names.append(str(func.overloadpacket))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.dim() >= 2 and tuple(t.shape[-2:]) == (T, T):
                self.square += 1
        return out


def test_cuda_selection_builds_no_dense_mask(monkeypatch):
    """What CUDA would run, with the device faked only where the choice is made
    (model.attn_implementation and attention.select_kernel): the registered implementation,
    the varlen op; transformers' mask builders are never called and no [T, T] tensor
    exists anywhere in forward or backward."""
    cuda = torch.device("cuda")
    assert model_lib.attn_implementation(cuda) == attention.IMPL
    assert attention.select_kernel(cuda, torch.bfloat16) == "varlen"
    assert attention.select_kernel(cuda, torch.float32) == "flex"
    import transformers.masking_utils as mu

    called = []
    for name in ("sdpa_mask", "eager_mask", "flex_attention_mask", "find_packed_sequence_indices"):
        fn = getattr(mu, name)
        monkeypatch.setattr(mu, name, lambda *a, _n=name, _f=fn, **k: called.append(_n) or _f(*a, **k))
    monkeypatch.setattr(mu.ALL_MASK_ATTENTION_FUNCTIONS, "_global_mapping", {
        k: (lambda *a, _k=k, _f=f, **kw: called.append(_k) or _f(*a, **kw))
        for k, f in mu.ALL_MASK_ATTENTION_FUNCTIONS._global_mapping.items()})

    model = ours()
    ids, pos = row()
    layout = attention.PackedLayout([LENS], T, kernel=attention.select_kernel(cuda, torch.bfloat16))
    with Ops() as ops:
        model(input_ids=ids, position_ids=pos, packed_layout=layout).logits.sum().backward()
    assert called == []
    assert ops.names.count("torch_attn._varlen_attn") == TINY.n_layers
    assert ops.names.count("torch_attn._varlen_attn_backward") == TINY.n_layers
    assert not any("scaled_dot_product" in n for n in ops.names)
    assert ops.square == 0

    # Control: transformers' sdpa path on the same row does build the dense mask.
    with Ops() as dense_ops:
        tiny("sdpa")(input_ids=ids, position_ids=pos).logits.sum().backward()
    assert dense_ops.square > 0


def test_flex_block_mask_forward_equals_varlen_and_skips_tiles():
    """FlexAttention (CUDA's fp32 kernel) with the host-built BlockMask, forward only:
    torch 2.13 has no FlexAttention backward on CPU."""
    lens = [300, 5, 200, 107]  # crosses 128-token tiles, one document inside a tile
    t = sum(lens)
    q, k, v = (torch.randn(1, 4, t, 16, generator=torch.Generator().manual_seed(i))
               for i in range(3))
    flex, _ = attention.packed_forward(None, q, k, v, None, packed_layout=attention.PackedLayout(
        [lens], t, kernel="flex"))
    var, _ = attention.packed_forward(None, q, k, v, None, packed_layout=attention.PackedLayout(
        [lens], t, kernel="varlen"))
    torch.testing.assert_close(flex, var, rtol=1e-5, atol=1e-5)
    bm = attention.block_mask([lens], t, torch.device("cpu"))
    n = -(-t // attention.BLOCK)
    visited = int(bm.kv_num_blocks.sum() + bm.full_kv_num_blocks.sum())
    assert visited < n * (n + 1) // 2  # fewer than even a causal mask's tiles


def test_block_structure_matches_the_dense_document_mask():
    rng = np.random.default_rng(0)
    for _ in range(30):
        rows = [list(rng.integers(1, 90, size=rng.integers(1, 6))) for _ in range(2)]
        t = max(sum(r) for r in rows) + int(rng.integers(0, 40))
        block = int(rng.choice([16, 32, 128]))
        doc = attention.document_ids(rows, t)
        i = np.arange(t)
        dense = (doc[:, :, None] == doc[:, None, :]) & (i[None, None, :] <= i[None, :, None])
        n = -(-t // block)
        pad = np.zeros((2, n * block, n * block), dtype=bool)
        valid = np.zeros((n * block, n * block), dtype=bool)
        pad[:, :t, :t] = dense
        valid[:t, :t] = True
        tile = lambda x: x.reshape(-1, n, block, n, block).transpose(0, 1, 3, 2, 4)  # noqa: E731
        any_ = tile(pad).any((-1, -2))
        all_ = (tile(pad) | ~tile(valid[None])).all((-1, -2))  # over real tokens only
        below = np.tril(np.ones((n, n), dtype=bool), k=-1)[None]
        partial, full = attention.block_structure(doc, block)
        assert not (partial & full).any()
        assert ((partial | full) >= any_).all()              # no attending pair skipped
        assert not (full & ~all_).any()                      # a full tile needs no mask
        assert (full == (all_ & any_ & below)).all()         # and every such tile is full


def example(ids, trained_from):
    tgt = [IGNORE] * len(ids)
    for j in range(trained_from, len(ids) - 1):
        tgt[j] = ids[j + 1]
    return Example(input_ids=ids, targets=tgt)


def test_trainer_loss_packed_equals_padded_under_the_packed_attention():
    """The loop's micro_batch_loss through the registered implementation: a packed row
    and padded rows of the same conversations give the same loss and gradients."""
    g = torch.Generator().manual_seed(5)
    exs = [example(torch.randint(3, 32000, (n,), generator=g).tolist(), n // 3)
           for n in (40, 71, 18, 55)]
    model = ours()

    def run(mbs):
        model.zero_grad(set_to_none=True)
        loss = sum(micro_batch_loss(model, mb) for mb in mbs)
        loss.backward()
        return float(loss), grads(model)

    l_pack, g_pack = run(batching.packed_batches(exs, budget=200))
    l_pad, g_pad = run(batching.padded_batches(exs, micro_batch_size=2, max_length=80))
    assert l_pack == pytest.approx(l_pad, rel=1e-5)
    for name in g_pad:
        assert_grads_close(g_pack[name], g_pad[name], name)


def test_without_a_layout_documents_come_from_position_ids():
    """Callers outside the trainer (tests, generation-free evaluation) pass no layout: the
    restarts of position_ids define the documents, as transformers does under sdpa."""
    model = ours()
    ids, pos = row()
    with torch.no_grad():
        given = model(input_ids=ids, position_ids=pos,
                      packed_layout=attention.PackedLayout([LENS], T)).logits
        inferred = model(input_ids=ids, position_ids=pos).logits
        plain = model(input_ids=ids).logits          # no positions: one causal sequence
        one = model(input_ids=ids, packed_layout=attention.PackedLayout([[T]], T)).logits
    torch.testing.assert_close(inferred, given)
    torch.testing.assert_close(plain, one)
    assert attention.layout_from_positions(pos, 1, T, torch.device("cpu")).rows == [LENS]
