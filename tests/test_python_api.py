"""README's "Python API" example runs as written, and the SDK keeps its promises: typed
objects, domain errors with a fix, options that make no sense for a backend refused."""

from __future__ import annotations

import contextlib
import io
import re
import typing

import pytest

from conftest import REPO


def _readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Python API"):]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m, "README's Python API section has no python block"
    return m.group(1)


def test_readme_python_api_example_runs():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(_readme_example(), "README.md", "exec"), {})
    lines = out.getvalue().splitlines()
    assert lines[0] == "2e-05 A100-80GB:8"
    assert re.fullmatch(r"(AWS|GCP) \$\d+\.\d\d/hour", lines[1]), lines[1]
    assert re.fullmatch(r"\$\d+ packed vs \$\d+ padded", lines[2]), lines[2]
    assert lines[3] == "--nodes must be at least 1 (got 0)"


def test_sdk_models_have_no_any_fields():
    from vicuna_cloud import sdk

    for name in sdk.__all__:
        obj = getattr(sdk, name)
        fields = getattr(obj, "model_fields", None) or getattr(obj, "__dataclass_fields__", None)
        if not isinstance(fields, dict):
            continue
        hints = typing.get_type_hints(obj)
        for field in fields:
            if field.startswith("_"):
                continue
            assert hints[field] is not typing.Any, f"{name}.{field} is Any"
            assert "Any" not in repr(hints[field]), f"{name}.{field}: {hints[field]!r}"


def test_every_sdk_error_is_a_vicuna_error():
    from vicuna_cloud import sdk
    from vicuna_cloud.data.reader import DataError
    from vicuna_cloud.recipes import RecipeError
    from vicuna_cloud.skypilot.credentials import CredentialsError
    from vicuna_cloud.skypilot.submit import ApiUnreachable
    from vicuna_cloud.storage.uri import InvalidBucketURI

    for cls in (DataError, RecipeError, CredentialsError, ApiUnreachable, InvalidBucketURI):
        assert issubclass(cls, sdk.VicunaError), cls
    with pytest.raises(sdk.ConfigError, match="unknown preset '70b'"):
        sdk.plan(sdk.LaunchRequest(preset="70b", dry_run=True))
    with pytest.raises(sdk.RunNotFound, match="--bucket"):
        sdk.status("never-launched-here")


@pytest.mark.parametrize("args, named", [
    (["tiny", "--local", "--data", "s3://b/d", "--gpus", "A100:1"], "--data, --gpus"),
    (["tiny", "--local", "--dry-run", "--json"], "--dry-run, --json"),
    (["tiny", "--local", "--spot"], "--spot/--no-spot"),
    (["7b", "--preemptions", "2"], "--preemptions"),
    (["7b", "--price-per-hour", "1.5", "--dry-run"], "--price-per-hour"),
])
def test_options_of_the_other_backend_are_an_error_naming_them(args, named, capsys, monkeypatch):
    from helpers.cli import run_cli

    r = run_cli(capsys, monkeypatch, "launch", *args)
    assert r.code == 2, (r.out, r.err)
    line = r.err.strip()
    assert line.startswith("error: ") and "\n" not in line and named in line, line


def test_sdk_calls_return_typed_objects_not_dicts():
    """Every call in ``sdk.__all__`` declares its return; none is a bare or JSON dict."""
    from vicuna_cloud import sdk

    for name in sdk.__all__:
        obj = getattr(sdk, name)
        if not callable(obj) or isinstance(obj, type):
            continue
        ret = typing.get_type_hints(obj).get("return", "missing")
        assert ret != "missing", f"sdk.{name} declares no return type"
        assert typing.get_origin(ret) is not dict and ret is not dict, f"sdk.{name} -> {ret!r}"
        assert "Any" not in repr(ret) and "JsonValue" not in repr(ret), f"sdk.{name} -> {ret!r}"


def test_methods_of_sdk_objects_return_typed_objects_not_dicts():
    """A plan's own methods (``LaunchPlan.summary``, ``ServePlan.summary``) are SDK calls too.
    A model's JSON form (``as_dict``, ``for_manifest``: like pydantic's ``model_dump``) is a
    dict by design."""
    from vicuna_cloud import sdk

    checked = []
    for name in sdk.__all__:
        cls = getattr(sdk, name)
        if not isinstance(cls, type):
            continue
        for meth, fn in vars(cls).items():
            if meth.startswith(("_", "model_")) or meth in ("as_dict", "for_manifest") \
                    or not callable(fn):
                continue
            ret = typing.get_type_hints(fn).get("return", "missing")
            assert ret != "missing", f"{name}.{meth} declares no return type"
            assert typing.get_origin(ret) is not dict and ret is not dict, f"{name}.{meth} -> {ret!r}"
            checked.append(f"{name}.{meth}")
    assert "LaunchPlan.summary" in checked and "ServePlan.summary" in checked, checked


def test_estimate_and_simulate_results_are_typed_and_are_what_the_cli_prints(capsys,
                                                                             monkeypatch):
    """Typed fields a notebook reads, and the same figures as `cost --json`."""
    import json

    from helpers.cli import run_cli
    from vicuna_cloud import sdk

    req = sdk.EstimateRequest(preset="7b", version="v1.1")
    est = sdk.estimate(req)
    assert isinstance(est, sdk.EstimateReport)
    assert est.ours.mode == "packed" and est.padded_ablation.mode == "padded"
    assert 0 < est.ours.cost_usd < est.padded_ablation.cost_usd
    assert est.bill.node == round(est.ours.node_usd, 2)
    assert est.lmsys_2023_as_run is not None and est.lmsys_2023_as_run.published_hours > 0
    assert est.sensitivity.ours.columns[0].startswith("spot min $")
    assert est.prices.cheapest_spot.spot == est.ours.price_per_node_hour
    r = run_cli(capsys, monkeypatch, "cost", "--estimate", "7b", "--version", "v1.1", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out) == json.loads(est.model_dump_json())

    sim = sdk.simulate(req, trials=200, seed=1)
    assert isinstance(sim, sdk.SimulationReport)
    assert sim.chosen.trials == 200 and sim.chosen.cost_p50 <= sim.chosen.cost_p90
    assert any(row.interval_minutes == sim.chosen.interval_minutes for row in sim.intervals)
    r = run_cli(capsys, monkeypatch, "cost", "--simulate", "7b", "--version", "v1.1", "--json",
                "--trials", "200", "--seed", "1")
    assert r.code == 0, r.err
    assert json.loads(r.out) == json.loads(sim.model_dump_json())


def test_eval_report_reads_report_json_into_typed_fields(tmp_path):
    """``sdk.evaluate``'s EvalReport is report.json's shape: it reads a written report."""
    from vicuna_cloud import sdk
    from vicuna_cloud.evaluation.report import summarize

    report = summarize(bench="vicuna-bench", model="m", judge_model="j", questions=[],
                       judgments=[], answer_failures=1, judge_unparsed=0, judge_errors=0,
                       without_reference=0, judge_tokens={}, wall_seconds=36.0,
                       price_per_hour=2.0, price_source="--price-per-hour")
    report["answers"] = {"path": "a.jsonl", "asked": 0, "reused": 0, "seconds": 0.0,
                         "errors": []}
    report["report_path"] = str(tmp_path / "report.json")
    typed = sdk.EvalReport.model_validate(report)
    assert typed.overall is None and typed.failed.answers == 1
    assert typed.cost is not None and typed.cost.usd == 0.02
    assert typed.model_dump(mode="json") == report
