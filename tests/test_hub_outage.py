"""Issue 14 ("exit codes that say the truth"): a Hugging Face hub outage while fetching a
base model or tokenizer is transient (exit 69, the managed job retries), not a config
error (78, never retried); only an input wrong on its face (no such repo, a gated repo
without a token) is a config error.

The hub is the true outer edge here: HF_ENDPOINT points at a port held bound but never
listening (every connection refused) or at a tiny local server that answers 503, 404
(RepoNotFound) or 403 (GatedRepo) the way the hub does. Everything else is real: the
trainer under torchrun (2 ranks, so rank 1 must not hang while rank 0 fails), its
exit-code file, huggingface_hub's own client and retries.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from vicuna_cloud.exit_codes import EXIT_CONFIG, EXIT_TRANSIENT
from vicuna_cloud.run_store import write_run_spec
from vicuna_cloud.storage import open_bucket

from helpers.local_http import LocalHTTPService
from helpers.train import REPO, tiny_spec, torchrun_train

pytestmark = pytest.mark.slow  # torchrun


class FakeHub(LocalHTTPService):
    """Answers every request with one status and the hub's X-Error-Code header."""

    def __init__(self, status: int, error_code: str = ""):
        self.status, self.error_code, self.requests = status, error_code, 0

    def _handler_class(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                hub.requests += 1
                body = json.dumps({"error": f"{hub.status} {hub.error_code}"}).encode()
                self.send_response(hub.status)
                if hub.error_code:
                    self.send_header("X-Error-Code", hub.error_code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = _answer

            def log_message(self, *args):
                pass

        return Handler


def _hub_spec(tmp_path: Path, *, base: str = "builtin-test/base",
              tokenizer: str | None = None) -> str:
    """The tiny run, but its base model (or tokenizer) a hub id: run.json URI."""
    spec, _ = tiny_spec(tmp_path / "seed", run_id="hub-run", limit=16)
    model = spec.model.model_copy(update={"base_model": base,
                                          "tokenizer": tokenizer or spec.model.tokenizer})
    bucket = str(tmp_path / "bucket")
    spec = spec.model_copy(update={"model": model, "bucket_uri": bucket})
    return write_run_spec(open_bucket(bucket), spec)


def _train(tmp_path: Path, run_uri: str, endpoint: str) -> tuple[int, str]:
    """(the trainer's own exit code, stderr+stdout) with the hub at ``endpoint``."""
    code_file = tmp_path / "exit-code"
    env = {"HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf"),  # nothing cached
           "HF_HUB_OFFLINE": "0", "HF_HUB_ETAG_TIMEOUT": "2", "HF_HUB_DOWNLOAD_TIMEOUT": "2",
           "VICUNA_EXIT_CODE_FILE": str(code_file)}
    r = torchrun_train(run_uri, local_root=str(tmp_path / "node"), env=env, timeout=300)
    assert r.returncode != 0, r.stdout[-2000:] + r.stderr[-2000:]
    return int(code_file.read_text()), r.stdout + r.stderr


def _rank0_error(out: str) -> str:
    return next((ln for ln in out.splitlines() if ln.startswith("error:")), "")


def test_hub_connection_refused_for_the_base_model_is_transient(tmp_path):
    """Before: resolve_model_dir turned every hub error into a ConfigError (exit 78)."""
    uri = _hub_spec(tmp_path)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as dead:  # bound, never listening
        dead.bind(("127.0.0.1", 0))
        code, out = _train(tmp_path, uri, f"http://127.0.0.1:{dead.getsockname()[1]}")
    assert code == EXIT_TRANSIENT, out[-3000:]
    line = _rank0_error(out)
    assert "base model 'builtin-test/base'" in line and "unreachable" in line, out[-3000:]
    assert "ConnectError" in line and "not your input" in line


def test_hub_503_for_the_tokenizer_is_transient(tmp_path):
    """Before: load_tokenizer's OSError from transformers was TokenizerNotFound (exit 78)."""
    uri = _hub_spec(tmp_path, tokenizer="builtin-test/tok")
    with FakeHub(503) as hub:
        code, out = _train(tmp_path, uri, hub.url)
    assert code == EXIT_TRANSIENT, out[-3000:]
    assert hub.requests >= 1  # it did ask the hub
    line = _rank0_error(out)
    assert "tokenizer 'builtin-test/tok'" in line and "503" in line, out[-3000:]


_CLASSIFY = """
import json, sys
from vicuna_cloud.hub import HubInputError, HubUnavailable, snapshot
from vicuna_cloud.tokenizer import TokenizerNotFound, load_tokenizer
try:
    load_tokenizer(sys.argv[1]) if sys.argv[2] == "tokenizer" else snapshot(sys.argv[1], ["*.json"])
except (HubUnavailable, HubInputError, TokenizerNotFound) as e:
    print(json.dumps([type(e).__name__, str(e)]))
"""


def _classify(tmp_path: Path, endpoint: str, name: str, kind: str) -> tuple[str, str]:
    env = dict(os.environ, HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf"),
               HF_HUB_OFFLINE="0")
    r = subprocess.run([sys.executable, "-c", _CLASSIFY, name, kind], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.stdout.strip(), r.stderr[-2000:]
    kind_, msg = json.loads(r.stdout.strip().splitlines()[-1])
    return kind_, msg


@pytest.mark.parametrize("status,error_code,words", [
    (404, "RepoNotFound", "Repository Not Found"),
    (403, "GatedRepo", "gated repository"),
])
def test_a_wrong_or_gated_repo_is_still_a_config_error(tmp_path, status, error_code, words):
    """Wrong on its face: a config error (the trainer maps it to exit 78), asked once, and
    the message says how to fix it; the tokenizer loader says the same."""
    with FakeHub(status, error_code) as hub:
        kind, msg = _classify(tmp_path, hub.url, "builtin-test/base", "model")
        assert hub.requests == 1  # not retried: it is the input
        tkind, tmsg = _classify(tmp_path, hub.url, "builtin-test/tok", "tokenizer")
    assert kind == "HubInputError" and words in msg and "HF_TOKEN" in msg, msg
    assert tkind == "TokenizerNotFound" and "cannot load tokenizer 'builtin-test/tok'" in tmsg
    assert words in tmsg and "\n" not in tmsg
    from train.inputs import CONFIG_ERRORS  # how the trainer's exit code 78 is chosen
    from vicuna_cloud.tokenizer import TokenizerNotFound
    assert issubclass(TokenizerNotFound, CONFIG_ERRORS)


def test_the_data_pipeline_names_a_hub_outage_in_one_line(tmp_path):
    """The control plane's tokenizer loader (data prepare) says the hub is down, not that
    the tokenizer name is wrong."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as dead:
        dead.bind(("127.0.0.1", 0))
        kind, msg = _classify(tmp_path, f"http://127.0.0.1:{dead.getsockname()[1]}",
                              "builtin-test/tok", "tokenizer")
    assert kind == "HubUnavailable", msg
    assert msg.startswith("cannot fetch tokenizer 'builtin-test/tok'") and "\n" not in msg
