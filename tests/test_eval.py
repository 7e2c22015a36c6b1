"""`vicuna-cloud eval`: answers from a served model, single-answer grading, the report.

The judge (GPT-4 in the published scores) is the one part that cannot run here: a local
OpenAI-compatible server stands in for it at the HTTP boundary (tests/openai_standin.py),
recording every request and handing out ratings the test knows. Everything else is real:
the exported model answers through the real local server (train/serve.py), the questions
are read from ../shared/data/eval_prompts, and the CLI runs as a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from statistics import mean

import pytest

from conftest import EVAL_PROMPTS
from helpers.openai_standin import OpenAIStandIn, default_rate
from vicuna_cloud.evaluation.facts import JUDGE_PROMPTS
from vicuna_cloud.evaluation.judge import parse_rating
from vicuna_cloud.evaluation.run import EvalError, EvalRequest, run_eval

SECRET = "sk-standin-secret-4f1c9e"
JUDGE = "stand-in-judge"


@pytest.fixture
def judge():
    with OpenAIStandIn(judge_model=JUDGE) as s:
        yield s


def _cli(*args, env):
    return subprocess.run([sys.executable, "-m", "vicuna_cloud", *args], capture_output=True,
                          text=True, timeout=600, env=dict(env, COLUMNS="200"))


def _all_text(d) -> str:
    out = []
    for root, _dirs, files in os.walk(d):
        for f in files:
            out.append(open(os.path.join(root, f), encoding="utf-8", errors="replace").read())
    return "\n".join(out)


#: Vicuna-bench questions the e2e test asks (from ../shared, picked by id into the test's
#: temp dir), three categories. Picked because the short fine-tune answers them: on most
#: other questions (e.g. 1-3, 11, 21, 31, 41, 68-71) it replies with EOS at once, an
#: empty answer (the 4-step fine-tune's quality, not the plumbing's).
E2E_QUESTION_IDS = (5, 61, 75)
E2E_CATEGORIES = ("generic", "coding", "writing")
E2E_RUN = "tuned-demo"


@pytest.fixture(scope="module")
def tuned_demo(request) -> str:
    """The demo's tuned model (the short `small` fine-tune of SmolLM2-135M-Instruct): from
    the model cache when the code and data are unchanged since it was made, else the
    session's own run (conftest.small_p0, which test_small_e2e checks too), then cached."""
    from helpers.model import store_tuned, tuned_cache_dir

    if (tuned_cache_dir() / "config.json").is_file():
        return str(tuned_cache_dir())
    run = request.getfixturevalue("small_p0")
    run_json = (Path(run.bucket) / "runs" / run.run_id / "run.json").read_bytes()
    return store_tuned(run.export_dir, run_json)


def _publish_tuned(export_dir: str, bucket_uri: str, work: Path) -> None:
    """The tuned model as a finished run in a fresh bucket: its own run.json (the small
    preset's template and tokenizer) and final/, written by the trainer's upload_dir
    (the files, then EXPORT.json with the original's step and weights hash)."""
    import shutil

    from train.export import upload_dir
    from vicuna_cloud.run_store import write_run_spec
    from vicuna_cloud.runspec import RunSpec
    from vicuna_cloud.storage import open_bucket

    spec = RunSpec.from_json((Path(export_dir) / "run.json").read_bytes())
    spec = spec.model_copy(update={"run_id": E2E_RUN, "bucket_uri": bucket_uri})
    mark = json.loads((Path(export_dir) / "EXPORT.json").read_text())
    files = work / "final"
    shutil.copytree(export_dir, files, ignore=shutil.ignore_patterns("EXPORT.json", "run.json"))
    b = open_bucket(bucket_uri)
    write_run_spec(b, spec)
    upload_dir(b, str(files), f"runs/{E2E_RUN}/final", step=mark["step"],
               extra={"weights_sha256": mark.get("weights_sha256")})


