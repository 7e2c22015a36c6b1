"""Shell completion through the real protocol: the console script run as bash runs it
(_VICUNA_CLOUD_COMPLETE=complete_bash, COMP_WORDS, COMP_CWORD), candidates on stdout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vicuna_cloud import run_index
from vicuna_cloud.recipes import PRESET_NAMES, VERSIONS

EXE = Path(sys.executable).with_name("vicuna-cloud")

# The console script in a child process per case (~1 s each): `make test`, not test-fast.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A run index with two runs, as launch writes it."""
    h = tmp_path_factory.mktemp("home")
    old = os.environ.get("VICUNA_CLOUD_HOME")
    os.environ["VICUNA_CLOUD_HOME"] = str(h)
    try:
        run_index.record(run_index.RunRecord(run_id="vicuna-7b-v1-5-20261201-1", preset="7b",
                                             bucket_uri="s3://b/p", backend="skypilot",
                                             job_id=3, launched_at="2026-12-01T10:00:00"))
        run_index.record(run_index.RunRecord(run_id="tiny-local-2", preset="tiny",
                                             bucket_uri=str(h / "b"), backend="local",
                                             launched_at="2026-12-01T11:00:00"))
    finally:
        if old is None:
            os.environ.pop("VICUNA_CLOUD_HOME")
        else:
            os.environ["VICUNA_CLOUD_HOME"] = old
    return h


def complete(line: str, home) -> list[str]:
    """What bash would offer after ``line`` (a trailing space completes a new word)."""
    words = line.split() + ([""] if line.endswith(" ") else [])
    env = dict(os.environ, _VICUNA_CLOUD_COMPLETE="complete_bash", COMP_WORDS=line,
               COMP_CWORD=str(len(words) - 1), VICUNA_CLOUD_HOME=str(home))
    r = subprocess.run([str(EXE)], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    return r.stdout.split()


def test_presets(home):
    assert complete("vicuna-cloud launch ", home) == list(PRESET_NAMES)
    assert complete("vicuna-cloud render 1", home) == ["13b"]
    assert complete("vicuna-cloud cost --estimate ", home) == list(PRESET_NAMES)


def test_versions(home):
    assert complete("vicuna-cloud launch 7b --version ", home) == list(VERSIONS)
    assert complete("vicuna-cloud launch 7b --version v1.5", home) == ["v1.5", "v1.5-16k"]
    assert set(VERSIONS) == {"v0", "v1.1", "v1.3", "v1.5", "v1.5-16k"}


@pytest.mark.parametrize("command", ["status", "logs", "cancel", "plot", "cost", "export",
                                     "chat"])
def test_run_ids_from_the_index_newest_first(home, command):
    assert complete(f"vicuna-cloud {command} ", home) == ["tiny-local-2",
                                                          "vicuna-7b-v1-5-20261201-1"]
    assert complete(f"vicuna-cloud {command} vic", home) == ["vicuna-7b-v1-5-20261201-1"]


def test_run_id_option_and_an_empty_index(home, tmp_path):
    assert complete("vicuna-cloud launch tiny --local --run-id t", home) == ["tiny-local-2"]
    assert complete("vicuna-cloud status ", tmp_path / "nothing-here") == []


def test_set_keys(home):
    got = complete("vicuna-cloud launch 7b --set hyper.l", home)
    assert got == ["hyper.learning_rate=", "hyper.lr_schedule=", "hyper.log_every_steps="]
    assert "checkpoint.interval_steps=" in complete("vicuna-cloud render 7b --set checkpoint.",
                                                    home)
