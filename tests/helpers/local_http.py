"""The threaded-HTTP-server scaffolding that the test servers (fault proxy, metadata server)
share: serve a handler class on 127.0.0.1 in a daemon thread, stop cleanly, use as a
context manager."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional


class LocalHTTPService:
    """Subclasses give the handler class; ``port`` 0 picks a free one."""

    server_class: type[ThreadingHTTPServer] = ThreadingHTTPServer
    port: int = 0
    host: str = "127.0.0.1"  # the rehearsal serves on its bridge address (its own netns)
    _server: Optional[ThreadingHTTPServer] = None
    _thread: Optional[threading.Thread] = None
    url: str = ""

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    def start(self):
        self._server = self.server_class((self.host, self.port), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://{self.host}:{self._server.server_address[1]}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