@pytest.mark.slow
def test_vicuna_bench_end_to_end_through_the_local_server(judge, tuned_demo, tmp_path,
                                                          local_bucket_uri):
    """Issue 17's must-hold: `eval --bench vicuna-bench` on the demo's tuned model, served
    by the real local server (train/serve.py, started by eval itself), judged by the
    stand-in at the HTTP boundary (the GPT-4 judge cannot run here)."""
    _publish_tuned(tuned_demo, local_bucket_uri, tmp_path)
    rows = [json.loads(ln) for ln in open(EVAL_PROMPTS / "vicuna_bench_question.jsonl")]
    questions = [next(r for r in rows if r["question_id"] == i) for i in E2E_QUESTION_IDS]
    qpath = tmp_path / "vicuna_subset.jsonl"
    qpath.write_text("".join(json.dumps(q) + "\n" for q in questions))
    out = tmp_path / "out"
    env = dict(os.environ, VICUNA_CLOUD_HOME=str(tmp_path / "home"), STANDIN_KEY=SECRET)
    args = ["eval", E2E_RUN, "--bucket", local_bucket_uri, "--bench", "vicuna-bench",
            "--questions", str(qpath), "--judge-model", JUDGE,
            "--judge-base-url", f"{judge.url}/v1", "--judge-api-key-env", "STANDIN_KEY",
            "--max-tokens", "256", "--out", str(out)]
    r = _cli(*args, "--json", env=env)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    answers = [json.loads(ln) for ln in open(out / "model_answer" / f"{E2E_RUN}.jsonl")]
    assert [a["question_id"] for a in answers] == list(E2E_QUESTION_IDS)
    assert all(a["model_id"] == E2E_RUN and len(a["choices"][0]["turns"]) == 1 for a in answers)
    texts = [a["choices"][0]["turns"][0] for a in answers]
    assert all(t.strip() and t != "$ERROR$" for t in texts), texts
    # The tuned model ends its replies: EOS (the server's "stop"), not cut at --max-tokens;
    # and no stop or EOS text leaks into the answer.
    assert [a["choices"][0]["finish_reasons"] for a in answers] == [["stop"]] * 3, texts
    assert not any("<|im_end|>" in t or "</s>" in t for t in texts)
    # The judge saw each question and the model's own answer in MT-Bench's single-v1 prompt.
    system, template = JUDGE_PROMPTS["single-v1"]
    judged = [b for b in judge.requests if b["model"] == JUDGE]
    assert len(judged) == 3
    assert sorted(b["messages"][1]["content"] for b in judged) == sorted(
        template.format(question=q["turns"][0], answer=t) for q, t in zip(questions, texts))
    assert all(b["messages"][0] == {"role": "system", "content": system} for b in judged)
    assert all(b["temperature"] == 0 and b["max_tokens"] == 2048 for b in judged)
    # The score table is what the stand-in handed out.
    given = list(judge.ratings.values())
    by_cat = {c: [judge.ratings[b["messages"][1]["content"]] for b, q in
                  ((b, next(q for q in questions if q["turns"][0] in b["messages"][1]["content"]))
                   for b in judged) if q["category"] == c] for c in E2E_CATEGORIES}
    assert report["overall"] == pytest.approx(mean(given), abs=1e-4)
    assert report["categories"] == {c: {"score": pytest.approx(mean(v), abs=1e-4), "n": len(v)}
                                    for c, v in by_cat.items()}
    assert report["failed"] == {"answers": 0, "judge_unparsed": 0, "judge_errors": 0}
    # The key went to the judge as a bearer token and nowhere else.
    assert set(judge.auth) == {f"Bearer {SECRET}"}
    assert SECRET not in _all_text(out) + r.stdout + r.stderr
    # The table, from the same files: answers are reused, not asked again.
    r = _cli(*args, env=env)
    assert r.returncode == 0, r.stderr
    assert "overall" in r.stdout and all(c in r.stdout for c in E2E_CATEGORIES)
    assert f"{mean(given):.2f}" in r.stdout
    assert len(open(out / "model_answer" / f"{E2E_RUN}.jsonl").readlines()) == 3


def _mt_subset(tmp_path) -> str:
    """Three MT-Bench questions of three temperature classes, one with a reference answer
    (read from ../shared; the subset lives only in the test's temp dir)."""
    rows = [json.loads(ln) for ln in open(EVAL_PROMPTS / "mt_bench_question.jsonl")]
    pick = [next(r for r in rows if r["category"] == c) for c in ("writing", "math", "stem")]
    path = tmp_path / "mt_subset.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in pick))
    return str(path)


