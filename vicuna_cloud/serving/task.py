"""The SkyServe service that serves a run's export with vLLM's OpenAI-compatible server.

A task with a ``service:`` section (SkyServe keeps the replica alive: a preempted spot
replica is replaced, which a managed job, meant to finish, would not do), checked like the
training tasks: our secret rule, then SkyPilot's own parser (``sky.Task.from_yaml_config``).

What the export decides, read from its files at render time (never guessed):
- the chat template: tokenizer_config.json's ``chat_template``, passed to vLLM with
  ``--chat-template`` (so the service renders prompts exactly as the export does);
- the stop tokens: generation_config.json's ``eos_token_id`` (plus the tokenizer's eos),
  written as the generation config vLLM loads with ``--generation-config``; vLLM adds
  every listed id to its stop tokens. vLLM's server takes no default stop *strings*: the
  template's stop string (``</s>`` for v1.1, which is the eos token; ``###`` for v0, which
  is not one token) is in ``VICUNA_STOP_STRINGS`` for clients, and `vicuna-cloud eval`
  sends it with every request;
- the context length: config.json's ``max_position_embeddings`` (``--max-model-len``).

The node installs only vLLM (pinned) into its own environment with uv; the model comes
from the bucket (``runs/<id>/final``, COPY-ed to local disk once per replica).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any, Optional

from vicuna_cloud.errors import ConfigError

VLLM_VERSION = "0.33.0"
PYTHON_VERSION = "3.12"
SERVE_PORT = 8000
MODEL_MOUNT = "/vicuna/model"
API_KEY_SECRET = "VICUNA_SERVE_API_KEY"
#: Time for uv to install vLLM and the weights to be copied before the first probe counts.
READINESS_DELAY_S = 1800


class ServeTaskError(ConfigError):
    """The export or the options cannot make a servable task."""


@dataclass(frozen=True)
class ExportInfo:
    chat_template: str
    eos_token_ids: tuple[int, ...]
    bos_token_id: Optional[int]
    stop_strings: tuple[str, ...]
    context: int
    n_params: Optional[int] = None


def export_info(tokenizer_config: dict, generation_config: dict, config: dict,
                stop_strings: list[str]) -> ExportInfo:
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    if not isinstance(template, str) or not template.strip():
        raise ServeTaskError("the export's tokenizer_config.json has no chat_template; "
                             "re-export the run with this vicuna-cloud (`vicuna-cloud export`)")
    eos = generation_config.get("eos_token_id", config.get("eos_token_id"))
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    if not eos_ids:
        raise ServeTaskError("the export names no eos_token_id (generation_config.json or "
                             "config.json), so nothing would stop generation; re-export the run")
    context = int(config.get("max_position_embeddings") or 2048)
    return ExportInfo(template, tuple(sorted(set(int(i) for i in eos_ids))),
                      generation_config.get("bos_token_id", config.get("bos_token_id")),
                      tuple(stop_strings), context)


def default_accelerators(n_params: Optional[int]) -> str:
    """Smallest common GPU that holds the bf16 weights with room for the KV cache."""
    if n_params is None or n_params <= 8e9:
        return "L4:1"         # 24 GB: a 7B model is 13.5 GB in bf16
    if n_params <= 14e9:
        return "A100:1"       # 40 GB: 13B is 26 GB
    return "A100-80GB:2"      # 33B is 65 GB: two cards, tensor parallel


@dataclass(frozen=True)
class ServeOptions:
    run_id: str
    model_uri: str            # s3:// or gs:// URI of runs/<id>/final
    accelerators: str = "L4:1"
    use_spot: bool = False
    cloud: str = "any"
    name: Optional[str] = None
    replicas: int = 1


_SETUP = """\
# Idempotent: a replica that already has this vLLM skips at once.
set -euo pipefail
VENV="$HOME/.vicuna-serve/venv"
if [ -x "$VENV/bin/vllm" ] && [ "$("$VENV/bin/python" -c 'import vllm; print(vllm.__version__)' 2>/dev/null)" = "$WANT_VLLM" ]; then
  echo "vLLM $WANT_VLLM already installed; setup skipped"
  exit 0
fi
UV="$HOME/.local/bin/uv"
[ -x "$UV" ] || UV="$(command -v uv || true)"
if [ -z "$UV" ]; then
  echo "uv is not on this node (SkyPilot 0.14 installs it at ~/.local/bin/uv)" >&2
  exit 1
