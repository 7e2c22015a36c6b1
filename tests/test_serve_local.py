"""The local OpenAI-compatible server (train/serve.py, started by vicuna_cloud.serving.local),
driven by the real `openai` client: replies equal transformers' greedy generation on the
training prompt (Vicuna template, BOS), streaming gives the same text, stop strings and EOS
end a reply without showing up in it, temperature and seed work, bad requests get OpenAI
errors, and it listens on 127.0.0.1 only."""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import subprocess
import sys
import time

import openai
import psutil
import pytest

from helpers.serve import RUN, make_export, publish
from vicuna_cloud.serving.local import LocalServer, free_port
from vicuna_cloud.templates import get_template

NAME = "tiny-export"
pytestmark = pytest.mark.slow  # a real model in a server subprocess


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return make_export(str(tmp_path_factory.mktemp("export")))


@pytest.fixture(scope="module")
def server(export_dir):
    srv = LocalServer(export_dir, "vicuna_v1.1", NAME)
    with srv as url:
        yield srv, openai.OpenAI(base_url=url, api_key="unused", max_retries=0)


@functools.lru_cache(maxsize=None)
def greedy(model_dir: str, turns: tuple, n: int, system: str | None = None) -> str:
    """What the server must answer: generate() on the exact training-format prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    template = get_template("vicuna_v1.1")
    if system is not None:
        template = dataclasses.replace(template, system=system)
    conv = [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(turns)]
    enc = tok(template.prompt(conv), return_tensors="pt")
    assert enc["input_ids"][0, 0].item() == tok.bos_token_id  # trained with BOS
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=n, do_sample=False,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def _msgs(turns, system=None):
    out = [{"role": "system", "content": system}] if system else []
    return out + [{"role": "user" if i % 2 == 0 else "assistant", "content": t}
                  for i, t in enumerate(turns)]


def test_reply_is_greedy_generation_on_the_training_prompt(server, export_dir):
    _, client = server
    assert [m.id for m in client.models.list().data] == [NAME]
    for turns, system in [(("What is a queue?",), None),
                          (("Hi", "Hello there.", "And then?"), "You are terse.")]:
        r = client.chat.completions.create(model=NAME, messages=_msgs(turns, system),
                                           max_tokens=12, temperature=0)
        assert r.choices[0].message.content == greedy(export_dir, turns, 12, system)
        assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 12
        assert r.usage.prompt_tokens > 10


def test_streaming_gives_the_same_reply(server, export_dir):
    _, client = server
    chunks = list(client.chat.completions.create(
        model=NAME, messages=_msgs(("What is a queue?",)), max_tokens=12, temperature=0,
        stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == greedy(export_dir, ("What is a queue?",), 12)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 12 and len(chunks) > 3


@pytest.mark.parametrize("stream", [False, True])
def test_a_stop_string_ends_the_reply_and_is_not_in_it(server, export_dir, stream):
    _, client = server
    full = greedy(export_dir, ("What is a queue?",), 12)
    words = full.split()
    stop = words[len(words) // 2]
    want = full[:full.find(stop)].strip()
    kwargs = dict(model=NAME, messages=_msgs(("What is a queue?",)), max_tokens=12,
                  temperature=0, stop=[stop])
    if stream:
        chunks = list(client.chat.completions.create(stream=True, **kwargs))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        reason = chunks[-1].choices[0].finish_reason
    else:
        r = client.chat.completions.create(**kwargs)
        text, reason = r.choices[0].message.content, r.choices[0].finish_reason
    assert text == want and stop not in text and reason == "stop"


def test_eos_ends_the_reply(export_dir, tmp_path):
    """Make the EOS token the model's most likely next token: the reply must end there,
    with finish_reason stop, and the EOS text must not appear. (The server's engine is
    driven in-process here, to spare a second server start.)"""
    from safetensors.torch import load_file, save_file

    from train.serve import ChatRequest, Engine, complete

    d = tmp_path / "eos-model"
    d.mkdir()
    for name in os.listdir(export_dir):
        if not name.endswith(".safetensors"):
            (d / name).write_bytes(open(os.path.join(export_dir, name), "rb").read())
    state = load_file(os.path.join(export_dir, "model.safetensors"))
    state["lm_head.weight"] = state["lm_head.weight"].clone()
    state["lm_head.weight"][2] = state["model.norm.weight"] * 50.0  # id 2 = </s> wins
    save_file({k: v.contiguous() for k, v in state.items()}, str(d / "model.safetensors"),
              metadata={"format": "pt"})
    engine = Engine(str(d), "vicuna_v1.1", "eos")
    r = complete(engine, ChatRequest(messages=[{"role": "user", "content": "Hi"}],
                                     max_tokens=20, temperature=0))
    assert r["choices"][0]["finish_reason"] == "stop" and r["usage"]["completion_tokens"] < 20
    assert "</s>" not in r["choices"][0]["message"]["content"]


def test_temperature_samples_and_the_seed_repeats(server):
    _, client = server

    def ask(**kw):
        return client.chat.completions.create(model=NAME, messages=_msgs(("Tell me a story",)),
                                              max_tokens=10, **kw).choices[0].message.content

    a, b, c = ask(temperature=1.0, seed=1), ask(temperature=1.0, seed=1), ask(temperature=1.0, seed=2)
    assert a == b and a != c
    assert ask(temperature=0) == ask(temperature=0, seed=5)


def test_bad_requests_get_openai_errors(server):
    _, client = server
    with pytest.raises(openai.NotFoundError, match="is not served here"):
        client.chat.completions.create(model="other", messages=_msgs(("hi",)))
    with pytest.raises(openai.BadRequestError, match="must alternate"):
        client.chat.completions.create(model=NAME, messages=[{"role": "assistant", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="context is 512"):
        client.chat.completions.create(model=NAME, messages=_msgs(("word " * 600,)))
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model=NAME, messages=_msgs(("hi",)), temperature=9)


def test_listens_on_loopback_only(server):
    srv, _ = server
    proc = psutil.Process(srv.proc.pid)
    listening = [c.laddr for p in [proc, *proc.children(recursive=True)]
                 for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert listening and all(addr.ip == "127.0.0.1" for addr in listening)


def test_serve_local_cli_serves_a_run_from_its_bucket(export_dir, local_bucket_uri, tmp_path):
    publish(local_bucket_uri, export_dir)
    port = free_port()
    env = dict(os.environ, VICUNA_CLOUD_HOME=str(tmp_path / "home"))
    proc = subprocess.Popen([sys.executable, "-m", "vicuna_cloud", "serve", RUN, "--local",
                             "--bucket", local_bucket_uri, "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        deadline = time.monotonic() + 120
        while True:
            try:
                assert [m.id for m in client.models.list().data] == [RUN]
                break
            except openai.APIConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
                time.sleep(0.5)
        r = client.chat.completions.create(model=RUN, messages=_msgs(("What is a queue?",)),
                                           max_tokens=12, temperature=0)
        assert r.choices[0].message.content == greedy(export_dir, ("What is a queue?",), 12)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
    r = subprocess.run([sys.executable, "-m", "vicuna_cloud", "serve", "no-such-run", "--local",
                        "--bucket", local_bucket_uri], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "no run 'no-such-run'" in r.stderr
