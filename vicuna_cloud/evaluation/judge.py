"""Single-answer grading with the MT-Bench judge prompts, against any OpenAI-compatible
judge. One judgment per (question, turn); turn 2 only for two-turn questions. Output lines
in FastChat's judgment format: ``{"question_id", "model", "judge": [judge_model, prompt],
"user_prompt", "judgment", "score", "turn", "tstamp"}`` (score -1 = failed).
"""

from __future__ import annotations

import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional, Sequence

from vicuna_cloud.evaluation.facts import (
    ERROR_OUTPUT, JUDGE_MAX_TOKENS, JUDGE_PROMPTS, JUDGE_TEMPERATURE, NEED_REFERENCE,
)
from vicuna_cloud.evaluation.questions import Question

RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
RATING_FALLBACK = re.compile(r"\[(\d+\.?\d*)\]")


def parse_rating(judgment: str) -> float:
    """The rating as MT-Bench reads it: ``[[N]]``, else ``[N]``, else -1 (failed)."""
    m = RATING.search(judgment) or RATING_FALLBACK.search(judgment)
    return float(m.group(1)) if m else -1.0


@dataclass(frozen=True)
class Match:
    question: Question
    turn: int  # 1 or 2
    prompt_name: str
    system: str
    user: str
    with_reference: bool


def build_matches(questions: Sequence[Question], answers: dict[int, dict]) -> list[Match]:
    """Every judgment to make. A reference category without a reference answer is judged
    with the general prompt (``with_reference`` False, counted in the report)."""
    out = []
    for q in questions:
        ans = answers.get(q.question_id)
        if ans is None:
            continue
        turns = ans["choices"][0]["turns"]
        ref = q.reference if q.category in NEED_REFERENCE else None
        use_ref = ref is not None and len(ref) >= len(q.turns)
        for turn in range(1, len(q.turns) + 1):
            if ERROR_OUTPUT in turns[:turn]:
                continue  # the model never answered: counted as an answer failure instead
            name = ("single-math-v1" if use_ref else "single-v1") + (
                "-multi-turn" if turn == 2 else "")
            system, template = JUDGE_PROMPTS[name]
            fields = {"question": q.turns[0], "answer": turns[0]}
            if turn == 2:
                fields = {"question_1": q.turns[0], "question_2": q.turns[1],
                          "answer_1": turns[0], "answer_2": turns[1]}
            if use_ref:
                fields.update(ref_answer_1=ref[0], ref_answer_2=ref[1] if len(ref) > 1 else "")
            out.append(Match(q, turn, name, system, template.format(**fields), use_ref))
    return out


@dataclass
class JudgeStats:
    judged: int = 0
    unparsed: int = 0
    api_errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0


def judge_answers(client, judge_model: str, model_id: str, matches: Sequence[Match],
                  path: str, *, parallel: int = 4) -> tuple[list[dict], JudgeStats]:
    """Judge every match (``parallel`` requests at a time); write and return the lines."""
    stats = JudgeStats()
    t0 = time.perf_counter()

    def one(m: Match) -> dict:
        try:
            r = client.chat.completions.create(
                model=judge_model, temperature=JUDGE_TEMPERATURE, max_tokens=JUDGE_MAX_TOKENS,
                messages=[{"role": "system", "content": m.system},
                          {"role": "user", "content": m.user}])
            judgment = r.choices[0].message.content or ""
            usage = r.usage
        except Exception as e:  # noqa: BLE001 - counted as a failed judgment
            judgment, usage = f"{ERROR_OUTPUT} {str(e).splitlines()[0][:200]}", None
        return {"question_id": m.question.question_id, "model": model_id,
                "judge": [judge_model, m.prompt_name], "user_prompt": m.user,
                "judgment": judgment, "score": parse_rating(judgment), "turn": m.turn,
                "tstamp": time.time(), "_usage": usage}

    with ThreadPoolExecutor(max(1, parallel)) as pool:
        rows = list(pool.map(one, matches))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            usage = row.pop("_usage")
            if usage is not None:
                stats.prompt_tokens += usage.prompt_tokens or 0
                stats.completion_tokens += usage.completion_tokens or 0
            if row["judgment"].startswith(ERROR_OUTPUT):
                stats.api_errors += 1
            elif row["score"] < 0:
                stats.unparsed += 1
            stats.judged += 1
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    stats.seconds = time.perf_counter() - t0
    return rows, stats


def category_of(questions: Sequence[Question]) -> dict[int, str]:
    return {q.question_id: q.category for q in questions}


def load_judgments(path: str) -> Optional[list[dict]]:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return [json.loads(ln) for ln in f if ln.strip()]