fi
"$UV" venv --seed --python "$WANT_PYTHON" "$VENV"
"$UV" pip install --python "$VENV/bin/python" "vllm==$WANT_VLLM"
"""

_RUN = """\
# Everything the export decides arrives in envs; this only writes it to files for vLLM.
set -euo pipefail
CONF="$HOME/.vicuna-serve/conf"
mkdir -p "$CONF"
printf '%s' "$VICUNA_CHAT_TEMPLATE" > "$CONF/chat_template.jinja"
printf '%s' "$VICUNA_GENERATION_CONFIG" > "$CONF/generation_config.json"
if [ -n "${{VICUNA_SERVE_API_KEY:-}}" ]; then
  export VLLM_API_KEY="$VICUNA_SERVE_API_KEY"  # clients send it as their bearer token
fi
exec "$HOME/.vicuna-serve/venv/bin/vllm" serve "$VICUNA_MODEL_DIR" \\
  --served-model-name "$VICUNA_SERVED_NAME" \\
  --host 0.0.0.0 --port {port} \\
  --chat-template "$CONF/chat_template.jinja" \\
  --generation-config "$CONF" \\
  --max-model-len "$VICUNA_MAX_MODEL_LEN" \\
  --tensor-parallel-size "${{SKYPILOT_NUM_GPUS_PER_NODE:-1}}"
"""


def build_serve_config(opts: ServeOptions, info: ExportInfo) -> dict[str, Any]:
    from vicuna_cloud.skypilot.task import CLOUDS, check_name

    if not opts.model_uri.startswith(("s3://", "gs://")):
        raise ServeTaskError(f"the export {opts.model_uri} must be in an s3:// or gs:// bucket "
                             "for a cloud service; serve a local run with --local")
    if opts.cloud not in CLOUDS:
        raise ServeTaskError(f"unknown cloud {opts.cloud!r}; use --cloud aws, gcp or any")
    if opts.replicas < 1:
        raise ServeTaskError(f"--replicas must be at least 1 (got {opts.replicas})")
    name = check_name(opts.name or f"{opts.run_id}-serve"[:63].rstrip("-._"), "--name")
    gen = {"eos_token_id": list(info.eos_token_ids)}
    if info.bos_token_id is not None:
        gen["bos_token_id"] = info.bos_token_id
    resources: dict[str, Any] = {"accelerators": opts.accelerators, "use_spot": opts.use_spot,
                                 "ports": SERVE_PORT, "disk_size": 256}
    if opts.cloud == "any":
        resources["any_of"] = [{"cloud": "aws"}, {"cloud": "gcp"}]
    else:
        resources["cloud"] = opts.cloud
    return {
        "name": name,
        "resources": resources,
        "envs": {
            "VICUNA_RUN_ID": opts.run_id,
            "VICUNA_SERVED_NAME": opts.run_id,
            "VICUNA_MODEL_DIR": MODEL_MOUNT,
            "VICUNA_MAX_MODEL_LEN": str(info.context),
            "VICUNA_CHAT_TEMPLATE": info.chat_template,
            "VICUNA_GENERATION_CONFIG": json.dumps(gen, sort_keys=True),
            "VICUNA_STOP_TOKEN_IDS": json.dumps(list(info.eos_token_ids)),
            "VICUNA_STOP_STRINGS": json.dumps(list(info.stop_strings)),
        },
        "secrets": {API_KEY_SECRET: None},
        "file_mounts": {MODEL_MOUNT: {"source": opts.model_uri.rstrip("/"), "mode": "COPY"}},
        "setup": (f"WANT_VLLM={shlex.quote(VLLM_VERSION)}\n"
                  f"WANT_PYTHON={shlex.quote(PYTHON_VERSION)}\n" + _SETUP),
        "run": _RUN.format(port=SERVE_PORT),
        "service": {
            "readiness_probe": {"path": "/health",  # unauthenticated in vLLM, unlike /v1/*
                                "initial_delay_seconds": READINESS_DELAY_S},
            "replicas": opts.replicas,
        },
    }


def validate_serve_config(config: dict[str, Any], secrets: Optional[dict[str, str]] = None):
    """SkyPilot's parsed task (service included); raises ServeTaskError with its reason."""
    from vicuna_cloud.skypilot.task import validate_task_config

    task = validate_task_config(config, secrets=secrets)  # TaskValidationError: a ConfigError
    if getattr(task, "service", None) is None:
        raise ServeTaskError("SkyPilot parsed the task without its service section")
    return task
