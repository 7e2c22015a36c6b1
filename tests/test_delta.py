"""`vicuna-cloud delta make/apply`: the round trip rebuilds the target byte for byte, and a
wrong or damaged input is refused with one line and leaves nothing behind.

The models are small real safetensors files written by safetensors' own writer (a tiny
LLaMA state dict in bf16, a sharded target, fp32 and special float values), so the reader
here is checked against the reference format, not against itself.
"""

from __future__ import annotations

import filecmp
import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers.cli import run_cli
from vicuna_cloud.delta import MANIFEST, DeltaError, apply_delta, make_delta


def _state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = {
        "model.embed_tokens.weight": torch.randn(96, 16, generator=g).to(torch.bfloat16),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(16, 16, generator=g).to(torch.bfloat16),
        "model.layers.0.mlp.up_proj.weight": torch.randn(40, 16, generator=g).to(torch.bfloat16),
        "model.norm.weight": torch.ones(16, dtype=torch.bfloat16),
        "lm_head.weight": torch.randn(96, 16, generator=g).to(torch.bfloat16),
        "score.bias": torch.randn(7, generator=g),  # fp32
    }
    return s


def _save_model(d, state, shards: int = 1) -> None:
    os.makedirs(d, exist_ok=True)
    names = sorted(state)
    if shards == 1:
        save_file(state, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    else:
        per = -(-len(names) // shards)
        weight_map = {}
        for i in range(shards):
            part = {n: state[n] for n in names[i * per:(i + 1) * per]}
            fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            save_file(part, os.path.join(d, fname), metadata={"format": "pt"})
            weight_map.update({n: fname for n in part})
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump({"model_type": "llama", "hidden_size": 16}, f)


@pytest.fixture
def models(tmp_path):
    base = _state(0)
    target = {k: v.clone() for k, v in base.items()}
    g = torch.Generator().manual_seed(1)
    # Fine-tuned tensors: small updates, one left unchanged, special values in another.
    for k in ("model.layers.0.self_attn.q_proj.weight", "lm_head.weight", "score.bias"):
        target[k] = (target[k].float() + 0.01 * torch.randn(target[k].shape, generator=g)).to(target[k].dtype)
    up = target["model.layers.0.mlp.up_proj.weight"]
    up[0, :4] = torch.tensor([float("nan"), float("inf"), float("-inf"), -0.0], dtype=up.dtype)
    # Vocabulary grown by 4 tokens (as Vicuna v0 added a pad token): stored whole.
    target["model.embed_tokens.weight"] = torch.cat(
        [target["model.embed_tokens.weight"], torch.randn(4, 16, generator=g).to(torch.bfloat16)])
    target["model.extra_adapter.weight"] = torch.randn(3, 16, generator=g).to(torch.bfloat16)
    _save_model(tmp_path / "base", base)
    _save_model(tmp_path / "target", target, shards=2)
    with open(tmp_path / "target" / "tokenizer_config.json", "w") as f:
        json.dump({"chat_template": "{{ bos_token }}..."}, f)
    return tmp_path


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64, 1: torch.uint8}[t.element_size()])


