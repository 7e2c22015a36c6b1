"""`vicuna-cloud eval RUN --bench mt-bench|vicuna-bench --questions FILE --judge-model M`.

Thin: ``sdk.evaluate`` (vicuna_cloud.evaluation) does the work. Without --base-url the run's export is
served on 127.0.0.1 for the duration (a subprocess, torch stays out of the CLI).
"""

from __future__ import annotations

from typing import List, Optional

import typer

from vicuna_cloud.cli import completion
from vicuna_cloud.cli.app import app
from vicuna_cloud.cli.common import console, err_console, print_json


@app.command("eval")
def eval_cmd(
    run: str = typer.Argument(..., autocompletion=completion.run_ids, help="Run id or exported model dir (served locally), or "
                                        "with --base-url the model's name at that endpoint."),
    bench: str = typer.Option(..., "--bench", help="mt-bench or vicuna-bench."),
    questions: str = typer.Option(..., "--questions", help="Questions JSONL (MT-Bench's "
                                  "question.jsonl format)."),
    judge_model: str = typer.Option(..., "--judge-model", help="Judge model name, e.g. gpt-4."),
    judge_base_url: Optional[str] = typer.Option(None, "--judge-base-url",
                                                 help="OpenAI-compatible judge URL (default: OpenAI)."),
    judge_api_key_env: str = typer.Option("OPENAI_API_KEY", "--judge-api-key-env",
                                          help="Environment variable holding the judge's key."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="Answer from this "
                                           "OpenAI-compatible endpoint instead of a local server."),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env",
                                              help="Environment variable with the endpoint's key."),
    references: Optional[str] = typer.Option(None, "--references", help="Reference answers "
                                             "JSONL (answer format) for math/reasoning/coding."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N questions."),
    max_tokens: int = typer.Option(1024, "--max-tokens", min=1, help="New tokens per turn."),
    parallel: int = typer.Option(4, "--parallel", min=1, max=64, help="Judge requests at once."),
    stop: List[str] = typer.Option([], "--stop", help="Extra stop string (repeatable)."),
    out: Optional[str] = typer.Option(None, "--out", help="Directory for answers, judgments, "
                                      "report (default: eval/<model>/<bench>)."),
    bucket: Optional[str] = typer.Option(None, "--bucket", help="Bucket of the run."),
    price_per_hour: Optional[float] = typer.Option(None, "--price-per-hour", min=0.0,
                                                   help="$/hour of the answering endpoint."),
    no_judge: bool = typer.Option(False, "--no-judge", help="Generate answers only."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable report."),
) -> None:
    """Answer MT-Bench / Vicuna-bench questions and grade them with an LLM judge.

    Example: vicuna-cloud eval tiny-20261201-101500 --bench mt-bench --questions question.jsonl --judge-model gpt-4
    """
    from vicuna_cloud import sdk

    report = sdk.evaluate(sdk.EvaluateRequest(
        run=run, bench=bench, questions=questions, judge_model=judge_model,
        judge_base_url=judge_base_url, judge_api_key_env=judge_api_key_env, base_url=base_url,
        api_key_env=api_key_env, references=references, limit=limit, max_tokens=max_tokens,
        parallel=parallel, stop=tuple(stop), out=out, bucket=bucket,
        price_per_hour=price_per_hour, judge=not no_judge),
        progress=None if json_out else (lambda m: err_console.print(f"[dim]{m}[/]")))
    if json_out:
        print_json(report.model_dump(mode="json"))
        return
    from vicuna_cloud.evaluation.report import tables

    for t in tables(report):
        console.print(t)
    console.print(f"[dim]answers: {report.answers.path}; report: {report.report_path}[/]")
