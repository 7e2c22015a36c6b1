"""`vicuna-cloud chat`: finds a run's export in the bucket and generates through the template.

A tiny randomly initialised LlamaForCausalLM stands in for a trained export here (the
end-to-end tests chat with a really trained one); what is checked is the plumbing: the
CLI's reply must equal greedy generation on the Vicuna prompt computed in this test.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import pytest

from vicuna_cloud.recipes import get_preset
from vicuna_cloud.run_store import spec_from_preset, write_run_spec
from vicuna_cloud.storage import open_bucket
from vicuna_cloud.templates import get_template

RUN = "chat-test-run"


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from vicuna_cloud.tokenizer import load_tokenizer

    out = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    cfg = LlamaConfig(**get_preset("tiny").arch.as_llama_config())
    LlamaForCausalLM(cfg).save_pretrained(out)
    load_tokenizer("builtin:llama-sp").save_pretrained(out)
    return str(out)


@functools.lru_cache(maxsize=None)
def expected_reply(model_dir: str, message: str, n: int) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    text = get_template("vicuna_v1.1").prompt([{"from": "human", "value": message}])
    enc = tok(text, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=n, do_sample=False,
                             pad_token_id=tok.eos_token_id)
    return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True) \
        .split("</s>")[0].strip()


def publish(bucket_uri: str, export_dir: str) -> None:
    b = open_bucket(bucket_uri)
    spec = spec_from_preset(get_preset("tiny"), run_id=RUN, dataset_uri=f"{bucket_uri}/datasets/x",
                            dataset_sha256=None, bucket_uri=bucket_uri, cloud="local")
    write_run_spec(b, spec)
    from train.export import upload_dir  # the trainer's writer: files, then EXPORT.json

    upload_dir(b, export_dir, f"runs/{RUN}/final", step=1)


def cli(*args, env=None):
    # Wide columns: rich wraps piped output at 80 columns, which would split the one line.
    env = dict(env or os.environ, COLUMNS="400")
    return subprocess.run([sys.executable, "-m", "vicuna_cloud", *args], capture_output=True,
                          text=True, timeout=300, env=env)


@pytest.mark.slow  # a real model generating in a subprocess
@pytest.mark.parametrize("bucket_uri", ["local", "s3"], indirect=True)
def test_chat_prompt_matches_greedy_generation(bucket_uri, export_dir, tmp_path):
    publish(bucket_uri, export_dir)
    env = dict(os.environ, VICUNA_CLOUD_HOME=str(tmp_path / "home"))
    r = cli("chat", RUN, "--bucket", bucket_uri, "--prompt", "What is a queue?",
            "--max-new-tokens", "8", env=env)
    assert r.returncode == 0, r.stderr
    expected = expected_reply(export_dir, "What is a queue?", 8)
    assert r.stdout.strip() == expected
    if bucket_uri.startswith("s3://"):  # downloaded next to the run's local files
        assert os.path.isfile(tmp_path / "home" / "local" / RUN / "final" / "config.json")
    # Without --bucket, the machine's launch index says where the run lives.
    from vicuna_cloud import run_index as index

    os.environ["VICUNA_CLOUD_HOME"], saved = str(tmp_path / "home"), os.environ["VICUNA_CLOUD_HOME"]
    try:
        index.record(index.RunRecord(run_id=RUN, bucket_uri=bucket_uri, backend="local"))
    finally:
        os.environ["VICUNA_CLOUD_HOME"] = saved
    r = cli("chat", RUN, "--prompt", "What is a queue?", "--max-new-tokens", "8", env=env)
    assert r.returncode == 0 and r.stdout.strip() == expected, r.stderr


@pytest.mark.slow  # a real model generating in a subprocess
def test_chat_interactive_loop_keeps_the_conversation(export_dir):
    r = subprocess.run([sys.executable, "-m", "train.generate", "--model", export_dir,
                        "--max-new-tokens", "4"], input="Hello\nAnd then?\nexit\n",
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and lines[0] == expected_reply(export_dir, "Hello", 4)


@pytest.mark.slow  # two CLI child processes: seconds
def test_chat_unknown_run_is_a_one_line_error(local_bucket_uri):
    r = cli("chat", "no-such-run", "--bucket", local_bucket_uri, "--prompt", "hi")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "no run 'no-such-run'" in r.stderr
    r = cli("chat", "Bad/Id", "--prompt", "hi")
    assert r.returncode == 2 and "neither a run id nor a directory" in r.stderr
