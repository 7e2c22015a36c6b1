"""The score report: per category, per turn and overall, beside the published Vicuna scores.

Averages follow FastChat's show_result.py: the mean of every judgment with a rating
(failed ones, -1, are left out and counted); the overall score is the mean over both
turns' judgments.
"""

from __future__ import annotations

from statistics import mean
from typing import Optional, Sequence, Union

from pydantic import BaseModel

from vicuna_cloud.evaluation.facts import PUBLISHED_MT_BENCH
from vicuna_cloud.evaluation.questions import Question


#: A score: the mean of whole ratings stays an int (8, not 8.0), as report.json has it.
Score = Union[int, float]


class CategoryScore(BaseModel):
    score: Optional[Score]
    n: int


class Failures(BaseModel):
    answers: int
    judge_unparsed: int
    judge_errors: int


class EvalCost(BaseModel):
    """The answering endpoint's time priced: hours x $/hour, and where the price is from."""

    hours: float
    price_per_hour: float
    usd: float
    source: Optional[str]


class PublishedScore(BaseModel):
    model: str
    mt_bench: float


class AnswerStats(BaseModel):
    path: str
    asked: int
    reused: int
    seconds: float
    errors: list[str]


class EvalReport(BaseModel):
    """The report of one eval (``report.json``, ``eval --json``): scores per category, per
    turn and overall, what failed, the cost, and the published scores beside them."""

    bench: str
    model: str
    judge_model: str
    questions: int
    judgments: int
    categories: dict[str, CategoryScore]
    turns: dict[str, Optional[Score]]
    overall: Optional[Score]
    failed: Failures
    judged_without_reference: int
    judge_tokens: dict[str, int]
    published: list[PublishedScore]
    wall_seconds: float
    cost: Optional[EvalCost]
    answers: AnswerStats
    report_path: str


def _avg(xs: list[float]) -> Optional[float]:
    return round(mean(xs), 4) if xs else None


def summarize(*, bench: str, model: str, judge_model: str, questions: Sequence[Question],
              judgments: Sequence[dict], answer_failures: int, judge_unparsed: int,
              judge_errors: int, without_reference: int, judge_tokens: dict,
              wall_seconds: float, price_per_hour: Optional[float],
              price_source: Optional[str]) -> dict:
    cat = {q.question_id: q.category for q in questions}
    by_cat: dict[str, list[float]] = {}
    by_turn: dict[str, list[float]] = {}
    scores = []
    for j in judgments:
        if j["score"] < 0:
            continue
        by_cat.setdefault(cat[j["question_id"]], []).append(j["score"])
        by_turn.setdefault(str(j["turn"]), []).append(j["score"])
        scores.append(j["score"])
    order = list(dict.fromkeys(q.category for q in questions))
    cost = None
    if price_per_hour is not None:
        hours = wall_seconds / 3600
        cost = {"hours": round(hours, 4), "price_per_hour": price_per_hour,
                "usd": round(hours * price_per_hour, 4), "source": price_source}
    return {
        "bench": bench, "model": model, "judge_model": judge_model,
        "questions": len(questions), "judgments": len(judgments),
        "categories": {c: {"score": _avg(by_cat.get(c, [])), "n": len(by_cat.get(c, []))}
                       for c in order},
        "turns": {t: _avg(v) for t, v in sorted(by_turn.items())},
        "overall": _avg(scores),
        "failed": {"answers": answer_failures, "judge_unparsed": judge_unparsed,
                   "judge_errors": judge_errors},
        "judged_without_reference": without_reference,
        "judge_tokens": judge_tokens,
        "published": [{"model": m, "mt_bench": s} for m, s in PUBLISHED_MT_BENCH]
        if bench == "mt-bench" else [],
        "wall_seconds": round(wall_seconds, 2),
        "cost": cost,
    }


def tables(report: EvalReport):
    """The rich tables of a report (scores; published scores beside them)."""
    from rich.table import Table

    fmt = (lambda x: "-" if x is None else f"{x:.2f}")
    t = Table(title=f"{report.bench}: {report.model} judged by {report.judge_model}")
    t.add_column("category")
    t.add_column("score", justify="right")
    t.add_column("judgments", justify="right")
    for c, v in report.categories.items():
        t.add_row(c, fmt(v.score), str(v.n))
    t.add_section()
    for turn, score in report.turns.items():
        t.add_row(f"turn {turn}", fmt(score), "")
    t.add_row("[bold]overall[/]", f"[bold]{fmt(report.overall)}[/]", str(report.judgments))
    f = report.failed
    t.caption = (f"failed: {f.answers} answer turn(s), {f.judge_unparsed} judgment(s) "
                 f"without a [[rating]], {f.judge_errors} judge error(s); "
                 f"{report.judged_without_reference} judged without a reference answer")
    if report.cost:
        c = report.cost
        t.caption += (f"; eval {c.hours * 60:.1f} min x ${c.price_per_hour:.2f}/h = "
                      f"${c.usd:.2f} ({c.source})")
    out = [t]
    if report.published:
        p = Table(title="Published MT-Bench (GPT-4 judge; another judge is not comparable)")
        p.add_column("model")
        p.add_column("MT-Bench", justify="right")
        for row in report.published:
            p.add_row(row.model, f"{row.mt_bench:.2f}")
        p.add_row(f"[bold]{report.model} (this run)[/]", f"[bold]{fmt(report.overall)}[/]")
        out.append(p)
    return out
