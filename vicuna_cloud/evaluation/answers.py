"""Answer generation through any OpenAI-compatible chat endpoint, in MT-Bench's format.

Each question is one conversation: turn 1 is asked, the model's own reply is appended,
then turn 2 is asked (MT-Bench); the temperature is the category's (facts.py). Output
lines: ``{"question_id", "answer_id", "model_id", "choices": [{"index": 0, "turns": [...],
"finish_reasons": [...]}], "tstamp"}`` (``finish_reasons`` is ours, beside FastChat's
fields: "length" says a turn was cut at --max-tokens). A turn whose request failed is written as ``$ERROR$`` (as FastChat does) and
counted; a question already in the answer file is not asked again (a rerun resumes).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from vicuna_cloud.evaluation.facts import ERROR_OUTPUT, temperature_for
from vicuna_cloud.evaluation.questions import Question


@dataclass
class AnswerStats:
    asked: int = 0
    reused: int = 0
    failed_turns: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    completion_tokens: int = 0


def read_answers(path: str) -> dict[int, dict]:
    out: dict[int, dict] = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    out[int(row["question_id"])] = row
    return out


def generate_answers(client, model: str, questions: Sequence[Question], path: str, *,
                     max_tokens: int, stop: Optional[list[str]] = None, seed: int = 0,
                     on_answer: Optional[Callable[[int, int], None]] = None) -> AnswerStats:
    """Ask every question not yet in ``path``; append each answer as soon as it is whole."""
    stats = AnswerStats()
    t0 = time.perf_counter()
    done = read_answers(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", encoding="utf-8") as out:
        for n, q in enumerate(questions, 1):
            if q.question_id in done:
                stats.reused += 1
                continue
            turns, reasons = _ask(client, model, q, max_tokens, stop, seed, stats)
            row = {"question_id": q.question_id, "answer_id": uuid.uuid4().hex,
                   "model_id": model,
                   "choices": [{"index": 0, "turns": turns, "finish_reasons": reasons}],
                   "tstamp": time.time()}
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            out.flush()
            stats.asked += 1
            if on_answer:
                on_answer(n, len(questions))
    stats.seconds = time.perf_counter() - t0
    return stats


def _ask(client, model: str, q: Question, max_tokens: int, stop, seed: int,
         stats: AnswerStats) -> tuple[list[str], list[Optional[str]]]:
    """The answers turn by turn, and each turn's finish_reason ("stop": the model ended
    its reply, "length": cut at max_tokens; None: the call failed)."""
    messages: list[dict] = []
    turns: list[str] = []
    reasons: list[Optional[str]] = []
    for text in q.turns:
        messages.append({"role": "user", "content": text})
        kwargs = dict(model=model, messages=messages, max_tokens=max_tokens,
                      temperature=temperature_for(q.category), seed=seed)
        if stop:
            kwargs["stop"] = stop
        try:
            r = client.chat.completions.create(**kwargs)
            answer = (r.choices[0].message.content or "").strip()
            reason = r.choices[0].finish_reason
            if r.usage is not None:
                stats.completion_tokens += r.usage.completion_tokens or 0
        except Exception as e:  # noqa: BLE001 - any API failure is one failed turn, counted
            answer, reason = ERROR_OUTPUT, None
            stats.failed_turns += 1
            stats.errors.append(f"question {q.question_id}: {str(e).splitlines()[0][:200]}")
        turns.append(answer)
        reasons.append(reason)
        messages.append({"role": "assistant", "content": answer})
    return turns, reasons