def test_mt_bench_two_turns_temperatures_references_and_failures(tmp_path, monkeypatch):
    """The answering model here is a stand-in too, so that the test can see exactly what
    the answering client sent: the category's temperature, and turn 2 asked after the
    model's own turn-1 answer."""
    qpath = _mt_subset(tmp_path)
    questions = [json.loads(ln) for ln in open(qpath)]
    failing = {}

    def rate(prompt: str):
        # One judgment without a rating: counted as failed, left out of the averages.
        if "### Assistant A:" in prompt and questions[2]["turns"][1] in prompt:
            failing["prompt"] = prompt
            return None
        return default_rate(prompt)

    monkeypatch.setenv("STANDIN_KEY", SECRET)
    with OpenAIStandIn(judge_model=JUDGE, rate=rate,
                       answer=lambda msgs: f"reply #{len(msgs)} to {msgs[-1]['content'][:12]}") as s:
        report = run_eval(EvalRequest(
            model="some-model", bench="mt-bench", questions=qpath, out_dir=str(tmp_path / "o"),
            judge_model=JUDGE, judge_base_url=f"{s.url}/v1", judge_api_key_env="STANDIN_KEY",
            base_url=f"{s.url}/v1", max_tokens=16, stop=("</s>",), parallel=2))
        asked = [b for b in s.requests if b["model"] == "some-model"]
        judged = [b for b in s.requests if b["model"] == JUDGE]
    assert len(asked) == 6 and len(judged) == 6
    for i, q in enumerate(questions):
        first, second = asked[2 * i], asked[2 * i + 1]
        want_t = {"writing": 0.7, "math": 0.0, "stem": 0.1}[q["category"]]
        assert first["temperature"] == second["temperature"] == want_t
        assert first["messages"] == [{"role": "user", "content": q["turns"][0]}]
        own = f"reply #1 to {q['turns'][0][:12]}"
        assert second["messages"] == [{"role": "user", "content": q["turns"][0]},
                                      {"role": "assistant", "content": own},
                                      {"role": "user", "content": q["turns"][1]}]
        assert first["stop"] == ["</s>"] and first["max_tokens"] == 16
    prompts = [b["messages"][1]["content"] for b in judged]
    math = questions[1]
    math_prompts = [p for p in prompts if math["turns"][0] in p]
    assert len(math_prompts) == 2
    assert all(f"{math['reference'][0]}\n" in p for p in math_prompts)  # reference shown
    assert any("### Reference answer:\n" + math["reference"][1] in p for p in math_prompts)
    writing_t2 = [p for p in prompts if questions[0]["turns"][1] in p]
    assert len(writing_t2) == 1 and "Reference" not in writing_t2[0]
    assert f"reply #3 to {questions[0]['turns'][1][:12]}" in writing_t2[0]
    # Scores: failed judgment counted, left out; the rest averaged per turn and overall.
    rows = [json.loads(ln) for ln in open(tmp_path / "o" / "model_judgment" / f"{JUDGE}_single.jsonl")]
    assert {tuple(r["judge"]) for r in rows} == {
        (JUDGE, "single-v1"), (JUDGE, "single-v1-multi-turn"), (JUDGE, "single-math-v1"),
        (JUDGE, "single-math-v1-multi-turn")}
    good = [r for r in rows if r["score"] >= 0]
    assert len(good) == 5 and report["failed"]["judge_unparsed"] == 1
    assert report["overall"] == pytest.approx(mean(r["score"] for r in good), abs=1e-4)
    for turn in ("1", "2"):
        assert report["turns"][turn] == pytest.approx(
            mean(r["score"] for r in good if str(r["turn"]) == turn), abs=1e-4)
    assert report["categories"]["stem"]["n"] == 1
    assert [p["model"] for p in report["published"]][:2] == ["Vicuna-7B-v1.3", "Vicuna-13B-v1.3"]
    assert report["judged_without_reference"] == 0


@pytest.mark.parametrize("text,want", [("Rating: [[8]]", 8.0), ("[[7.5]] then [[2]]", 7.5),
                                       ("Rating: [9]", 9.0), ("no rating at all", -1.0),
                                       ("[[ten]]", -1.0)])
def test_rating_is_parsed_as_mt_bench_does(text, want):
    assert parse_rating(text) == want


def test_bad_eval_input_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    base = dict(model="m", questions=str(EVAL_PROMPTS / "vicuna_bench_question.jsonl"),
                out_dir=str(tmp_path), judge_model=JUDGE, base_url="http://127.0.0.1:9/v1")
    with pytest.raises(EvalError, match=r"\$NO_SUCH_KEY_VAR, which is not set"):
        run_eval(EvalRequest(bench="vicuna-bench", judge_api_key_env="NO_SUCH_KEY_VAR", **base))
    with pytest.raises(EvalError, match="has 1 turn.*mt-bench questions have 2"):
        run_eval(EvalRequest(bench="mt-bench", judge=False, **base))
    env = dict(os.environ)
    r = _cli("eval", "m", "--bench", "mt-bench", "--questions", str(tmp_path / "none.jsonl"),
             "--judge-model", "j", "--base-url", "http://127.0.0.1:9/v1", env=env)
    assert r.returncode == 2 and "no such file" in r.stderr and r.stderr.strip().count("\n") == 0


@pytest.mark.slow  # a served endpoint and the judge: seconds
def test_eval_of_a_cloud_service_is_priced_and_sends_its_stop_strings(judge, tmp_path):
    """A service `vicuna-cloud serve` launched is in this machine's serve index with its
    $/hour and stop strings; eval --base-url uses both (the endpoint is the stand-in)."""
    home = tmp_path / "home"
    env = dict(os.environ, VICUNA_CLOUD_HOME=str(home), STANDIN_KEY=SECRET)
    code = ("from vicuna_cloud.serving import index; "
            "index.record('v0-run', 'v0-run-serve', 3.6, 'http://x', stop=['###'])")
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    r = _cli("eval", "v0-run", "--base-url", f"{judge.url}/v1", "--bench", "vicuna-bench",
             "--questions", str(EVAL_PROMPTS / "vicuna_bench_question.jsonl"), "--limit", "2",
             "--judge-model", JUDGE, "--judge-base-url", f"{judge.url}/v1",
             "--judge-api-key-env", "STANDIN_KEY", "--out", str(tmp_path / "o"), "--json",
             env=env)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    asked = [b for b in judge.requests if b["model"] == "v0-run"]
    assert len(asked) == 2 and all(b["stop"] == ["###"] for b in asked)
    cost = report["cost"]
    assert cost["price_per_hour"] == 3.6 and cost["source"] == "serve v0-run-serve"
    assert cost["usd"] == pytest.approx(cost["hours"] * 3.6, abs=1e-3) and cost["hours"] > 0
