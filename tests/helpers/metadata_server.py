"""A local HTTP server that answers like AWS IMDSv2 and the GCP metadata server.

AWS: PUT /latest/api/token (X-aws-ec2-metadata-token-ttl-seconds required) returns a
token; GET /latest/meta-data/spot/instance-action needs that token (401 without) and
returns 404 until a notice is set, then the JSON AWS documents.
GCP: GET /computeMetadata/v1/instance/preempted needs Metadata-Flavor: Google (403
without) and returns FALSE or TRUE.

A notice is set by ``preempt()`` or automatically after ``notice_after_polls`` notice polls
(so a subprocess gets preempted mid-run without timing guesses in the test).
"""

from __future__ import annotations

import json
import secrets
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler
from typing import Optional

from helpers.local_http import LocalHTTPService


class MetadataServer(LocalHTTPService):
    def __init__(self, notice_after_polls: Optional[int] = None):
        self.notice_after_polls = notice_after_polls
        self.preempted = False
        self.polls = 0
        self.tokens: set[str] = set()
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        self._lock = threading.Lock()

    def preempt(self) -> None:
        self.preempted = True

    def _count_poll(self) -> None:
        with self._lock:
            self.polls += 1
            if self.notice_after_polls is not None and self.polls >= self.notice_after_polls:
                self.preempted = True

    def _handler_class(self):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, code: int, body: str = "", ctype: str = "text/plain") -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                outer.requests.append((self.command, self.path, code))

            def do_PUT(self):
                if self.path != "/latest/api/token":
                    return self._send(404, "not found")
                if not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    return self._send(400, "missing token TTL header")
                token = secrets.token_hex(16)
                outer.tokens.add(token)
                self._send(200, token)

            def do_GET(self):
                if self.path.startswith("/latest/"):
                    if self.headers.get("X-aws-ec2-metadata-token") not in outer.tokens:
                        return self._send(401, "unauthorized")
                    if self.path == "/latest/meta-data/spot/instance-action":
                        outer._count_poll()
                        if not outer.preempted:
                            return self._send(404, "not found")
                        when = datetime.now(timezone.utc) + timedelta(minutes=2)
                        return self._send(200, json.dumps(
                            {"action": "terminate", "time": when.strftime("%Y-%m-%dT%H:%M:%SZ")}),
                            "application/json")
                    return self._send(404, "not found")
                if self.path.startswith("/computeMetadata/v1/"):
                    if self.headers.get("Metadata-Flavor") != "Google":
                        return self._send(403, "missing Metadata-Flavor: Google header")
                    if self.path == "/computeMetadata/v1/instance/preempted":
                        outer._count_poll()
                        return self._send(200, "TRUE" if outer.preempted else "FALSE")
                return self._send(404, "not found")

        return Handler
