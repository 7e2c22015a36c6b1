"""The two shell texts of the SkyPilot task: ``setup`` (install) and ``run`` (rendezvous).

Both are deliberately dumb: ``run`` only turns SkyPilot's node variables into a torchrun
rendezvous and runs ``torchrun ... -m train --run-uri "$VICUNA_RUN_URI"`` (passing the trainer's
own exit code through, which torchrun does not); every other decision (hyperparameters,
resume, budget) is made in Python from run.json. No user string is pasted into either text
unquoted: values go through ``shlex.quote`` (and the run URI reaches the node as an
environment variable, never as script text).

Why setup uses uv and not ``python3 -m venv``: SkyPilot 0.14.1 runs user commands in
``~/sky-user-env``, a venv that uv builds from the image's system ``python3``
(sky/skylet/constants.py, SKY_USER_ENV_CREATION_COMMANDS), and the default GPU images are
Ubuntu 22.04 with Python 3.10, below our ``requires-python >= 3.11``. The uv SkyPilot
installs on every node (``~/.local/bin/uv``, constants.py SKY_UV_INSTALL_DIR) creates a
3.11 venv whatever the image has (it downloads a managed CPython when none is there), so
nothing in setup depends on the image's Python. The node installs only what the trainer
imports (train/requirements.txt: no skypilot, no cloud CLIs); the source tree is put on
the venv's path with a .pth file, so no build backend runs on the node.
"""

from __future__ import annotations

import hashlib
import shlex
from pathlib import Path

#: torch release installed on the node; tests keep it equal to pyproject's [train] pin.
TORCH_VERSION = "2.13.0"
#: The Python the node's venv gets (pyproject's requires-python), whatever the image has.
NODE_PYTHON = "3.11"
#: W&B, installed by setup only when WANDB_API_KEY reaches the node as a secret.
WANDB_REQUIREMENT = "wandb==0.31.0"
#: Fixed rendezvous port on the head node (torchrun's default).
MASTER_PORT = 29500
#: Where setup puts the node's virtual environment and its "installed" marker.
NODE_HOME = "$HOME/.vicuna-cloud"
#: The trainer's pinned requirements, relative to the workdir (the synced source tree).
REQUIREMENTS = "train/requirements.txt"
#: uv as SkyPilot installs it on every node (sky/skylet/constants.py SKY_UV_INSTALL_DIR).
NODE_UV = "$HOME/.local/bin/uv"

