"""Every command's --help renders (rich markup in help text once crashed `launch --help`)."""

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
