"""Every command's --help renders (rich markup in help text once crashed `launch --help`)."""

import re

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from vicuna_cloud.cli import app


def _command_paths(cmd, prefix=()):
    yield prefix
    if hasattr(cmd, "commands"):  # a group (typer vendors its own click)
        for name, sub in cmd.commands.items():
            yield from _command_paths(sub, prefix + (name,))


ROOT = get_command(app)
PATHS = list(_command_paths(ROOT))


def test_all_main_commands_are_registered():
    names = {p[0] for p in PATHS if p}
    for expected in ("presets", "render", "launch", "status", "logs", "cancel", "cost",
                     "data", "export", "chat", "serve", "eval", "delta"):
        assert expected in names, f"`vicuna-cloud {expected}` is missing"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "root")
def test_help_renders(path):
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def _command(path):
    cmd = ROOT
    for name in path:
        cmd = cmd.commands[name]
    return cmd


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "root")
def test_every_option_is_described_and_every_command_has_an_example(path):
    cmd = _command(path)
    undescribed = [p.opts[0] if p.opts else p.name for p in cmd.params
                   if not (getattr(p, "help", None) or "").strip()]
    assert undescribed == [], f"`vicuna-cloud {' '.join(path)}`: no help for {undescribed}"
    text = f"{cmd.help or ''}\n{cmd.epilog or ''}"
    examples = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("Example:")]
    assert examples, f"`vicuna-cloud {' '.join(path)}` has no 'Example:' line"
    # The example is a command line of this very command.
    assert all(ln.removeprefix("Example:").split()[0] == "vicuna-cloud" for ln in examples)
    if path:
        assert any(" ".join(("vicuna-cloud", *path)) in ln for ln in examples), examples


# Implementation names that once leaked into help: SDK calls, module paths, API versions.
LEAKS = re.compile(r"\bsky\.\w|\bvicuna_cloud\.\w|\b\w+_v2\b|\b\w+\.py\b|tail_logs|queue_v2")


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "root")
def test_help_shows_no_bool_metavar_and_no_implementation_names(path):
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output  # a flag takes no value
    leaks = LEAKS.findall(result.output)
    assert leaks == [], leaks
