"""One evaluation end to end: answers from an endpoint, judgments, report.

``run_eval(EvalRequest)`` is what the CLI (and a notebook) calls. Files under ``out_dir``
follow FastChat's layout, so its own tools can read them:

    model_answer/<model>.jsonl
    model_judgment/<judge>_single.jsonl
    report.json

API keys are read from the environment variables the request names, handed to the client
and never written anywhere (nor printed).
"""

from __future__ import annotations

import json
import os
import re
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Optional

from vicuna_cloud.errors import ConfigError
from vicuna_cloud.evaluation.answers import generate_answers, read_answers
from vicuna_cloud.evaluation.facts import MAX_NEW_TOKENS, NEED_REFERENCE
from vicuna_cloud.evaluation.judge import build_matches, judge_answers
from vicuna_cloud.evaluation.questions import QuestionsError, load_questions
from vicuna_cloud.evaluation.report import summarize


class EvalError(ConfigError):
    """Bad evaluation input; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class EvalRequest:
    model: str                      # the model's name at the endpoint (run id by default)
    bench: str                      # mt-bench | vicuna-bench
    questions: str                  # questions JSONL path
    out_dir: str
    judge_model: str
    judge_base_url: Optional[str] = None      # None: the OpenAI API
    judge_api_key_env: str = "OPENAI_API_KEY"
    base_url: Optional[str] = None  # answering endpoint; None: start the local server
    model_dir: Optional[str] = None  # for the local server
    template: str = "vicuna_v1.1"
    api_key_env: Optional[str] = None
    references: Optional[str] = None
    limit: Optional[int] = None
    max_tokens: int = MAX_NEW_TOKENS
    parallel: int = 4
    stop: tuple[str, ...] = ()
    price_per_hour: Optional[float] = None
    price_source: Optional[str] = None
    judge: bool = True


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _client(base_url: Optional[str], key: str, timeout: float):
    import openai

    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=3, timeout=timeout)


def judge_key(req: EvalRequest) -> str:
    key = os.environ.get(req.judge_api_key_env, "")
    if not key:
        raise EvalError(f"the judge's API key is read from ${req.judge_api_key_env}, which is "
                        f"not set: export {req.judge_api_key_env}=... (or name another "
                        "variable with --judge-api-key-env)")
    return key


def run_eval(req: EvalRequest, progress: Optional[Callable[[str], None]] = None) -> dict:
    say = progress or (lambda _msg: None)
    try:
        questions = load_questions(req.questions, req.bench, req.limit, req.references)
    except QuestionsError as e:
        raise EvalError(str(e)) from None
    key = judge_key(req) if req.judge else ""
    answers_path = os.path.join(req.out_dir, "model_answer", f"{_safe(req.model)}.jsonl")
    have = read_answers(answers_path)
    todo = [q for q in questions if q.question_id not in have]
    if req.base_url is None and not todo:
        server = nullcontext(None)  # every answer is there already: no server needed
    elif req.base_url is None:
        from vicuna_cloud.serving.local import LocalServer

        if req.model_dir is None:
            raise EvalError("no endpoint: give --base-url, or a run whose export is on this "
                            "machine to serve locally")
        server = LocalServer(req.model_dir, req.template, req.model)
        say(f"starting the local server for {req.model_dir}")
    else:
        server = nullcontext(req.base_url)
    t0 = time.perf_counter()
    with server as base_url:
        client = _client(base_url, os.environ.get(req.api_key_env or "", "") or "EMPTY", 900) \
            if todo else None
        stats = generate_answers(client, req.model, questions, answers_path,
                                 max_tokens=req.max_tokens, stop=list(req.stop) or None,
                                 on_answer=lambda n, total: say(f"answered {n}/{total}"))
    gen_seconds = time.perf_counter() - t0
    answers = read_answers(answers_path)
    failed_answers = sum(1 for q in questions for t in
                         answers.get(q.question_id, {"choices": [{"turns": []}]})["choices"][0]["turns"]
                         if t == "$ERROR$")
    judgments, jstats = [], None
    if req.judge:
        matches = build_matches(questions, answers)
        say(f"judging {len(matches)} answer turn(s) with {req.judge_model}")
        judge_path = os.path.join(req.out_dir, "model_judgment",
                                  f"{_safe(req.judge_model)}_single.jsonl")
        judgments, jstats = judge_answers(_client(req.judge_base_url, key, 600),
                                          req.judge_model, req.model, matches, judge_path,
                                          parallel=req.parallel)
    without_ref = sum(1 for q in questions if q.category in NEED_REFERENCE
                      and q.reference is None) * (2 if req.bench == "mt-bench" else 1)
    report = summarize(
        bench=req.bench, model=req.model, judge_model=req.judge_model, questions=questions,
        judgments=judgments, answer_failures=failed_answers,
        judge_unparsed=jstats.unparsed if jstats else 0,
        judge_errors=jstats.api_errors if jstats else 0,
        without_reference=without_ref if req.judge else 0,
        judge_tokens={"prompt": jstats.prompt_tokens, "completion": jstats.completion_tokens}
        if jstats else {},
        wall_seconds=gen_seconds, price_per_hour=req.price_per_hour,
        price_source=req.price_source)
    report["answers"] = {"path": answers_path, "asked": stats.asked, "reused": stats.reused,
                         "seconds": round(stats.seconds, 2), "errors": stats.errors[:5]}
    report["report_path"] = os.path.join(req.out_dir, "report.json")
    with open(report["report_path"], "w") as f:
        json.dump(report, f, indent=2, sort_keys=True)
    return report