def test_round_trip_is_byte_for_byte(models, capsys, monkeypatch):
    base, target = str(models / "base"), str(models / "target")
    r = run_cli(capsys, monkeypatch, "delta", "make", "--base", base, "--target", target,
                "--out", str(models / "delta"), "--json")
    assert r.code == 0, r.err
    made = json.loads(r.out)
    assert made["tensors"] == 7 and made["delta_tensors"] == 5
    assert made["full_tensors"] == ["model.embed_tokens.weight", "model.extra_adapter.weight"]
    manifest = json.loads((models / "delta" / MANIFEST).read_text())
    assert set(manifest["target"]["files"]) == {"model-00001-of-00002.safetensors",
                                                "model-00002-of-00002.safetensors"}
    # The delta of an unchanged tensor is all zeros; of a changed one, not.
    d = load_file(str(models / "delta" / manifest["target"]["tensors"]["model.norm.weight"]["file"]))
    assert d["model.norm.weight"].dtype == torch.uint16 and not d["model.norm.weight"].any()
    d2 = load_file(str(models / "delta" / manifest["target"]["tensors"]["lm_head.weight"]["file"]))
    assert d2["lm_head.weight"].any()

    r = run_cli(capsys, monkeypatch, "delta", "apply", "--base", base, "--delta",
                str(models / "delta"), "--out", str(models / "rebuilt"), "--json")
    assert r.code == 0, r.err
    rebuilt = models / "rebuilt"
    for name in os.listdir(target):  # every file, weights and tokenizer alike, identical
        assert filecmp.cmp(os.path.join(target, name), rebuilt / name, shallow=False), name
    assert sorted(os.listdir(rebuilt)) == sorted(os.listdir(target))
    # And read back by safetensors itself: equal bit patterns, NaN and -0.0 included.
    for name in [n for n in os.listdir(target) if n.endswith(".safetensors")]:
        want, got = load_file(os.path.join(target, name)), load_file(str(rebuilt / name))
        assert want.keys() == got.keys()
        for k in want:
            assert want[k].dtype == got[k].dtype and torch.equal(_bits(want[k]), _bits(got[k])), k


def test_small_chunks_stream_the_same_bytes(models):
    """Chunks far smaller than a tensor (and not dividing it) give the same files."""
    make_delta(str(models / "base"), str(models / "target"), str(models / "d1"), chunk_bytes=24)
    apply_delta(str(models / "base"), str(models / "d1"), str(models / "t1"), chunk_bytes=40)
    for name in os.listdir(models / "target"):
        assert filecmp.cmp(models / "target" / name, models / "t1" / name, shallow=False)


def test_wrong_base_is_refused_and_nothing_is_left(models, capsys, monkeypatch):
    make_delta(str(models / "base"), str(models / "target"), str(models / "delta"))
    _save_model(models / "other", _state(7))  # same names and shapes, other values
    r = run_cli(capsys, monkeypatch, "delta", "apply", "--base", str(models / "other"),
                "--delta", str(models / "delta"), "--out", str(models / "rebuilt"))
    assert r.code == 2
    assert r.err.strip().count("\n") == 0
    assert "is not the base of this delta" in r.err and "holds other values" in r.err
    assert not (models / "rebuilt").exists()
    assert not [n for n in os.listdir(models) if ".partial-" in n]

    shapes = _state(0)
    shapes["lm_head.weight"] = shapes["lm_head.weight"][:50]
    _save_model(models / "shaped", shapes)
    r = run_cli(capsys, monkeypatch, "delta", "apply", "--base", str(models / "shaped"),
                "--delta", str(models / "delta"), "--out", str(models / "rebuilt"))
    assert r.code == 2 and "'lm_head.weight' is BF16[50, 16] there" in r.err


def test_damaged_delta_and_bad_paths_are_one_line_errors(models, capsys, monkeypatch):
    make_delta(str(models / "base"), str(models / "target"), str(models / "delta"))
    manifest = json.loads((models / "delta" / MANIFEST).read_text())
    victim = models / "delta" / manifest["target"]["tensors"]["lm_head.weight"]["file"]
    raw = bytearray(victim.read_bytes())
    raw[-3] ^= 0x40  # one bit in the last tensor's data
    victim.write_bytes(bytes(raw))
    with pytest.raises(DeltaError, match="damaged"):
        apply_delta(str(models / "base"), str(models / "delta"), str(models / "rebuilt"))
    assert not (models / "rebuilt").exists()

    cases = [
        (["make", "--base", str(models / "nope"), "--target", str(models / "target"),
          "--out", str(models / "x")], "no such directory"),
        (["make", "--base", str(models / "base"), "--target", str(models / "target"),
          "--out", str(models / "delta")], "already exists"),
        (["apply", "--base", str(models / "base"), "--delta", str(models / "target"),
          "--out", str(models / "y")], f"has no {MANIFEST}"),
    ]
    for args, needle in cases:
        r = run_cli(capsys, monkeypatch, "delta", *args)
        assert r.code == 2 and needle in r.err and r.err.strip().count("\n") == 0, r.err
