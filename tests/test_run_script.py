"""The task's shell: run (rendezvous) and setup (install), executed for real with bash.

`torchrun`, `python3` and the venv's python are stand-ins on PATH that record their
arguments: the thing under test is the shell text SkyPilot will run on each node.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from vicuna_cloud.skypilot.run_script import (
    MASTER_PORT, TORCH_VERSION, run_script, setup_script, setup_values,
)

REPO = Path(__file__).resolve().parents[1]
RUN_URI = "s3://my-vicuna-bucket/runs/vicuna-7b-v1-5-example/run.json"


def _exe(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC | stat.S_IXGRP | stat.S_IXOTH)


@pytest.fixture
def sandbox(tmp_path):
    """A HOME and a bin/ with a recording `torchrun`; returns (env, argv_log)."""
    home = tmp_path / "home"
    home.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "torchrun.argv.jsonl"
    _exe(bin_dir / "torchrun", f"""#!{os.environ.get('PYTHON', '/usr/bin/env python3')}
import json, sys
with open({str(log)!r}, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
""")
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home)}
    return env, log


def _shipped_run_text() -> str:
    """The run section exactly as committed in tasks/7b.yaml."""
    return yaml.safe_load((REPO / "tasks" / "7b.yaml").read_text())["run"]


def _run(text: str, env: dict, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", text], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=30)


def _argv(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.mark.parametrize("rank", [0, 1])
def test_two_node_rendezvous(sandbox, tmp_path, rank):
    env, log = sandbox
    env.update({
        "SKYPILOT_NODE_IPS": "10.1.2.3\n10.1.2.4\n",
        "SKYPILOT_NUM_NODES": "2",
        "SKYPILOT_NODE_RANK": str(rank),
        "SKYPILOT_NUM_GPUS_PER_NODE": "8",
        "VICUNA_RUN_URI": RUN_URI,
    })
    assert _shipped_run_text() == run_script()
    proc = _run(_shipped_run_text(), env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert _argv(log) == [[
        "--nnodes", "2", "--nproc_per_node", "8", "--node_rank", str(rank),
        "--master_addr", "10.1.2.3", "--master_port", str(MASTER_PORT),
        "-m", "train", "--run-uri", RUN_URI,
    ]]


def test_node_count_falls_back_to_ip_count(sandbox, tmp_path):
    env, log = sandbox
    env.update({"SKYPILOT_NODE_IPS": "10.0.0.7\n10.0.0.8\n10.0.0.9", "SKYPILOT_NODE_RANK": "2",
                "SKYPILOT_NUM_GPUS_PER_NODE": "4", "VICUNA_RUN_URI": RUN_URI})
    proc = _run(run_script(), env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    argv = _argv(log)[0]
    assert argv[argv.index("--nnodes") + 1] == "3"
    assert argv[argv.index("--node_rank") + 1] == "2"
    assert argv[argv.index("--master_addr") + 1] == "10.0.0.7"
    assert argv[argv.index("--nproc_per_node") + 1] == "4"


def test_rank_outside_nodes_and_missing_uri_never_start_torchrun(sandbox, tmp_path):
    env, log = sandbox
    base = {"SKYPILOT_NODE_IPS": "10.0.0.1\n10.0.0.2", "SKYPILOT_NUM_NODES": "2",
            "SKYPILOT_NUM_GPUS_PER_NODE": "8"}
    proc = _run(run_script(), {**env, **base, "SKYPILOT_NODE_RANK": "0"}, tmp_path)
    assert proc.returncode == 78 and "VICUNA_RUN_URI" in proc.stderr
    proc = _run(run_script(), {**env, **base, "SKYPILOT_NODE_RANK": "2",
                               "VICUNA_RUN_URI": RUN_URI}, tmp_path)
    assert proc.returncode == 78 and "outside 2 nodes" in proc.stderr
    assert _argv(log) == []


def test_hostile_run_uri_is_one_argument_not_shell(sandbox, tmp_path):
    env, log = sandbox
    hostile = "s3://b/x\"; touch pwned-run; echo \"$(touch pwned-sub)`touch pwned-bt`"
    env.update({"SKYPILOT_NODE_IPS": "10.0.0.1", "SKYPILOT_NUM_NODES": "1",
                "SKYPILOT_NODE_RANK": "0", "SKYPILOT_NUM_GPUS_PER_NODE": "1",
                "VICUNA_RUN_URI": hostile})
    proc = _run(run_script(), env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert _argv(log)[0][-2:] == ["--run-uri", hostile]
    assert not list(tmp_path.glob("pwned*"))


def test_hostile_code_version_cannot_inject_into_setup(tmp_path):
    hostile = "1.0'; touch pwned; echo '$(touch pwned2)\n`touch pwned3`"
    text = setup_values(hostile) + 'printf %s "$WANT_VERSION"'
    proc = subprocess.run(["bash", "-c", text], cwd=tmp_path, capture_output=True, text=True,
                          timeout=10)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == hostile
    assert not list(tmp_path.glob("pwned*"))


def test_torch_pin_matches_pyproject():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["train"]
    assert f"torch=={TORCH_VERSION}" in extras
    node = (REPO / "train" / "requirements.txt").read_text().splitlines()
    assert f"torch=={TORCH_VERSION}" in node


def _setup_sandbox(tmp_path):
    """A node HOME whose ~/.local/bin/uv is a stand-in that logs every call and 'creates' a
    venv whose python answers setup's questions; a workdir with the real requirements."""
    home = tmp_path / "home"
    (home / ".local" / "bin").mkdir(parents=True)
    work = tmp_path / "work"
    (work / "train").mkdir(parents=True)
    (work / "train" / "requirements.txt").write_bytes(
        (REPO / "train" / "requirements.txt").read_bytes())
    log = tmp_path / "calls.log"
    venv_python = f"""#!/bin/bash
echo "venv-python $*" >> {log}
case "$2" in *sysconfig*) echo "$(dirname "$0")/../site" ;; *__version__*) echo 0.1.0 ;; esac
exit 0
"""
    _exe(home / ".local" / "bin" / "uv", f"""#!/bin/bash
echo "uv $*" >> {log}
if [ "$1" = "venv" ]; then
  eval "d=\${{$#}}"; mkdir -p "$d/bin" "$d/site"
  cat > "$d/bin/python" <<'PY'
{venv_python}PY
  chmod +x "$d/bin/python"
fi
""")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home)}
    return env, log, home, work


