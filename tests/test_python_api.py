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
