"""Benchmark questions and reference answers, in MT-Bench's JSONL formats.

Questions: one object per line, ``{"question_id", "category", "turns": [...]}`` and, in
FastChat's MT-Bench file, an optional ``"reference": [...]`` (one per turn). Reference
answers may also come from a separate file in the answer format (FastChat's
``reference_answer/gpt-4.jsonl``: ``{"question_id", "choices": [{"turns": [...]}]}``); a
file given with ``--references`` wins over the questions' own field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

from vicuna_cloud.errors import DataError

BENCHES = {"mt-bench": 2, "vicuna-bench": 1}  # bench -> turns per question


class QuestionsError(DataError):
    """A questions or references file that cannot be used."""


@dataclass(frozen=True)
class Question:
    question_id: int
    category: str
    turns: tuple[str, ...]
    reference: Optional[tuple[str, ...]] = None


def _read_jsonl(path: str, what: str) -> list[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = [(i, ln) for i, ln in enumerate(f, 1) if ln.strip()]
    except OSError as e:
        raise QuestionsError(f"cannot read the {what} file {path}: {e.strerror}") from None
    rows = []
    for i, ln in lines:
        try:
            row = json.loads(ln)
        except json.JSONDecodeError:
            raise QuestionsError(f"{path} line {i} is not JSON; the {what} file must be JSONL "
                                 "(one object per line)") from None
        if not isinstance(row, dict):
            raise QuestionsError(f"{path} line {i} is not a JSON object")
        rows.append(row)
    return rows


def load_questions(path: str, bench: str, limit: Optional[int] = None,
                   references: Optional[str] = None) -> list[Question]:
    """Questions for ``bench`` ("mt-bench" or "vicuna-bench"), checked line by line."""
    if bench not in BENCHES:
        raise QuestionsError(f"unknown bench {bench!r}; use mt-bench or vicuna-bench")
    rows = _read_jsonl(path, "questions")
    refs = load_references(references) if references else {}
    out, seen = [], set()
    for i, row in enumerate(rows, 1):
        qid, cat, turns = row.get("question_id"), row.get("category"), row.get("turns")
        if not isinstance(qid, int) or not isinstance(cat, str) or not (
                isinstance(turns, list) and turns and all(isinstance(t, str) for t in turns)):
            raise QuestionsError(f"{path} question {i}: needs an integer question_id, a "
                                 "category and a list of turns (MT-Bench's question.jsonl format)")
        if qid in seen:
            raise QuestionsError(f"{path}: question_id {qid} appears twice")
        seen.add(qid)
        if len(turns) != BENCHES[bench]:
            raise QuestionsError(f"{path} question {qid} has {len(turns)} turn(s); {bench} "
                                 f"questions have {BENCHES[bench]}: is this the {bench} file?")
        ref = refs.get(qid)
        if ref is None and isinstance(row.get("reference"), list):
            ref = tuple(str(r) for r in row["reference"])
        out.append(Question(qid, cat, tuple(turns), ref))
    if not out:
        raise QuestionsError(f"{path} holds no questions")
    return out[:limit] if limit else out


def load_references(path: str) -> dict[int, tuple[str, ...]]:
    refs = {}
    for i, row in enumerate(_read_jsonl(path, "references"), 1):
        try:
            refs[int(row["question_id"])] = tuple(str(t) for t in row["choices"][0]["turns"])
        except (KeyError, IndexError, TypeError, ValueError):
            raise QuestionsError(f"{path} line {i}: a reference answer needs question_id and "
                                 "choices[0].turns (MT-Bench's answer format)") from None
    return refs