_RUN = """\
# Rendezvous only; everything else is decided in Python from run.json (DESIGN.md, 3).
set -euo pipefail
# Budget spent (setup ended this VM's ledger segment as "budget"): exit 0, so the job
# succeeds and SkyPilot starts no other VM.
VC_GATE=0
python3 -m vicuna_cloud.nodeside gate || VC_GATE=$?
if [ "$VC_GATE" = "{exit_stop}" ]; then exit 0; fi
export PATH="{node_home}/venv/bin:$PATH"
NODE_IPS="${{SKYPILOT_NODE_IPS:-127.0.0.1}}"
# Count the node IPs and take the first as master in the shell itself: a `printf | grep -m1`
# pipe can die of SIGPIPE (exit 141) under pipefail when grep stops reading early.
NODE_COUNT=0
MASTER_ADDR=""
for ip in $NODE_IPS; do
  NODE_COUNT=$((NODE_COUNT + 1))
  if [ -z "$MASTER_ADDR" ]; then MASTER_ADDR="$ip"; fi
done
NNODES="${{SKYPILOT_NUM_NODES:-$NODE_COUNT}}"
NODE_RANK="${{SKYPILOT_NODE_RANK:-0}}"
# One process per GPU; a CPU task (SkyPilot sets 0 GPUs) runs VICUNA_PROCS_PER_NODE.
NPROC_PER_NODE="${{SKYPILOT_NUM_GPUS_PER_NODE:-0}}"
if [ "$NPROC_PER_NODE" -lt 1 ]; then NPROC_PER_NODE="${{VICUNA_PROCS_PER_NODE:-1}}"; fi
if [ -z "${{VICUNA_RUN_URI:-}}" ]; then
  echo "VICUNA_RUN_URI is not set; launch with 'vicuna-cloud launch'" >&2
  exit {exit_config}
fi
if [ "$NODE_RANK" -ge "$NNODES" ]; then
  echo "node rank $NODE_RANK is outside $NNODES nodes" >&2
  exit {exit_config}
fi
echo "vicuna-cloud: node $NODE_RANK/$NNODES, $NPROC_PER_NODE procs, master $MASTER_ADDR:{port}"
# `--run-uri`, not `--run`: torchrun's own parser takes `--run` for an abbreviation of its
# `--run-path` and stops. torchrun exits 1 whatever its workers returned; the trainer
# writes its own exit code (75 preempted, 69 transient, 78 bad spec) to this file so that
# SkyPilot's recover_on_exit_codes sees the real one.
export VICUNA_EXIT_CODE_FILE="${{VICUNA_EXIT_CODE_FILE:-${{TMPDIR:-/tmp}}/vicuna-exit-code}}"
# Every packed micro-batch has its own shape: expandable segments let the CUDA caching
# allocator grow blocks in place instead of fragmenting into ones no later shape fits.
export PYTORCH_CUDA_ALLOC_CONF="${{PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}}"
rm -f "$VICUNA_EXIT_CODE_FILE"
rc=0
torchrun \\
  --nnodes "$NNODES" \\
  --nproc_per_node "$NPROC_PER_NODE" \\
  --node_rank "$NODE_RANK" \\
  --master_addr "$MASTER_ADDR" \\
  --master_port {port} \\
  -m train --run-uri "$VICUNA_RUN_URI" || rc=$?
if [ "$rc" -ne 0 ] && [ -s "$VICUNA_EXIT_CODE_FILE" ]; then
  rc="$(cat "$VICUNA_EXIT_CODE_FILE")"
fi
exit "$rc"
"""

_SETUP_VALUES = """\
WANT_VERSION={code_version}
WANT_PYTHON={python}
WANT_REQUIREMENTS_SHA256={requirements_sha256}
WANDB_REQUIREMENT={wandb}
"""