def test_setup_makes_a_311_venv_by_uv_installs_the_pins_and_skips_on_recovery(tmp_path):
    env, log, home, work = _setup_sandbox(tmp_path)
    version = "0.1.0+gabcdef123456"
    proc = _run(setup_script(version), env, work)
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    uv = [c for c in calls if c.startswith("uv ")]
    assert uv[0] == f"uv venv --quiet --python 3.11 {home}/.vicuna-cloud/venv"
    assert uv[1].endswith(f"pip install --quiet --python {home}/.vicuna-cloud/venv/bin/python "
                          "-r train/requirements.txt")
    assert not any("wandb" in c for c in calls)  # no WANDB_API_KEY: no W&B
    assert (home / ".vicuna-cloud" / "venv" / "site" / "vicuna_cloud_workdir.pth"
            ).read_text().strip() == str(work)
    assert (home / ".vicuna-cloud" / "installed").read_text().startswith(version + " python3.11")
    # A recovery onto the same disk: nothing is installed again.
    log.unlink()
    proc = _run(setup_script(version), env, work)
    assert proc.returncode == 0 and "setup skipped" in proc.stdout
    assert not any(c.startswith("uv ") for c in log.read_text().splitlines())
    # W&B asked for (its key arrives as a secret in setup's environment): installs it.
    log.unlink()
    proc = _run(setup_script(version), {**env, "WANDB_API_KEY": "k"}, work)
    assert proc.returncode == 0, proc.stderr
    assert any(c.endswith(" wandb==0.31.0") for c in log.read_text().splitlines())
    # Another code version: installs again.
    log.unlink()
    proc = _run(setup_script("0.1.0+gffffffffffff"), env, work)
    assert proc.returncode == 0
    assert any(" -r train/requirements.txt" in c for c in log.read_text().splitlines())


