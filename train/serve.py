"""OpenAI-compatible chat server for an exported model on this machine's CPU.

    python -m train.serve --model DIR [--template vicuna_v1.1] [--port 8000] [--name NAME]

FastAPI + uvicorn, bound to 127.0.0.1 only. Endpoints: ``GET /health``, ``GET /v1/models``,
``POST /v1/chat/completions`` (with ``stream: true`` as server-sent events). The prompt is
the Vicuna template of vicuna_cloud.templates (the one training used, so the tokens are the
training tokens, BOS included); generation stops at the model's EOS, at the template's stop
string and at any ``stop`` the request names; stop strings are never part of the reply.

Why not ``transformers serve`` (transformers 5.17): it never turns sampling on for a
``temperature`` above 0 unless the model's generation_config already samples (so
MT-Bench's 0.7 for writing would silently be greedy), it leaves ``stop`` strings in the
reply, and it needs accelerate for a CPU model. The generation itself is transformers'
``generate``; only the HTTP layer is ours, on FastAPI.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import threading
import time
import uuid
from typing import Iterator, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from vicuna_cloud.templates import get_template

HOST = "127.0.0.1"  # never another interface: this server has no authentication


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: Union[str, list[dict]]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.get("text", "") for p in self.content if p.get("type") == "text")


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: Optional[str] = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: Union[str, list[str], None] = None
    stream: bool = False
    stream_options: Optional[dict] = None
    seed: Optional[int] = None
    n: int = 1


class RequestError(ValueError):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class Engine:
    """The loaded model; one generation at a time (a CPU has no room for two)."""

    def __init__(self, model_dir: str, template: str, name: str):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        self.torch = torch
        self.name = name
        self.template = get_template(template)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        try:
            gen = GenerationConfig.from_pretrained(model_dir)
            eos = gen.eos_token_id
        except OSError:
            eos = None
        eos = eos if isinstance(eos, list) else [eos] if eos is not None else []
        if self.tokenizer.eos_token_id is not None:
            eos.append(self.tokenizer.eos_token_id)
        self.eos_ids = sorted(set(eos))
        self.context = int(getattr(self.model.config, "max_position_embeddings", 2048))
        self.lock = threading.Lock()
        self.created = int(time.time())

    def prompt_ids(self, messages: list[Message]) -> list[int]:
        template = self.template
        msgs = list(messages)
        if msgs[0].role == "system":
            template = dataclasses.replace(template, system=msgs[0].text())
            msgs = msgs[1:]
        turns = []
        for i, m in enumerate(msgs):
            want = "user" if i % 2 == 0 else "assistant"
            if m.role != want:
                raise RequestError(f"messages[{i + len(messages) - len(msgs)}] has role "
                                   f"{m.role!r}, expected {want!r}: after an optional system "
                                   "message, user and assistant must alternate, ending with user")
            turns.append({"from": "human" if m.role == "user" else "gpt", "value": m.text()})
        if len(turns) % 2 == 0:
            raise RequestError("the last message must be from the user")
        return self.tokenizer(template.prompt(turns))["input_ids"]

    def stops(self, req: ChatRequest) -> list[str]:
        extra = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        return [s for s in dict.fromkeys(self.template.stop_strings + extra) if s]

    def plan(self, req: ChatRequest) -> tuple[list[int], dict]:
        """Prompt ids and generate() kwargs for a request (checked, nothing run)."""
        if req.model not in (None, self.name):
            raise RequestError(f"model {req.model!r} is not served here; this server serves "
                               f"{self.name!r} (see /v1/models)", status=404)
        if req.n != 1:
            raise RequestError("n must be 1: this server generates one choice per request")
        ids = self.prompt_ids(req.messages)
        room = self.context - len(ids)
        if room < 1:
            raise RequestError(f"the prompt is {len(ids)} tokens; the model's context is "
                               f"{self.context}: shorten the conversation")
        want = req.max_completion_tokens or req.max_tokens or min(room, 2048)
        stops = self.stops(req)
        kwargs = dict(max_new_tokens=min(want, room), eos_token_id=self.eos_ids,
                      pad_token_id=self.eos_ids[0] if self.eos_ids else 0,
                      stopping_criteria=self._stop_criteria(stops, len(ids)))
        if req.temperature > 0:
            kwargs.update(do_sample=True, temperature=req.temperature, top_p=req.top_p)
        else:
            kwargs.update(do_sample=False)
        return ids, kwargs

    def _stop_criteria(self, stops: list[str], prompt_len: int):
        """Stop once the reply's tail contains a stop string. (generate's own
        ``stop_strings`` preprocesses the whole vocabulary on every request: ~1 s here.)"""
        from transformers import StoppingCriteria, StoppingCriteriaList

        tok, torch = self.tokenizer, self.torch
        window = 2 * max((len(s) for s in stops), default=1) + 8  # tokens: >= 1 char, or 0

        class OnText(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                tail = tok.decode(input_ids[0, prompt_len:][-window:], skip_special_tokens=False)
                hit = any(s in tail for s in stops)
                return torch.full((input_ids.shape[0],), hit, dtype=torch.bool)

        return StoppingCriteriaList([OnText()]) if stops else None

    def run(self, ids: list[int], kwargs: dict, req: ChatRequest, streamer=None) -> list[int]:
        """Generate under the lock; returns the new token ids."""
        torch = self.torch
        with self.lock:
            if req.seed is not None:
                torch.manual_seed(req.seed)
            with torch.no_grad():
                out = self.model.generate(torch.tensor([ids]), streamer=streamer,
                                          attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                          **kwargs)
        return out[0, len(ids):].tolist()

    def finish(self, new_ids: list[int], text: str, stops: list[str],
               max_new: int) -> tuple[str, str]:
        """(reply without any stop string, finish_reason)."""
        cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
        if cut >= 0:
            return text[:cut], "stop"
        if new_ids and new_ids[-1] in self.eos_ids:
            return text, "stop"
        return text, "length" if len(new_ids) >= max_new else "stop"


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def complete(engine: Engine, req: ChatRequest) -> dict:
    ids, kwargs = engine.plan(req)
    new = engine.run(ids, kwargs, req)
    text = engine.tokenizer.decode(new, skip_special_tokens=True)
    reply, reason = engine.finish(new, text, engine.stops(req), kwargs["max_new_tokens"])
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
            "created": int(time.time()), "model": engine.name,
            "choices": [{"index": 0, "finish_reason": reason,
                         "message": {"role": "assistant", "content": reply.strip()}}],
            "usage": _usage(len(ids), len(new))}


def stream(engine: Engine, req: ChatRequest) -> Iterator[str]:
    """Server-sent events. Text that could still become a stop string is held back until
    it cannot, so no stop string (or its first half) ever reaches the client."""
    from transformers import TextIteratorStreamer

    ids, kwargs = engine.plan(req)  # errors surface before the first byte
    stops = engine.stops(req)
    streamer = TextIteratorStreamer(engine.tokenizer, skip_prompt=True, skip_special_tokens=True)
    result: dict = {}
    worker = threading.Thread(target=lambda: result.setdefault(
        "ids", engine.run(ids, kwargs, req, streamer)), daemon=True)
    worker.start()
    cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def chunk(delta: dict, reason=None, usage=None, choices=True) -> str:
        body = {"id": cid, "object": "chat.completion.chunk", "created": created,
                "model": engine.name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": reason}] if choices else []}
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    text, sent, stopped = "", 0, False
    hold = max((len(s) for s in stops), default=1) - 1
    for piece in streamer:
        if stopped:
            continue  # drain: generation ends on its own at the stop string
        text += piece
        cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
        upto = cut if cut >= 0 else max(sent, len(text) - hold)
        if cut >= 0:
            stopped = True
        upto = max(sent, len(text[:upto].rstrip()))  # trailing blanks wait: the reply is stripped
        out = text[sent:upto]
        if sent == 0:
            out = out.lstrip()
        if out:
            yield chunk({"content": out})
            sent = upto
    worker.join()
    new = result.get("ids", [])
    reply, reason = engine.finish(new, text, stops, kwargs["max_new_tokens"])
    rest = reply[sent:].rstrip()
    if rest:
        yield chunk({"content": rest.lstrip() if sent == 0 else rest})
    yield chunk({}, reason=reason)
    if (req.stream_options or {}).get("include_usage"):
        yield chunk({}, usage=_usage(len(ids), len(new)), choices=False)
    yield "data: [DONE]\n\n"


def build_app(engine: Engine):
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse

    app = FastAPI(title="vicuna-cloud local server", docs_url=None, redoc_url=None)

    def error(message: str, status: int = 400) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error",
                                       "code": status}}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ())[1:])
        return error(f"invalid request: {where}: {first.get('msg', 'malformed body')}")

    @app.get("/health")
    def health():
        return {"status": "ok", "model": engine.name}

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": engine.name, "object": "model",
                                            "created": engine.created, "owned_by": "vicuna-cloud",
                                            "max_model_len": engine.context}]}

    @app.post("/v1/chat/completions")
    def chat(req: ChatRequest):
        try:
            if req.stream:
                events = stream(engine, req)
                first = next(events)  # raises RequestError before the response starts
                return StreamingResponse(_prepend(first, events), media_type="text/event-stream")
            return JSONResponse(complete(engine, req))
        except RequestError as e:
            return error(str(e), e.status)

    return app


def _prepend(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train.serve", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="exported model directory")
    p.add_argument("--template", default="vicuna_v1.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--name", default=None, help="model name clients use (default: directory name)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    import os

    import uvicorn

    args = parse_args(argv)
    name = args.name or os.path.basename(os.path.abspath(args.model).rstrip("/"))
    from train.generate import load_or_report

    engine = load_or_report(lambda: Engine(args.model, args.template, name), args.model)
    if engine is None:
        return 2
    print(f"serving {name} at http://{HOST}:{args.port}/v1 (template {args.template})",
          file=sys.stderr, flush=True)
    uvicorn.run(build_app(engine), host=HOST, port=args.port, log_level="warning",
                access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
