"""Creating, storing and reading run specs: shared by cloud launch and local launch."""

from __future__ import annotations

import hashlib
import re
import secrets
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from vicuna_cloud import bucket_keys
from vicuna_cloud import __version__
from vicuna_cloud.recipes import Preset
from vicuna_cloud.runspec import (
    Budget, CheckpointPolicy, DatasetRef, Hyperparameters, ModelSpec, Resources, RunSpec,
)
from vicuna_cloud.storage import Bucket, NotFoundError, open_bucket
from vicuna_cloud.errors import RunConflict

RUN_SPEC_NAME = bucket_keys.RUN_SPEC_FILE


class RunSpecConflict(RunConflict):
    pass


def new_run_id(preset: Preset, now: Optional[datetime] = None) -> str:
    now = now or datetime.now(timezone.utc)
    version = re.sub(r"[^a-z0-9]+", "-", preset.version.lower()).strip("-")
    return f"vicuna-{preset.name}-{version}-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


@dataclass(frozen=True)
class GitState:
    """The checkout that ships to the nodes (SkyPilot syncs the workdir minus .gitignore)."""

    commit: Optional[str]
    dirty: bool
    summary: str = ""       # "2 modified, 1 untracked"
    fingerprint: str = ""   # sha256 prefix of the changes, so two dirty launches differ


def _git(root: str, *args: str) -> Optional[str]:
    try:
        proc = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                              cwd=root)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def git_state(root: Optional[str] = None) -> GitState:
    """Commit and dirtiness of the tree at ``root`` (default: this package's checkout)."""
    root = root or str(Path(__file__).resolve().parents[1])
    sha = (_git(root, "rev-parse", "--short=12", "HEAD") or "").strip()
    if not sha:
        return GitState(None, False)
    status = _git(root, "status", "--porcelain", "--untracked-files=all") or ""
    lines = [ln for ln in status.splitlines() if ln.strip()]
    if not lines:
        return GitState(sha, False)
    untracked = sum(ln.startswith("??") for ln in lines)
    diff = _git(root, "diff", "HEAD", "--binary") or ""
    h = hashlib.sha256(diff.encode())
    for ln in sorted(ln for ln in lines if ln.startswith("??")):
        path = Path(root, ln[3:].strip().strip('"'))
        h.update(ln.encode())
        try:
            h.update(path.read_bytes())
        except OSError:
            pass
    summary = ", ".join(p for p in (f"{len(lines) - untracked} modified" if len(lines) > untracked
                                    else "", f"{untracked} untracked" if untracked else "") if p)
    return GitState(sha, True, summary, h.hexdigest()[:8])


def code_version(root: Optional[str] = None) -> str:
    """Package version plus the git commit when running from a checkout; a tree with
    changes is recorded as such (``+g<sha>.dirty.<fingerprint>``)."""
    g = git_state(root)
    if not g.commit:
        return __version__
    return f"{__version__}+g{g.commit}" + (f".dirty.{g.fingerprint}" if g.dirty else "")


def spec_from_preset(
    preset: Preset,
    *,
    run_id: str,
    dataset_uri: str,
    dataset_sha256: Optional[str],
    bucket_uri: str,
    use_spot: bool = True,
    cloud: str = "any",
    max_cost_usd: Optional[float] = None,
    local_price_per_hour: float = 0.0,
    seed: Optional[int] = None,
    checkpoint: Optional[CheckpointPolicy] = None,
    hyper_overrides: Optional[dict] = None,
    eval_sha256: Optional[str] = None,
    overrides: Optional[dict] = None,
) -> RunSpec:
    """The run spec of a new run: the preset's values (already carrying any --set/--config,
    sdk/overrides.py), ``seed`` when given, and ``overrides`` recorded as given."""
    hyper = preset.hyper if seed is None else preset.hyper.model_copy(update={"seed": seed})
    if hyper_overrides:  # checked by the model, as a hand-written run.json would be
        hyper = Hyperparameters.model_validate({**hyper.model_dump(), **hyper_overrides})
    return RunSpec(
        run_id=run_id,
        preset=preset.name,
        version=preset.version,
        template=preset.template,
        model=ModelSpec(
            base_model=preset.base_model,
            tokenizer=preset.tokenizer,
            context_length=preset.arch.context,
            n_params=preset.arch.n_params,
            architecture=preset.arch.as_llama_config()
            if preset.base_model.startswith("config:") else None,
        ),
        hyper=hyper,
        dataset=DatasetRef(uri=dataset_uri, sha256=dataset_sha256, eval_sha256=eval_sha256),
        bucket_uri=bucket_uri,
        resources=Resources(
            accelerators=preset.hardware.accelerators,
            nodes=preset.hardware.nodes,
            use_spot=use_spot,
            cloud=cloud,
        ),
        budget=Budget(max_cost_usd=max_cost_usd, local_price_per_hour=local_price_per_hour),
        checkpoint=checkpoint or CheckpointPolicy(),
        code_version=code_version(),
        overrides=dict(overrides or {}),
    )


def spec_differences(existing: RunSpec, new: RunSpec) -> list[str]:
    """'hyper.learning_rate: run.json has 2e-05, this launch 1e-05' for every value of the
    sections --set/--config may change (hyper, checkpoint) that differs."""
    out = []
    for section in ("hyper", "checkpoint"):
        have, want = getattr(existing, section), getattr(new, section)
        for name in type(have).model_fields:
            a, b = getattr(have, name), getattr(want, name)
            if a != b:
                out.append(f"{section}.{name}: run.json has {a}, this launch {b}")
    return out


def run_spec_uri(bucket_uri: str, run_id: str) -> str:
    return str(open_bucket(bucket_uri).location.child(bucket_keys.run_spec(run_id)))


def write_run_spec(bucket: Bucket, spec: RunSpec) -> str:
    """Write runs/<id>/run.json. An existing spec is never overwritten by a different one."""
    key = bucket_keys.run_spec(spec.run_id)
    try:
        existing = RunSpec.from_json(bucket.get_bytes(key))
    except NotFoundError:
        existing = None
    except ValueError as e:  # pydantic's ValidationError: damaged or foreign run.json
        raise RunSpecConflict(
            f"{bucket.child_uri(key)} holds no readable run spec "
            f"({str(e).splitlines()[0]}); choose a new --run-id or delete that file"
        ) from None
    if existing is not None:
        if existing.bucket_uri != spec.bucket_uri:  # the trainer would follow run.json's
            raise RunSpecConflict(
                f"{bucket.child_uri(key)} names bucket {existing.bucket_uri}, not "
                f"{spec.bucket_uri}: its checkpoints and ledger live there. Launch with "
                f"--bucket {existing.bucket_uri}, or choose a new --run-id")
        differ = spec_differences(existing, spec)
        if differ or existing.training_hash() != spec.training_hash():
            what = f" ({'; '.join(differ)})" if differ else ""
            raise RunSpecConflict(
                f"{bucket.child_uri(key)} already holds a different run spec{what}; relaunch "
                "with the run's own settings (the same --set/--config), choose a new --run-id "
                "(or --name), or delete that run first"
            )
        return bucket.child_uri(key)
    bucket.put_bytes(key, spec.to_json().encode())
    return bucket.child_uri(key)


def read_run_spec(uri: str) -> RunSpec:
    """Read run.json from a full URI (s3://b/p/runs/<id>/run.json or a local path)."""
    head, _, name = uri.rstrip("/").rpartition("/")
    bucket = open_bucket(head)
    return RunSpec.from_json(bucket.get_bytes(name))
