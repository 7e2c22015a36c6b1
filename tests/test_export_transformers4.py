"""The export loads in transformers 4.x, which most serving stacks still pin: a real 4.x
release from PyPI in its own virtual environment (cached across sessions) reads the
config (rope scaling included), the tokenizer and the chat template, and computes the same
logits as transformers 5.x here; its apply_chat_template ids equal the training ids."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from vicuna_cloud.recipes import TINY
from vicuna_cloud.templates import TEMPLATES, to_messages
from vicuna_cloud.tokenizer import load_tokenizer

from conftest import DUMMY_CONVERSATIONS

pytestmark = pytest.mark.slow

TRANSFORMERS4 = "4.57.6"
TORCH = "2.13.0"  # the CPU wheel this machine carries (the venv needs torch to load a model)

CHILD = r"""
import json, sys, torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, __version__
d, conv = sys.argv[1], json.loads(sys.argv[2])
cfg = AutoConfig.from_pretrained(d)
tok = AutoTokenizer.from_pretrained(d)
ids = tok.apply_chat_template(conv, tokenize=True)
ids = list(ids["input_ids"] if isinstance(ids, dict) else ids)
model = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32).eval()
pos = torch.arange(1500).unsqueeze(0)  # past the base context (512): scaling matters
x = (torch.arange(1500) * 7919 % 31000 + 3).unsqueeze(0)
with torch.no_grad():
    logits = model(input_ids=x, position_ids=pos).logits[0, -8:].tolist()
print(json.dumps({"version": __version__, "rope_scaling": cfg.rope_scaling,
                  "rope_theta": cfg.rope_theta, "torch_dtype": str(cfg.torch_dtype),
                  "rope_type": model.model.rotary_emb.rope_type, "ids": ids,
                  "bos": tok.bos_token, "logits": logits}))
"""


def transformers4_python() -> Path:
    """``python`` of a venv holding transformers 4.x (built once, then reused; locked)."""
    root = Path(os.environ.get("VICUNA_TF4_VENV_DIR")
                or Path(tempfile.gettempdir()) / f"vicuna-cloud-transformers-{TRANSFORMERS4}")
    root.mkdir(parents=True, exist_ok=True)
    py, marker = root / "venv" / "bin" / "python", root / "ready"
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not marker.exists():
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(root / "venv")],
                           check=True)
            env = dict(os.environ, PIP_CONSTRAINT="")  # this machine's pins are for 5.x
            proc = subprocess.run(
                [str(py), "-m", "pip", "install", "-q", f"torch=={TORCH}",
                 f"transformers=={TRANSFORMERS4}", "safetensors"],
                env=env, capture_output=True, text=True, timeout=1200)
            if proc.returncode != 0:
                pytest.skip(f"cannot install transformers {TRANSFORMERS4} from the package "
                            f"index: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
            marker.write_text(TRANSFORMERS4)
    return py


def test_transformers4_loads_the_export_with_rope_scaling(tmp_path):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from train.export import save_hf_dir
    from train.masking import tokenize_conversation
    from train.model import apply_rope_scaling

    cfg = LlamaConfig(**TINY.as_llama_config())
    apply_rope_scaling(cfg, 4.0)  # v1.5-16k's linear x4
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    tok = load_tokenizer("builtin:llama-sp")
    out = tmp_path / "export"
    save_hf_dir(model.state_dict(), cfg, tok, "vicuna_v1.1", str(out), dtype="bf16")
    conv = next(c for c in (r["conversations"] for r in json.loads(
        DUMMY_CONVERSATIONS.read_text())) if len(c) >= 4)

    py = transformers4_python()
    proc = subprocess.run([str(py), "-c", CHILD, str(out), json.dumps(to_messages(conv))],
                          capture_output=True, text=True, timeout=300,
                          env={"PATH": os.environ["PATH"], "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["version"].startswith("4.")
    assert got["rope_scaling"]["factor"] == 4.0 and got["rope_type"] == "linear"
    assert got["rope_theta"] == 10000.0 and got["torch_dtype"] == "torch.bfloat16"
    trained = list(tokenize_conversation(tok, TEMPLATES["vicuna_v1.1"], conv, 10**6).input_ids)
    assert got["ids"] == trained and got["bos"] == "<s>"

    # Same weights, same positions, in transformers 5.x here: the same logits. Without the
    # scaling they differ, so the comparison would catch a dropped rope_scaling.
    here = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    pos = torch.arange(1500).unsqueeze(0)
    x = (torch.arange(1500) * 7919 % 31000 + 3).unsqueeze(0)
    with torch.no_grad():
        ref = here(input_ids=x, position_ids=pos).logits[0, -8:]
        unscaled_cfg = LlamaConfig.from_pretrained(out)
        unscaled_cfg.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
        plain = LlamaForCausalLM(unscaled_cfg).eval()
        plain.load_state_dict(here.state_dict())
        wrong = plain(input_ids=x, position_ids=pos).logits[0, -8:]
    torch.testing.assert_close(torch.tensor(got["logits"]), ref, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(wrong, ref, atol=1e-3)
