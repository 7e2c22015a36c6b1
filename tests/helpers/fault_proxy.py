"""A fault-injecting HTTP reverse proxy for storage tests.

Sits on 127.0.0.1 in front of a local object store (moto, fake-gcs-server) and, for a
seeded random fraction of requests, fails them the way clouds do:

- ``500`` / ``503``: an S3-style XML error (InternalError / SlowDown), request not forwarded;
- ``reset``: the connection is reset, before or after the request reached the server
  (the latter is the nasty case: the write happened, the client never heard);
- ``truncate``: the response is forwarded with its full Content-Length but cut off half way;
- ``corrupt`` (not in the default mix): one byte of the response body is flipped.

``forbid=True`` answers every request with 403 AccessDenied, to check that a permanent
error is not retried. ``match(method, path)`` limits faults to the requests it accepts
(e.g. only the second part of a multipart upload), for deterministic failure tests. ``stats`` counts requests and faults. Point a client or a
subprocess at it by setting AWS_ENDPOINT_URL_S3 (or STORAGE_EMULATOR_HOST) to ``proxy.url``.
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional, Sequence
from urllib.parse import urlsplit

from helpers.local_http import LocalHTTPService

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
               "trailer", "upgrade", "expect", "content-length"}
DEFAULT_KINDS = ("500", "503", "reset", "truncate")


class FaultProxy(LocalHTTPService):
    def __init__(
        self,
        upstream: str,
        *,
        rate: float = 0.1,
        seed: int = 0,
        kinds: Sequence[str] = DEFAULT_KINDS,
        forbid: bool = False,
        match: Optional[Callable[[str, str], bool]] = None,
        port: int = 0,
    ):
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.rate = rate
        self.kinds = tuple(kinds)
        self.forbid = forbid
        self.match = match  # (method, path) -> may this request be failed? None: all
        self.port = port
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.stats: Counter = Counter()
        self.server_class = _QuietServer

    # --- control -------------------------------------------------------------------------
    def _handler_class(self):
        proxy = self

        class Handler(_Handler):
            owner = proxy

        return Handler

    def _choose(self, method: str, path: str) -> Optional[str]:
        with self._lock:
            self.stats["requests"] += 1
            self.stats[f"method:{method}"] += 1
            if self.match is not None and not self.match(method, path):
                return None
            if self.forbid:
                self.stats["fault:403"] += 1
                return "403"
            if self._rng.random() < self.rate:
                kind = self._rng.choice(self.kinds)
                if kind == "reset":
                    kind = self._rng.choice(("reset-before", "reset-after"))
                self.stats[f"fault:{kind}"] += 1
                return kind
            return None

    @property
    def faults(self) -> int:
        with self._lock:
            return sum(v for k, v in self.stats.items() if k.startswith("fault:"))


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """Clients dropping connections is the business of this server: stay quiet."""


_ERRORS = {
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "503": (503, "SlowDown", "Please reduce your request rate."),
    "403": (403, "AccessDenied", "Access Denied"),
}


class _Handler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in separate writes; without NODELAY, Nagle's algorithm
        # and delayed ACKs add ~40 ms to every request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _reset(self) -> None:
        """Abort the TCP connection (RST), as a dropped load balancer connection would."""
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close_connection = True
        try:
            self.connection.close()
        except OSError:
            pass

    def _send_error(self, kind: str) -> None:
        status, code, msg = _ERRORS[kind]
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                f"<Message>{msg}</Message><RequestId>fault-proxy</RequestId></Error>").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        body = self._body()  # read it even when failing, so keep-alive stays in sync
        fault = self.owner._choose(self.command, self.path)
        if fault in _ERRORS:
            return self._send_error(fault)
        if fault == "reset-before":
            return self._reset()
        conn = http.client.HTTPConnection(self.owner.upstream_host, self.owner.upstream_port, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            headers["Content-Length"] = str(len(body))
            conn.connect()
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            resp_headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP]
        finally:
            conn.close()
        if fault == "reset-after":
            return self._reset()
        self.send_response(resp.status, resp.reason)
        for k, v in resp_headers:
            self.send_header(k, v)
        # HEAD answers carry the object's length but no body.
        length = resp.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
        if length is not None:
            self.send_header("Content-Length", length)
        self.end_headers()
        if self.command == "HEAD":
            return
        if fault == "corrupt" and data:
            i = len(data) // 2
            data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
        if fault == "truncate" and len(data) > 1:
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            return self._reset()
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _handle
