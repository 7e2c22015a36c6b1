"""The two shell texts of the SkyPilot task: ``setup`` (install) and ``run`` (rendezvous).

Both are deliberately dumb: ``run`` only turns SkyPilot's node variables into a torchrun
rendezvous and runs ``torchrun ... -m train --run-uri "$VICUNA_RUN_URI"`` (passing the trainer's
own exit code through, which torchrun does not); every other
decision (hyperparameters, resume, budget) is made in Python from run.json. No user string
is pasted into either text unquoted: values go through ``shlex.quote`` (and the run URI
reaches the node as an environment variable, never as script text).
"""

from __future__ import annotations

import shlex

#: torch release installed on the node; tests keep it equal to pyproject's [train] pin.
TORCH_VERSION = "2.13.0"
#: Fixed rendezvous port on the head node (torchrun's default).
MASTER_PORT = 29500
#: Where setup puts the node's virtual environment and its "installed" marker.
NODE_HOME = "$HOME/.vicuna-cloud"

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
NNODES="${{SKYPILOT_NUM_NODES:-$(printf '%s\\n' "$NODE_IPS" | grep -c .)}}"
NODE_RANK="${{SKYPILOT_NODE_RANK:-0}}"
NPROC_PER_NODE="${{SKYPILOT_NUM_GPUS_PER_NODE:-1}}"
MASTER_ADDR="$(printf '%s\\n' "$NODE_IPS" | grep -m1 .)"
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
# `--run-path` and stops. torchrun exits 1 whatever its workers returned; the trainer writes its own exit code
# (75 after a preemption notice, 78 for a bad spec) to this file so that SkyPilot's
# recover_on_exit_codes sees the real one.
export VICUNA_EXIT_CODE_FILE="${{VICUNA_EXIT_CODE_FILE:-/tmp/vicuna-exit-code}}"
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
WANT_TORCH={torch_version}
"""

_SETUP_BODY = """\
# First, before any install: open this VM's ledger segment (billing runs from boot) and
# check the budget; a VM that starts over budget installs nothing (exit 0, see `run`).
if [ "${{SKYPILOT_NODE_RANK:-0}}" = "0" ]; then
  VC_RC=0
  python3 -m vicuna_cloud.nodeside open || VC_RC=$?
  if [ "$VC_RC" = "{exit_stop}" ]; then exit 0; fi
fi
# Idempotent: on a recovery onto a VM that already has this code version, skip at once.
set -euo pipefail
VENV="{node_home}/venv"
MARKER="{node_home}/installed"
if [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$WANT_VERSION" ] \\
   && "$VENV/bin/python" -c 'import torch, vicuna_cloud, train' 2>/dev/null; then
  echo "vicuna-cloud $WANT_VERSION already installed; setup skipped"
  exit 0
fi
mkdir -p "{node_home}"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch first at its pin, so the project install cannot resolve a different build.
"$VENV/bin/python" -m pip install -q "torch==$WANT_TORCH"
# The workdir is the exact source tree that rendered this task (SkyPilot syncs it).
"$VENV/bin/python" -m pip install -q -e ".[train]"
HAVE_VERSION="$("$VENV/bin/python" -c 'import vicuna_cloud; print(vicuna_cloud.__version__)')"
case "$WANT_VERSION" in
  "$HAVE_VERSION"|"$HAVE_VERSION"+*) ;;
  *) echo "workdir holds vicuna-cloud $HAVE_VERSION but the task wants $WANT_VERSION" >&2
     exit {exit_config} ;;
esac
printf '%s\\n' "$WANT_VERSION" > "$MARKER.tmp"
mv "$MARKER.tmp" "$MARKER"
echo "vicuna-cloud $WANT_VERSION installed"
"""


def run_script() -> str:
    """The task's ``run`` text; identical for every preset (the node reads run.json)."""
    from vicuna_cloud.exit_codes import EXIT_CONFIG

    from vicuna_cloud.nodeside import EXIT_STOP

    return _RUN.format(node_home=NODE_HOME, port=MASTER_PORT, exit_config=EXIT_CONFIG,
                       exit_stop=EXIT_STOP)


def setup_values(code_version: str, torch_version: str = TORCH_VERSION) -> str:
    """The only lines of ``setup`` that carry values; each is shell-quoted."""
    return _SETUP_VALUES.format(
        code_version=shlex.quote(code_version), torch_version=shlex.quote(torch_version)
    )


def setup_script(code_version: str, torch_version: str = TORCH_VERSION) -> str:
    """The task's ``setup`` text: install torch, then this exact source tree, once per VM."""
    from vicuna_cloud.exit_codes import EXIT_CONFIG

    from vicuna_cloud.nodeside import EXIT_STOP

    return setup_values(code_version, torch_version) + _SETUP_BODY.format(
        node_home=NODE_HOME, exit_config=EXIT_CONFIG, exit_stop=EXIT_STOP
    )
