"""`vicuna-cloud --version`: the tool's own version (a command's --version is the recipe's)."""

from __future__ import annotations

import subprocess
import sys


def test_version_flag_prints_the_package_version():
    from importlib.metadata import version

    out = subprocess.run([sys.executable, "-m", "vicuna_cloud", "--version"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"vicuna-cloud {version('vicuna-cloud')}"
