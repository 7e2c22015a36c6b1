"""A run's model: export any committed checkpoint as a Hugging Face directory, and find
the exported model to chat with.

Torch-free: the input is checked here (run exists, step committed, --out empty) so that
mistakes get a one-line answer fast; the merge itself runs `python -m train.export_cli`
in a subprocess (the [train] extra), as chat runs `python -m train.generate`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from typing import Callable, Optional

from pydantic import BaseModel

from vicuna_cloud import bucket_keys, paths, run_index
from vicuna_cloud.errors import ConfigError, RunNotFound, StorageUnavailable
from vicuna_cloud.runspec import RunSpec, check_run_id


class ExportResult(BaseModel):
    run_id: str
    step: int
    out: str
    files: list[str]
    tokens_trained: Optional[int]
    committed_steps: list[int]


def _bucket_for(run_id: str, bucket: Optional[str]) -> str:
    """--bucket, else where this machine launched the run, else the local default bucket."""
    if bucket is not None:
        return bucket
    rec = run_index.lookup(run_id)
    return rec.bucket_uri if rec else paths.default_bucket_uri()


def run_spec_uri(run: str, bucket: Optional[str]) -> str:
    """The run.json URI for a run id (+ --bucket) or a run.json URI."""
    from vicuna_cloud.run_store import run_spec_uri as uri_of

    if run.endswith(bucket_keys.RUN_SPEC_FILE):
        return run
    check_run_id(run)
    return uri_of(_bucket_for(run, bucket), run)


def _read_spec(spec_uri: str) -> RunSpec:
    from vicuna_cloud.storage import StorageError, open_bucket

    head, _, name = spec_uri.rstrip("/").rpartition("/")
    try:
        return RunSpec.from_json(open_bucket(head).get_bytes(name))
    except StorageError:
        raise RunNotFound(f"no run spec at {spec_uri}: check the run id, or pass the --bucket "
                          "the run was launched with") from None
    except ValueError as e:
        raise ConfigError(f"{spec_uri} is not a valid run spec: {str(e).splitlines()[0]}") from None


def _committed_steps(spec: RunSpec) -> list[int]:
    from vicuna_cloud.storage import open_bucket

    b = open_bucket(spec.bucket_uri)
    keys = [o.key for o in b.list(bucket_keys.checkpoints_prefix(spec.run_id) + "/")]
    return sorted(int(name[len("step-"):]) for name in bucket_keys.committed_steps(spec.run_id, keys))


def export(run: str, out: str, *, step: Optional[int] = None, bucket: Optional[str] = None,
           wrap: Optional[Callable[[str], object]] = None) -> ExportResult:
    """Merge a committed checkpoint (default: the newest) into ``out``. ``wrap(what)``, if
    given, returns a context manager held while the merge runs (the CLI's spinner)."""
    spec_uri = run_spec_uri(run, bucket)
    spec = _read_spec(spec_uri)
    steps = _committed_steps(spec)
    if not steps:
        raise RunNotFound(f"run {spec.run_id} has no committed checkpoint yet; wait for the "
                          "first one (`vicuna-cloud logs` shows when it is saved)")
    if step is not None and step not in steps:
        raise RunNotFound(f"run {spec.run_id} has no committed checkpoint at step {step}; "
                          f"committed: {', '.join(map(str, steps))}")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise ConfigError(f"--out {out} already exists and is not an empty directory; choose a "
                          "new one")
    _need_torch("export merges the checkpoint with torch")
    cmd = [sys.executable, "-m", "train.export_cli", "--run-uri", spec_uri, "--out", out, "--json"]
    if step is not None:
        cmd += ["--step", str(step)]
    what = f"exporting {spec.run_id} step {step if step is not None else steps[-1]} ..."
    if wrap is None:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    else:
        with wrap(what):
            proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        msg = lines[-1] if lines else f"exit code {proc.returncode}"
        raise ConfigError(msg[len("error: "):] if msg.startswith("error: ") else msg)
    return ExportResult.model_validate(json.loads(proc.stdout))


def _need_torch(why: str) -> None:
    if importlib.util.find_spec("torch") is None:
        raise ConfigError(f"{why}: install the train extra (pip install 'vicuna-cloud[train]')")


def chat_model(run: str, bucket: Optional[str] = None) -> tuple[str, str]:
    """(local model directory, template name) for a run id or an exported model directory;
    an S3/GCS export is downloaded first."""
    from vicuna_cloud.exported_model import local_export_dir
    from vicuna_cloud.storage import StorageError, open_bucket

    if os.path.isfile(os.path.join(run, "config.json")):
        return os.path.abspath(run), _template_near(run)
    if not isinstance(run, str) or not _is_run_id(run):
        raise ConfigError(f"{run!r} is neither a run id nor a directory with an exported model "
                          "(config.json); give a run id from `vicuna-cloud status` or a model path")
    try:
        b = open_bucket(_bucket_for(run, bucket))
        try:
            template = RunSpec.from_json(b.get_bytes(bucket_keys.run_spec(run))).template
        except StorageError:
            raise RunNotFound(f"no run {run!r} in {b.uri}: check the run id, or pass the "
                              "--bucket the run was launched with") from None
        return local_export_dir(b, run), template
    except StorageError as e:
        raise StorageUnavailable(f"cannot read the bucket: {e}") from None


def _is_run_id(value: str) -> bool:
    from vicuna_cloud.runspec import RUN_ID_PATTERN

    return RUN_ID_PATTERN.fullmatch(value) is not None


def _template_near(model_dir: str) -> str:
    """The template of the run the directory was exported from, if its run.json is beside it."""
    spec = os.path.join(os.path.dirname(os.path.abspath(model_dir)), bucket_keys.RUN_SPEC_FILE)
    if os.path.isfile(spec):
        try:
            with open(spec, "rb") as f:
                return RunSpec.from_json(f.read()).template
        except ValueError:
            pass
    return "vicuna_v1.1"


def chat_command(model_dir: str, template: str, *, prompt: Optional[str] = None,
                 max_new_tokens: int = 64, temperature: float = 0.0) -> list[str]:
    """The `python -m train.generate` command that chats with an exported model."""
    _need_torch("chat runs the model with torch")
    cmd = [sys.executable, "-m", "train.generate", "--model", model_dir,
           "--template", template, "--max-new-tokens", str(max_new_tokens),
           "--temperature", str(temperature)]
    if prompt is not None:
        cmd += ["--prompt", prompt]
    return cmd