_SETUP_BODY = """\
# First, before any install: open this VM's ledger segment (billing runs from boot) and
# check the budget; a VM that starts over budget installs nothing (exit 0, see `run`).
if [ "${{SKYPILOT_NODE_RANK:-0}}" = "0" ]; then
  VC_RC=0
  python3 -m vicuna_cloud.nodeside open || VC_RC=$?
  if [ "$VC_RC" = "{exit_stop}" ]; then exit 0; fi
fi
# Idempotent: a node that already has this code, these requirements and this Python skips.
set -euo pipefail
UV="{uv}"
VENV="{node_home}/venv"
MARKER="{node_home}/installed"
REQUIREMENTS="{requirements}"
WANT="$WANT_VERSION python$WANT_PYTHON req:$WANT_REQUIREMENTS_SHA256 wandb:${{WANDB_API_KEY:+yes}}"
if [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$WANT" ] \\
   && "$VENV/bin/python" -c 'import torch, vicuna_cloud, train' 2>/dev/null; then
  echo "vicuna-cloud $WANT_VERSION already installed; setup skipped"
  exit 0
fi
fail() {{ echo "vicuna-cloud setup: $2" >&2; exit "$1"; }}
[ -x "$UV" ] || fail {exit_config} "no uv at $UV (SkyPilot 0.14 installs it on every node); \\
is this image set up by SkyPilot?"
HAVE_SHA="$(sha256sum "$REQUIREMENTS" 2>/dev/null | cut -d' ' -f1)" || true
[ "$HAVE_SHA" = "$WANT_REQUIREMENTS_SHA256" ] || fail {exit_config} \\
  "the workdir's $REQUIREMENTS (sha256 ${{HAVE_SHA:-missing}}) is not the one the task was \\
rendered with ($WANT_REQUIREMENTS_SHA256); launch again from the tree you rendered"
# A network blip to the package index is retried here; a persistent failure ends the job
# (exit 1, not retried by SkyPilot): relaunch with the same --run-id to resume.
retry() {{ local n; for n in 1 2 3; do "$@" && return 0; echo "retrying ($n/3): $*" >&2; \\
  sleep $((n * 10)); done; return 1; }}
# Never the image's interpreter for installs (SkyPilot sets the same for its own uv,
# sky/skylet/constants.py SKY_UV_CMD); default link mode: hardlinks from uv's cache.
export UV_SYSTEM_PYTHON=false
rm -f "$MARKER"
mkdir -p "{node_home}"
# uv takes a 3.11 from the image when it has one, else downloads a managed CPython.
mkvenv() {{ rm -rf "$VENV" && "$UV" venv --quiet --python "$WANT_PYTHON" "$VENV"; }}
retry mkvenv || fail {exit_failed} "uv venv --python $WANT_PYTHON failed"
retry "$UV" pip install --quiet --python "$VENV/bin/python" -r "$REQUIREMENTS" \\
  || fail {exit_failed} "installing $REQUIREMENTS failed"
if [ -n "${{WANDB_API_KEY:-}}" ]; then
  retry "$UV" pip install --quiet --python "$VENV/bin/python" "$WANDB_REQUIREMENT" \\
    || fail {exit_failed} "installing $WANDB_REQUIREMENT failed"
fi
# The workdir is the exact source tree that rendered this task (SkyPilot syncs it): put it
# on the venv's path instead of building and installing it.
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
printf '%s\\n' "$PWD" > "$SITE/vicuna_cloud_workdir.pth"
HAVE_VERSION="$("$VENV/bin/python" -c 'import torch, train, vicuna_cloud; print(vicuna_cloud.__version__)')" \\
  || fail {exit_config} "the installed environment cannot import the trainer"
case "$WANT_VERSION" in
  "$HAVE_VERSION"|"$HAVE_VERSION"+*) ;;
  *) fail {exit_config} "workdir holds vicuna-cloud $HAVE_VERSION but the task wants $WANT_VERSION" ;;
esac
printf '%s\\n' "$WANT" > "$MARKER.tmp"
mv "$MARKER.tmp" "$MARKER"
echo "vicuna-cloud $WANT_VERSION installed, Python $("$VENV/bin/python" -c 'import platform; print(platform.python_version())')"
"""


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def requirements_sha256(root: Path | None = None) -> str:
    """sha256 of train/requirements.txt in the tree that renders the task."""
    return hashlib.sha256((root or repo_root()).joinpath(REQUIREMENTS).read_bytes()).hexdigest()


def run_script() -> str:
    """The task's ``run`` text; identical for every preset (the node reads run.json)."""
    from vicuna_cloud.exit_codes import EXIT_CONFIG

    from vicuna_cloud.nodeside import EXIT_STOP

    return _RUN.format(node_home=NODE_HOME, port=MASTER_PORT, exit_config=EXIT_CONFIG,
                       exit_stop=EXIT_STOP)


def setup_values(code_version: str, requirements_sha: str | None = None) -> str:
    """The only lines of ``setup`` that carry values; each is shell-quoted."""
    return _SETUP_VALUES.format(
        code_version=shlex.quote(code_version), python=shlex.quote(NODE_PYTHON),
        requirements_sha256=shlex.quote(requirements_sha or requirements_sha256()),
        wandb=shlex.quote(WANDB_REQUIREMENT),
    )


def setup_script(code_version: str, requirements_sha: str | None = None) -> str:
    """The task's ``setup`` text: a 3.11 venv by uv, the trainer's pins, this source tree."""
    from vicuna_cloud.exit_codes import EXIT_CONFIG, EXIT_FAILED

    from vicuna_cloud.nodeside import EXIT_STOP

    return setup_values(code_version, requirements_sha) + _SETUP_BODY.format(
        node_home=NODE_HOME, uv=NODE_UV, requirements=REQUIREMENTS,
        exit_config=EXIT_CONFIG, exit_failed=EXIT_FAILED, exit_stop=EXIT_STOP,
    )
