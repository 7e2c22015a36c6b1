"""CLI commands: presets, render, launch, status, logs, cancel.

Import-time cost matters (`vicuna-cloud --help`): only typer, rich and our torch-free
modules at the top; sky, boto3 and google-cloud are imported inside the commands.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from vicuna_cloud import __version__
from vicuna_cloud.cli import app
from vicuna_cloud.cli.common import UserError, console, err_console, print_json

EXAMPLE_BUCKET = "s3://my-vicuna-bucket"
_GPUS = re.compile(r"^([A-Za-z0-9][A-Za-z0-9-]*):([1-9][0-9]*)$")


# --- shared option parsing --------------------------------------------------------------
def _preset(name: str, version: Optional[str], base_model: Optional[str] = None,
            gpus: Optional[str] = None, nodes: Optional[int] = None):
    from vicuna_cloud.recipes import RecipeError, get_preset

    if nodes is not None and nodes < 1:
        raise UserError(f"--nodes must be at least 1 (got {nodes})")
    kwargs: dict[str, Any] = {}
    if gpus is not None:
        m = _GPUS.match(gpus.strip())
        if not m:
            raise UserError(f"--gpus {gpus!r} must look like NAME:COUNT, e.g. A100-80GB:8")
        kwargs = {"accelerator": m.group(1), "gpus_per_node": int(m.group(2))}
    if base_model is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]*", base_model):
        raise UserError(
            f"--base-model {base_model!r} must be a Hugging Face id like org/name"
        )
    try:
        return get_preset(name, version, base_model=base_model, nodes=nodes, **kwargs)
    except RecipeError as e:
        raise UserError(str(e)) from None


def _cloud(cloud: str) -> str:
    cloud = cloud.lower().strip()
    if cloud not in ("aws", "gcp", "any"):
        raise UserError(f"unknown --cloud {cloud!r}; use aws, gcp or any")
    return cloud


def _bucket_uri(uri: str, flag: str = "--bucket", cloud_only: bool = True):
    from vicuna_cloud.storage.uri import InvalidBucketURI, parse_bucket_uri

    try:
        parsed = parse_bucket_uri(uri)
    except InvalidBucketURI as e:
        raise UserError(f"{flag}: {e}") from None
    if cloud_only and parsed.scheme == "file":
        raise UserError(
            f"{flag} {uri!r} is a local directory; a cloud run needs s3://BUCKET[/prefix] or "
            "gs://BUCKET[/prefix] (local directories work with --local)"
        )
    return parsed


def _run_id(run_id: Optional[str]) -> Optional[str]:
    from vicuna_cloud.runspec import RUN_ID_PATTERN

    if run_id is not None and not RUN_ID_PATTERN.fullmatch(run_id):
        raise UserError(
            f"--run-id {run_id!r} must be 1-63 lowercase letters, digits and '-', starting "
            "with a letter or digit"
        )
    return run_id


def _name(name: Optional[str]) -> Optional[str]:
    from vicuna_cloud.skypilot.task import TaskValidationError, check_name

    if name is None:
        return None
    try:
        return check_name(name)
    except TaskValidationError as e:
        raise UserError(str(e)) from None


# --- presets ------------------------------------------------------------------------------
@app.command()
def presets(json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """List the Vicuna presets (size x version) with hardware and a memory estimate."""
    from vicuna_cloud.recipes import DEFAULT_VERSION, all_presets

    rows = []
    for p in all_presets():
        est = p.memory_estimate()
        rows.append({
            "preset": p.name,
            "version": p.version,
            "default": DEFAULT_VERSION.get(p.name) == p.version,
            "base_model": p.base_model,
            "template": p.template,
            "max_length": p.max_length,
            "rope_scaling": p.rope_scaling_factor,
            "accelerators": p.hardware.accelerators,
            "nodes": p.hardware.nodes,
            "gpu_memory_estimate_gib": round(est.total_gib, 1),
            "gpu_memory_gib": p.hardware.gpu_memory_gib,
            "fits": p.fits(),
            "epochs": p.epochs,
            "global_batch_size": p.global_batch_size,
            "learning_rate": p.learning_rate,
            "published_budget_usd": p.published_budget_usd,
        })
    if json_out:
        print_json(rows)
        return
    table = Table(title="Vicuna presets (* = default version)")
    for col in ("preset", "version", "base model", "template", "max len", "hardware",
                "est. GiB/GPU", "fits", "published $"):
        table.add_column(col, overflow="fold")
    for r in rows:
        hw = r["accelerators"] + (f" x{r['nodes']}" if r["nodes"] > 1 else "")
        table.add_row(
            r["preset"], r["version"] + ("*" if r["default"] else ""), r["base_model"],
            r["template"], str(r["max_length"]), hw,
            f"{r['gpu_memory_estimate_gib']:.1f}" if r["gpu_memory_gib"] else "-",
            "yes" if r["fits"] else "[red]no[/]",
            f"{r['published_budget_usd']:.0f}" if r["published_budget_usd"] else "-",
        )
    console.print(table)


# --- options render and launch share (one definition, so the two stay in step) ----------
PRESET_ARG = typer.Argument(..., help="tiny, 7b, 13b or 33b.")
VERSION_OPT = typer.Option(None, "--version", help="v0, v1.1, v1.3, v1.5, v1.5-16k.")
BASE_MODEL_OPT = typer.Option(None, "--base-model", help="Hugging Face id.")
SPOT_OPT = typer.Option(True, "--spot/--no-spot")
NODES_OPT = typer.Option(None, "--nodes")
GPUS_OPT = typer.Option(None, "--gpus", help="e.g. A100-80GB:8")
CLOUD_OPT = typer.Option("any", "--cloud", help="aws, gcp or any.")
RUN_ID_OPT = typer.Option(None, "--run-id")


# --- render -------------------------------------------------------------------------------
def render_task(preset_name: str, *, version: Optional[str] = None,
                base_model: Optional[str] = None, spot: bool = True,
                nodes: Optional[int] = None, gpus: Optional[str] = None, cloud: str = "any",
                bucket: str = EXAMPLE_BUCKET, data: Optional[str] = None,
                run_id: Optional[str] = None, name: Optional[str] = None,
                code_version: str = __version__) -> str:
    """The checked task YAML text, as `render` writes it (tasks/*.yaml are this)."""
    from vicuna_cloud.skypilot.task import (
        TaskOptions, TaskValidationError, build_task_config, to_yaml, validate_task_config,
    )

    preset = _preset(preset_name, version, base_model, gpus, nodes)
    cloud = _cloud(cloud)
    parsed = _bucket_uri(bucket)
    data_arg, run_id_arg = data, run_id  # as given: the header repeats them
    run_id = _run_id(run_id) or _example_run_id(preset)
    data = data or str(parsed.child("datasets/example"))
    _bucket_uri(data, "--data")
    opts = TaskOptions(
        run_id=run_id,
        run_uri=str(parsed.child(f"runs/{run_id}/run.json")),
        run_prefix_uri=str(parsed.child(f"runs/{run_id}")),
        data_uri=data, use_spot=spot, cloud=cloud, name=_name(name),
        code_version=code_version,
    )
    try:
        config = build_task_config(preset, opts)
        validate_task_config(config)
    except TaskValidationError as e:
        raise UserError(str(e)) from None
    args = [preset.name, "--version", preset.version]
    if not spot:
        args.append("--no-spot")
    for flag, value, default in (("--base-model", base_model, None), ("--nodes", nodes, None),
                                 ("--gpus", gpus, None), ("--cloud", cloud, "any"),
                                 ("--bucket", bucket, EXAMPLE_BUCKET), ("--data", data_arg, None),
                                 ("--run-id", run_id_arg, None), ("--name", name, None)):
        if value is not None and value != default:
            args += [flag, shlex.quote(str(value))]
    header = (
        f"SkyPilot task for Vicuna {preset.size} {preset.version}, rendered by vicuna-cloud "
        f"{code_version}.\nDo not edit: `vicuna-cloud render {' '.join(args)}` writes it; "
        "`vicuna-cloud launch` renders its own\nwith your bucket, dataset and run id, and "
        "writes runs/<run_id>/run.json (all hyperparameters) first."
    )
    return to_yaml(config, header)


def _example_run_id(preset) -> str:
    v = re.sub(r"[^a-z0-9]+", "-", preset.version.lower()).strip("-")
    return f"vicuna-{preset.name}-{v}-example"


@app.command()
def render(
    preset: str = PRESET_ARG,
    version: Optional[str] = VERSION_OPT,
    base_model: Optional[str] = BASE_MODEL_OPT,
    spot: bool = SPOT_OPT,
    nodes: Optional[int] = NODES_OPT,
    gpus: Optional[str] = GPUS_OPT,
    cloud: str = CLOUD_OPT,
    bucket: str = typer.Option(EXAMPLE_BUCKET, "--bucket"),
    data: Optional[str] = typer.Option(None, "--data", help="Dataset URI (datasets/<sha256>)."),
    run_id: Optional[str] = RUN_ID_OPT,
    name: Optional[str] = typer.Option(None, "--name"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write here, not stdout."),
):
    """Write the SkyPilot task YAML for a preset, checked by SkyPilot's own parser."""
    text = render_task(preset, version=version, base_model=base_model, spot=spot, nodes=nodes,
                       gpus=gpus, cloud=cloud, bucket=bucket, data=data, run_id=run_id,
                       name=name)
    if output is None:
        print(text, end="")
        return
    tmp = output.with_name(f".{output.name}.tmp")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, output)
    except OSError as e:
        raise UserError(f"cannot write {output}: {e.strerror}; choose another -o path") from None
    err_console.print(f"wrote {output}")


# --- launch -------------------------------------------------------------------------------
@dataclass
class Prepared:
    preset: Any
    spec: Any
    config: dict
    task: Any
    bucket: Any
    name: str
    secrets: dict
    clouds: list  # clouds with credentials here: the ones SkyPilot can really use
    notes: dict  # dry run: what was not given and so not checked


def _dataset(data_uri: str) -> tuple[str, Optional[str]]:
    """(uri, sha256 of train.jsonl) from the dataset's manifest.json."""
    import json

    from vicuna_cloud.storage import BucketAccessError, NotFoundError, StorageError, open_bucket

    hint = ("prepare and upload it with `vicuna-cloud data prepare RAW.json --out DIR` and "
            "`vicuna-cloud data upload DIR s3://BUCKET/...`, then pass the printed URI")
    ds = open_bucket(data_uri)
    try:
        names = {o.key for o in ds.list("")}
    except BucketAccessError as e:
        raise UserError(f"--data {data_uri}: {str(e).splitlines()[0]}") from None
    except StorageError as e:
        raise UserError(f"--data {data_uri} is unreachable: {str(e).splitlines()[0]}") from None
    if "train.jsonl" not in names:
        raise UserError(f"--data {data_uri} holds no train.jsonl; {hint}")
    sha = None
    if "manifest.json" in names:
        try:
            manifest = json.loads(ds.get_bytes("manifest.json"))
        except (NotFoundError, json.JSONDecodeError):
            manifest = {}
        output = manifest.get("output") if isinstance(manifest, dict) else None
        if isinstance(output, dict) and isinstance(output.get("sha256"), str):
            sha = output["sha256"]  # vicuna_cloud.data.manifest: sha256 of train.jsonl
    if sha is None:
        m = re.search(r"datasets/([0-9a-f]{64})/?$", data_uri)
        sha = m.group(1) if m else None
    if sha is None:
        raise UserError(f"--data {data_uri} has no manifest.json with the dataset sha256; {hint}")
    if not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise UserError(f"--data {data_uri}: manifest.json's sha256 {sha[:70]!r} is not 64 hex "
                        f"characters (damaged upload?); {hint}")
    return data_uri.rstrip("/"), sha


def prepare_cloud_launch(*, preset_name: str, version: Optional[str],
                         base_model: Optional[str], spot: bool, nodes: Optional[int],
                         gpus: Optional[str], cloud: str, bucket: Optional[str],
                         data: Optional[str], max_cost: Optional[float], name: Optional[str],
                         run_id: Optional[str], dry_run: bool = False) -> Prepared:
    """Validate everything and build spec + task, without writing or submitting anything.

    A real launch needs --bucket, --data and credentials. A dry run checks whatever it is
    given and reports what it was not (so `launch 7b --spot --dry-run` works on a fresh
    machine: it renders, checks the task and shows the optimizer's choice).
    """
    from vicuna_cloud.runs import new_run_id, spec_from_preset
    from vicuna_cloud.skypilot import credentials
    from vicuna_cloud.skypilot.task import (
        SECRET_NAMES, TaskOptions, TaskValidationError, build_task_config, validate_task_config,
    )
    from vicuna_cloud.storage import BucketAccessError, StorageError, open_bucket

    # 1. Pure input checks (no network).
    preset = _preset(preset_name, version, base_model, gpus, nodes)
    if preset.name == "tiny" and preset.hardware.accelerator == "cpu":
        raise UserError("the tiny preset runs on CPU: use `vicuna-cloud launch tiny --local`, "
                        "or give --gpus for a cloud run")
    cloud = _cloud(cloud)
    name = _name(name)
    run_id = _run_id(run_id)
    if max_cost is not None and max_cost <= 0:
        raise UserError(f"--max-cost must be a positive number of US dollars (got {max_cost})")
    notes: dict[str, str] = {}
    if bucket is None and not dry_run:
        raise UserError("--bucket is required for a cloud run: give s3://BUCKET[/prefix] or "
                        "gs://BUCKET[/prefix] (create one with `aws s3 mb` / `gcloud storage "
                        "buckets create`)")
    parsed = _bucket_uri(bucket if bucket is not None else EXAMPLE_BUCKET)
    if data is None and not dry_run:
        raise UserError(
            "--data is required for a cloud run: run `vicuna-cloud data prepare RAW.json --out "
            "DIR` then `vicuna-cloud data upload DIR " + str(parsed) + "` and pass the "
            "datasets/<sha256> URI it prints"
        )
    if data is not None:
        _bucket_uri(data, "--data")
    # 2. Credentials, then the bucket and the dataset.
    try:
        usable = credentials.check(cloud)
    except credentials.CredentialsError as e:
        if not dry_run or bucket is not None:
            raise UserError(str(e)) from None
        usable = ["aws", "gcp"] if cloud == "any" else [cloud]
        notes["credentials"] = f"none found (a launch needs them): {e}"
    bkt = open_bucket(str(parsed))
    if bucket is not None:
        try:
            bkt.check_access()
        except BucketAccessError as e:
            raise UserError(f"--bucket {parsed}: {str(e).splitlines()[0]}") from None
        except StorageError as e:
            raise UserError(f"--bucket {parsed} is unreachable: {str(e).splitlines()[0]}") from None
    else:
        notes["bucket"] = f"not given, not checked ({EXAMPLE_BUCKET} shown; launch needs --bucket)"
    if data is not None:
        data_uri, sha = _dataset(data)
    else:
        data_uri, sha = str(parsed.child("datasets/example")), None
        notes["dataset"] = "not given (launch needs --data from `vicuna-cloud data upload`)"
    # 3. Spec and task.
    run_id = run_id or new_run_id(preset)
    spec = spec_from_preset(
        preset, run_id=run_id, dataset_uri=data_uri, dataset_sha256=sha,
        bucket_uri=str(parsed), use_spot=spot, cloud=cloud, max_cost_usd=max_cost,
    )
    opts = TaskOptions(
        run_id=run_id,
        run_uri=bkt.child_uri(f"runs/{run_id}/run.json"),
        run_prefix_uri=bkt.child_uri(f"runs/{run_id}"),
        data_uri=data_uri, use_spot=spot, cloud=cloud, name=name,
        code_version=spec.code_version, workdir=_workdir(),
    )
    secrets = {k: os.environ[k] for k in SECRET_NAMES if os.environ.get(k)}
    try:
        config = build_task_config(preset, opts)
        task = validate_task_config(config, secrets=secrets)
    except TaskValidationError as e:
        raise UserError(str(e)) from None
    return Prepared(preset, spec, config, task, bkt, config["name"], secrets, usable, notes)


def _workdir() -> str:
    """The source tree to sync to the nodes: this checkout (setup installs it)."""
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "train").is_dir():
        return str(root)
    raise UserError(
        "cloud launches sync this source tree to the nodes, but vicuna-cloud is not running "
        "from a checkout: `git clone` the project and `pip install -e .` it, then launch again"
    )


def _launch_table(p: Prepared, choice, dry_run: bool, extra: dict) -> Table:
    title = "Dry run: nothing submitted, nothing written to the bucket" if dry_run else "Launched"
    t = Table(title=title, show_header=False)
    t.add_column("what", style="bold")
    t.add_column("value", overflow="fold")
    hw = p.preset.hardware
    rows = [
        ("run id", p.spec.run_id),
        ("job name", p.name),
        ("preset", f"{p.preset.name} {p.preset.version} ({p.preset.base_model})"),
        ("hardware", f"{hw.nodes} x {hw.accelerators}, {'spot' if p.spec.resources.use_spot else 'on-demand'}"),
        ("bucket", p.notes.get("bucket") or f"{p.bucket.uri} (read/write ok)"),
        ("dataset", p.notes.get("dataset")
         or f"{p.spec.dataset.uri} (sha256 {(p.spec.dataset.sha256 or '?')[:12]}...)"),
        ("task", "accepted by sky.Task.from_yaml_config"),
    ]
    if choice is not None:
        rows += [
            ("optimizer", f"{choice.cloud} {choice.region or ''} {choice.zone or ''}".strip()),
            ("instance", f"{choice.instance_type} ({choice.accelerators})"),
            ("$/hour", f"{choice.price_per_hour:.2f} ({choice.nodes} x {choice.price_per_node_hour:.2f})"),
        ]
    if p.spec.budget.max_cost_usd:
        rows.append(("max cost", f"${p.spec.budget.max_cost_usd:.2f}"))
    if "credentials" in p.notes:
        rows.append(("credentials", p.notes["credentials"]))
    missing = [k for k in ("HF_TOKEN", "WANDB_API_KEY") if k not in p.secrets]
    rows.append(("secrets", ", ".join(sorted(p.secrets)) + (f" (not set: {', '.join(missing)})" if missing else "")
                 if p.secrets else f"none set ({', '.join(missing)} unset)"))
    for k, v in extra.items():
        rows.append((k, str(v)))
    for k, v in rows:
        t.add_row(k, v)
    return t


@app.command()
def launch(
    preset: str = PRESET_ARG,
    version: Optional[str] = VERSION_OPT,
    base_model: Optional[str] = BASE_MODEL_OPT,
    spot: bool = SPOT_OPT,
    nodes: Optional[int] = NODES_OPT,
    gpus: Optional[str] = GPUS_OPT,
    cloud: str = CLOUD_OPT,
    bucket: Optional[str] = typer.Option(None, "--bucket", help="s3://BUCKET/prefix or gs://BUCKET/prefix."),
    data: Optional[str] = typer.Option(None, "--data", help="Dataset URI from `data upload`."),
    max_cost: Optional[float] = typer.Option(None, "--max-cost", help="Stop at this spend (USD)."),
    name: Optional[str] = typer.Option(None, "--name", help="Managed job name."),
    run_id: Optional[str] = RUN_ID_OPT,
    dry_run: bool = typer.Option(False, "--dry-run", help="Check everything, submit nothing."),
    out: Optional[Path] = typer.Option(None, "--out", help="Dry run: write task.yaml and run.json here."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable summary."),
    local: bool = typer.Option(False, "--local", help="Run on this machine's CPU instead."),
    preemptions: int = typer.Option(0, "--preemptions", help="--local: simulated preemptions."),
    seed: int = typer.Option(42, "--seed", help="--local: seed of the preemption schedule."),
    price_per_hour: float = typer.Option(0.0, "--price-per-hour", help="--local: pretend price."),
):
    """Launch a run as a SkyPilot managed job (or --local), resuming after preemptions."""
    if local:
        from vicuna_cloud.local import launch_local

        raise typer.Exit(launch_local(
            preset=preset, version=version, bucket=bucket, run_id=run_id,
            preemptions=preemptions, seed=seed, price_per_hour=price_per_hour,
            max_cost=max_cost,
        ))
    p = prepare_cloud_launch(
        preset_name=preset, version=version, base_model=base_model, spot=spot, nodes=nodes,
        gpus=gpus, cloud=cloud, bucket=bucket, data=data, max_cost=max_cost, name=name,
        run_id=run_id, dry_run=dry_run,
    )
    from vicuna_cloud.skypilot.optimizer import OptimizerError, choose

    try:
        with console.status("Asking SkyPilot's optimizer (local catalog)"):
            choice = choose(p.task, clouds=tuple(p.clouds))
    except OptimizerError as e:
        raise UserError(str(e)) from None
    summary = {"run_id": p.spec.run_id, "job_name": p.name, "dry_run": dry_run,
               "preset": p.preset.name, "version": p.preset.version,
               "bucket": p.bucket.uri, "run_uri": p.bucket.child_uri(f"runs/{p.spec.run_id}/run.json"),
               "dataset": p.spec.dataset.uri, "dataset_sha256": p.spec.dataset.sha256,
               "optimizer": choice.as_dict(), "secrets": sorted(p.secrets),
               "not_checked": p.notes}
    if dry_run:
        extra = {}
        if out is not None:
            from vicuna_cloud.skypilot.task import to_yaml

            try:
                out.mkdir(parents=True, exist_ok=True)
                (out / "task.yaml").write_text(to_yaml(p.config, "dry run: not submitted"))
                (out / "run.json").write_text(p.spec.to_json())
            except OSError as e:
                raise UserError(f"--out {out}: cannot write there ({e.strerror}); "
                                "give a writable directory") from None
            extra["written"] = f"{out}/task.yaml, {out}/run.json"
            summary["written"] = [str(out / "task.yaml"), str(out / "run.json")]
        if json_out:
            print_json(summary)
        else:
            console.print(_launch_table(p, choice, True, extra))
        return
    _submit(p, choice, summary, json_out)


def _submit(p: Prepared, choice, summary: dict, json_out: bool) -> None:
    from vicuna_cloud.runs import RunSpecConflict, write_run_spec
    from vicuna_cloud.skypilot import index, submit
    from vicuna_cloud.storage import StorageError

    try:
        run_uri = write_run_spec(p.bucket, p.spec)
    except RunSpecConflict as e:
        raise UserError(str(e)) from None
    except StorageError as e:
        raise UserError(f"cannot write the run spec to {p.bucket.uri}: "
                        f"{str(e).splitlines()[0]}; nothing was submitted, launch again "
                        f"with --run-id {p.spec.run_id}") from None
    try:
        job_id = submit.launch(p.task, p.name)
    except submit.ApiUnreachable as e:
        raise UserError(
            f"SkyPilot API server unreachable ({e}); start it with `sky api start` or set "
            f"SKYPILOT_API_SERVER_ENDPOINT, then launch again with --run-id {p.spec.run_id}"
        ) from None
    except Exception as e:  # SkyPilot's own launch errors: say which and how to retry
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"SkyPilot refused the job: {first}; fix it and launch again with "
            f"--run-id {p.spec.run_id} ({run_uri} is kept)"
        ) from None
    try:  # the job is submitted: a local bookkeeping failure must not hide its id
        index.record(index.RunRecord(run_id=p.spec.run_id, bucket_uri=p.bucket.uri,
                                     backend="skypilot", job_id=job_id, job_name=p.name,
                                     preset=p.preset.name))
    except OSError as e:
        err_console.print(f"[yellow]warning:[/] cannot record the run in {index.home()} "
                          f"({e.strerror}); pass --bucket {p.bucket.uri} to status/cost/logs",
                          highlight=False)
    summary.update(job_id=job_id, run_uri=run_uri)
    if json_out:
        print_json(summary)
    else:
        console.print(_launch_table(p, choice, False, {"job id": job_id}))
        console.print(f"follow it: vicuna-cloud status {p.spec.run_id}; "
                      f"vicuna-cloud logs {p.spec.run_id}")


# --- status / logs / cancel ---------------------------------------------------------------
def _run_id_arg(run_id: str) -> str:
    from vicuna_cloud.runspec import RUN_ID_PATTERN

    if not RUN_ID_PATTERN.fullmatch(run_id):
        raise UserError(f"{run_id!r} is not a run id (lowercase letters, digits and '-'); "
                        "list runs with `vicuna-cloud status`")
    return run_id


def _find(run_id: str, bucket: Optional[str]):
    from vicuna_cloud.skypilot import index

    _run_id_arg(run_id)
    rec = index.lookup(run_id)
    if rec is None and bucket is None:
        raise UserError(
            f"unknown run {run_id!r} on this machine; pass --bucket URI where it was "
            "launched (or list runs with `vicuna-cloud status`)"
        )
    if bucket is not None:
        _bucket_uri(bucket, cloud_only=False)
        rec = index.RunRecord(run_id=run_id, bucket_uri=bucket,
                              backend=rec.backend if rec else "skypilot",
                              job_id=rec.job_id if rec else None,
                              job_name=rec.job_name if rec else None,
                              preset=rec.preset if rec else None)
    return rec


@app.command()
def status(
    run: Optional[str] = typer.Argument(None, help="Run id (default: every run launched here)."),
    bucket: Optional[str] = typer.Option(None, "--bucket", help="Where the run lives."),
    json_out: bool = typer.Option(False, "--json"),
):
    """Managed-job state, recoveries and progress read from the bucket."""
    from vicuna_cloud.skypilot import index, submit
    from vicuna_cloud.skypilot.progress import read_progress
    from vicuna_cloud.storage import open_bucket

    records = [_find(run, bucket)] if run else index.all_runs()
    if not records:
        if json_out:
            print_json([])
        else:
            console.print("no runs launched from this machine yet")
        return
    jobs: dict = {}
    api_error = None
    job_ids = [r.job_id for r in records if r.job_id is not None and r.backend == "skypilot"]
    if job_ids:
        try:
            jobs = submit.queue(job_ids)
        except submit.ApiUnreachable as e:
            api_error = str(e)
    rows = []
    for rec in records:
        prog = read_progress(open_bucket(rec.bucket_uri), rec.run_id)
        job = jobs.get(rec.job_id) if rec.job_id is not None else None
        if rec.backend != "skypilot":
            state = rec.backend
        elif job is not None:
            state = job.status
        elif api_error:
            state = "unknown (API server unreachable)"
        else:
            state = "not in SkyPilot's queue"
        if prog.last_end_reason == "budget" and not prog.final:
            state = f"{state}; stopped: budget"
        rows.append({
            "run_id": rec.run_id, "job_id": rec.job_id, "state": state,
            "recoveries": job.recovery_count if job else None,
            "progress": prog.summary, "checkpoints": prog.checkpoints,
            "segments": prog.segments, "last_end_reason": prog.last_end_reason,
            "last_metrics": prog.last_metrics, "bucket": rec.bucket_uri,
        })
    if json_out:
        print_json({"api_error": api_error, "runs": rows})
        return
    if api_error:
        err_console.print(f"[yellow]SkyPilot API server unreachable ({api_error}); showing "
                          "what the bucket knows[/]")
    t = Table(title="vicuna-cloud runs")
    for col in ("run", "job", "state", "recoveries", "progress", "checkpoints", "bucket"):
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(r["run_id"], str(r["job_id"] if r["job_id"] is not None else "-"), r["state"],
                  "-" if r["recoveries"] is None else str(r["recoveries"]), r["progress"],
                  str(r["checkpoints"]), r["bucket"])
    console.print(t)


def _job_id(run: str, bucket: Optional[str]) -> int:
    rec = _find(run, bucket)
    if rec.job_id is None:
        raise UserError(f"run {run!r} has no SkyPilot job id on this machine (launched "
                        "elsewhere or with --local); use `sky jobs queue` to find it")
    return rec.job_id


@app.command()
def logs(
    run: str = typer.Argument(..., help="Run id."),
    follow: bool = typer.Option(True, "--follow/--no-follow"),
    bucket: Optional[str] = typer.Option(None, "--bucket"),
):
    """Stream the run's logs (sky.jobs.tail_logs)."""
    from vicuna_cloud.skypilot import submit

    job_id = _job_id(run, bucket)
    try:
        code = submit.tail_logs(job_id, follow=follow)
    except submit.ApiUnreachable as e:
        raise UserError(f"SkyPilot API server unreachable ({e}); start it with "
                        "`sky api start` or set SKYPILOT_API_SERVER_ENDPOINT") from None
    raise typer.Exit(code or 0)


@app.command()
def cancel(
    run: str = typer.Argument(..., help="Run id."),
    bucket: Optional[str] = typer.Option(None, "--bucket"),
):
    """Cancel the managed job; the trainer checkpoints on SIGTERM and the bucket keeps it."""
    from vicuna_cloud.skypilot import submit

    job_id = _job_id(run, bucket)
    try:
        submit.cancel(job_id)
    except submit.ApiUnreachable as e:
        raise UserError(f"SkyPilot API server unreachable ({e}); start it with "
                        "`sky api start` or set SKYPILOT_API_SERVER_ENDPOINT") from None
    console.print(f"cancelled job {job_id} (run {run}); its checkpoints stay in the bucket")
