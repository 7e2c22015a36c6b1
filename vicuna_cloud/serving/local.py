"""Starting the local OpenAI-compatible server (train/serve.py) from the control plane.

The server imports torch, so it always runs in its own process (``python -m train.serve``);
this module only starts it, waits until ``/health`` answers, and stops it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Optional

from vicuna_cloud.errors import BackendError, ConfigError

HOST = "127.0.0.1"


class ServeError(BackendError):
    """The local server could not be started; the message says why and what to do."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def server_command(model_dir: str, template: str, port: int, name: str) -> list[str]:
    if importlib.util.find_spec("torch") is None:
        raise ConfigError("the local server runs the model with torch: install the train extra "
                         "(pip install 'vicuna-cloud[train]')")
    return [sys.executable, "-m", "train.serve", "--model", model_dir, "--template", template,
            "--port", str(port), "--name", name]


class LocalServer:
    """``with LocalServer(dir, template, name) as url:`` -> ``http://127.0.0.1:PORT/v1``."""

    def __init__(self, model_dir: str, template: str, name: str, port: Optional[int] = None,
                 start_timeout_s: float = 600.0):
        self.cmd = server_command(model_dir, template, port or free_port(), name)
        self.port = int(self.cmd[self.cmd.index("--port") + 1])
        self.base_url = f"http://{HOST}:{self.port}/v1"
        self.timeout = start_timeout_s
        self.proc: Optional[subprocess.Popen] = None
        self._log = None

    def __enter__(self) -> str:
        self._log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServeError(f"the local server exited with code {self.proc.returncode}: "
                                 f"{self._last_line()}")
            if _healthy(f"http://{HOST}:{self.port}/health"):
                return self.base_url
            time.sleep(0.25)
        self.stop()
        raise ServeError(f"the local server did not answer /health within {self.timeout:.0f} s")

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _last_line(self) -> str:
        self._log.seek(0)
        lines = [ln.strip() for ln in self._log.read().splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("error:")]
        line = (errors or lines or ["(no output)"])[-1]
        return line[len("error: "):] if line.startswith("error: ") else line


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200 and json.loads(r.read()).get("status") == "ok"
    except (urllib.error.URLError, OSError, ValueError):
        return False