def test_setup_refuses_a_workdir_of_another_version_or_other_requirements(tmp_path):
    env, log, home, work = _setup_sandbox(tmp_path)
    proc = _run(setup_script("0.2.0+g123"), env, work)
    assert proc.returncode == 78
    assert "wants 0.2.0+g123" in proc.stderr
    assert not (home / ".vicuna-cloud" / "installed").exists()
    (work / "train" / "requirements.txt").write_text("torch\n")  # not what was rendered
    proc = _run(setup_script("0.1.0"), env, work)
    assert proc.returncode == 78 and "is not the one the task was" in proc.stderr
    (home / ".local" / "bin" / "uv").unlink()  # not a SkyPilot node
    proc = _run(setup_script("0.1.0"), env, work)
    assert proc.returncode == 78 and "no uv at" in proc.stderr


def test_scripts_carry_no_hyperparameters():
    text = run_script() + setup_script("0.1.0")
    for word in ("learning_rate", "2e-05", "epochs", "global_batch", "max_length"):
        assert word not in text
    assert re.search(r"-m train --run-uri \"\$VICUNA_RUN_URI\"", text)


@pytest.mark.parametrize("written,torchrun_rc,expected", [
    ("75", 1, 75),   # preemption notice: SkyPilot must see 75 (recover_on_exit_codes)
    ("69", 1, 69),   # transient fault (storage, NCCL): recovered too
    ("78", 1, 78),   # bad spec
    ("", 1, 1),      # a crash that wrote nothing stays a failure
    ("", 0, 0),      # success (or a budget stop) stays 0
])
def test_run_passes_the_trainers_exit_code_through_torchrun(tmp_path, written, torchrun_rc,
                                                          expected):
    """torchrun exits 1 whatever its workers returned; the run script must recover the
    trainer's own code from VICUNA_EXIT_CODE_FILE."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _exe(bin_dir / "torchrun", f"""#!/bin/sh
[ -n "{written}" ] && printf '%s' "{written}" > "$VICUNA_EXIT_CODE_FILE"
exit {torchrun_rc}
""")
    code_file = tmp_path / "exit-code"
    code_file.write_text("99")  # a stale file from an earlier attempt must not count
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path),
           "SKYPILOT_NODE_IPS": "127.0.0.1", "SKYPILOT_NODE_RANK": "0",
           "SKYPILOT_NUM_GPUS_PER_NODE": "1", "VICUNA_RUN_URI": RUN_URI,
           "VICUNA_EXIT_CODE_FILE": str(code_file)}
    proc = _run(run_script(), env, tmp_path)
    assert proc.returncode == expected, proc.stderr


@pytest.mark.slow  # the real torchrun
def test_run_script_with_the_real_torchrun_reaches_the_trainer(tmp_path):
    """The real torchrun parses our argv (it once rejected `--run` as an abbreviation of
    its `--run-path`), starts `python -m train`, and the trainer's own exit code for an
    unreadable run spec (78, not torchrun's 1) comes out of the run script."""
    venv_bin = Path(sys.executable).parent
    assert (venv_bin / "torchrun").exists()
    env = {**os.environ, "PATH": f"{venv_bin}:/usr/bin:/bin", "HOME": str(tmp_path),
           "SKYPILOT_NODE_IPS": "127.0.0.1", "SKYPILOT_NODE_RANK": "0",
           "SKYPILOT_NUM_GPUS_PER_NODE": "1",
           "VICUNA_RUN_URI": str(tmp_path / "missing" / "run.json"),
           "VICUNA_EXIT_CODE_FILE": str(tmp_path / "exit-code")}
    proc = subprocess.run(["bash", "-c", run_script()], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert "ambiguous option" not in proc.stderr
    assert proc.returncode == 78, proc.stderr[-2000:]
