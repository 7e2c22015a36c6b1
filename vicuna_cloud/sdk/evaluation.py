"""MT-Bench / Vicuna-bench evaluation of a run (or of any OpenAI-compatible endpoint).

    report = sdk.evaluate(sdk.EvaluateRequest(run="vicuna-7b-...", bench="mt-bench",
                          questions="question.jsonl", judge_model="gpt-4"))
    report.overall, report.categories["math"].score

Without ``base_url`` the run's export is served on 127.0.0.1 while the answers are
generated; with it, ``run`` is the model's name there, and a service that `serve` launched
from this machine lends its $/hour (the eval's cost) and its stop strings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional

from vicuna_cloud.errors import ConfigError
from vicuna_cloud.evaluation.report import EvalReport


@dataclass(frozen=True)
class EvaluateRequest:
    run: str
    bench: str                         # mt-bench | vicuna-bench
    questions: str                     # MT-Bench's question.jsonl format
    judge_model: str
    judge_base_url: Optional[str] = None
    judge_api_key_env: str = "OPENAI_API_KEY"
    base_url: Optional[str] = None
    api_key_env: Optional[str] = None
    references: Optional[str] = None
    limit: Optional[int] = None
    max_tokens: int = 1024
    parallel: int = 4
    stop: tuple[str, ...] = ()
    out: Optional[str] = None          # default: eval/<model>/<bench>
    bucket: Optional[str] = None
    price_per_hour: Optional[float] = None
    judge: bool = True


def evaluate(req: EvaluateRequest,
             progress: Optional[Callable[[str], None]] = None) -> EvalReport:
    """Answers, judgments and the report (also written to ``<out>/report.json``)."""
    from vicuna_cloud.evaluation.run import EvalRequest, run_eval

    if req.bench not in ("mt-bench", "vicuna-bench"):
        raise ConfigError(f"--bench {req.bench!r}: use mt-bench or vicuna-bench")
    if not os.path.isfile(req.questions):
        raise ConfigError(f"--questions {req.questions}: no such file; give MT-Bench's "
                          "question.jsonl (fastchat/llm_judge/data/<bench>/question.jsonl)")
    model_dir, template, model = None, "vicuna_v1.1", req.run
    price, source, stop = req.price_per_hour, None, list(req.stop)
    if req.base_url is None:
        from vicuna_cloud.sdk.export import chat_model

        model_dir, template = chat_model(req.run, req.bucket)
        if os.path.isdir(req.run):
            model = os.path.basename(os.path.abspath(req.run))
    else:
        from vicuna_cloud.serving import index

        rec = index.lookup(req.run) or {}
        if price is None and rec.get("price_per_hour") is not None:
            price, source = rec["price_per_hour"], f"serve {rec['service']}"
        stop = list(dict.fromkeys([*stop, *rec.get("stop", [])]))
    return EvalReport.model_validate(run_eval(EvalRequest(
        model=model, bench=req.bench, questions=req.questions,
        out_dir=req.out or os.path.join("eval", model, req.bench),
        judge_model=req.judge_model, judge_base_url=req.judge_base_url,
        judge_api_key_env=req.judge_api_key_env, base_url=req.base_url, model_dir=model_dir,
        template=template, api_key_env=req.api_key_env, references=req.references,
        limit=req.limit, max_tokens=req.max_tokens, parallel=req.parallel, stop=tuple(stop),
        price_per_hour=price,
        price_source=source or ("--price-per-hour" if price is not None else None),
        judge=req.judge), progress=progress))
