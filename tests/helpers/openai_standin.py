"""A stand-in for a remote OpenAI-compatible API (the GPT-4 judge, or a model endpoint the
tests do not run), at the HTTP boundary: ``POST /v1/chat/completions`` on 127.0.0.1.

The judge cannot run here, so this plays it: it records every request (body and
Authorization header) and answers judge prompts with a rating chosen by ``rate(prompt)``,
so a test can recompute the expected report from what was handed out. Requests for any
other model get ``answer(messages)`` back, which lets a test see exactly what an answering
client sent (temperatures, the second turn's history).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Callable, Optional

from helpers.local_http import LocalHTTPService


def default_rate(prompt: str) -> Optional[int]:
    """A rating from 1 to 10 that depends on the prompt (None: answer without one)."""
    return 1 + int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % 10


class OpenAIStandIn(LocalHTTPService):
    def __init__(self, judge_model: str = "stand-in-judge",
                 rate: Callable[[str], Optional[int]] = default_rate,
                 answer: Callable[[list], str] = lambda msgs: f"Answer: {msgs[-1]['content'][:30]}"):
        self.judge_model, self.rate, self.answer = judge_model, rate, answer
        self.requests: list[dict] = []
        self.auth: list[str] = []
        self.ratings: dict[str, Optional[int]] = {}  # judge user prompt -> rating given
        self._lock = threading.Lock()

    def _handler_class(self):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n) or b"{}")
                with outer._lock:
                    outer.requests.append(body)
                    outer.auth.append(self.headers.get("Authorization", ""))
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": "not found"}})
                msgs = body.get("messages") or []
                if body.get("model") == outer.judge_model:
                    prompt = msgs[-1]["content"]
                    rating = outer.rate(prompt)
                    with outer._lock:
                        outer.ratings[prompt] = rating
                    text = ("The answer is brief. " + (f"Rating: [[{rating}]]" if rating is not None
                                                       else "I cannot rate this."))
                else:
                    text = outer.answer(msgs)
                self._send(200, {
                    "id": "chatcmpl-standin", "object": "chat.completion",
                    "created": int(time.time()), "model": body.get("model"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}})

            def _send(self, code: int, obj: dict):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler
