"""Cloud runs: render a task, plan a launch (everything checked, nothing written), launch.

``plan(LaunchRequest)`` checks input, credentials, the bucket and the dataset, builds the
run spec and the SkyPilot task (parsed by SkyPilot itself) and asks SkyPilot's optimizer
for its choice. ``launch(plan)`` writes ``runs/<id>/run.json`` and submits the managed job.
sky, boto3 and google-cloud are imported inside the calls (the CLI's --help stays fast).
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Optional

from vicuna_cloud import __version__, bucket_keys
from vicuna_cloud.errors import (
    BackendError, ConfigError, CredentialsError, RunConflict, StorageUnavailable,
)
from vicuna_cloud.recipes import Preset
from vicuna_cloud.sdk import options
from vicuna_cloud.sdk.models import (
    EXAMPLE_BUCKET, LaunchPlan, LaunchRequest, LaunchResult, OptimizerChoice, RenderRequest,
)

_DATA_HINT = ("prepare and upload it with `vicuna-cloud data prepare RAW.json --out DIR` and "
              "`vicuna-cloud data upload DIR s3://BUCKET/...`, then pass the printed URI")


# --- render -------------------------------------------------------------------------------
def render(req: RenderRequest) -> str:
    """The checked task YAML text, as `vicuna-cloud render` writes it (tasks/*.yaml)."""
    from vicuna_cloud.skypilot.task import TaskOptions, build_task_config, to_yaml, validate_task_config

    code_version = req.code_version or __version__
    preset = options.preset(req.preset, req.version, req.base_model, req.gpus, req.nodes)
    preset, ov, _ = with_overrides(preset, req)
    cloud = options.cloud(req.cloud)
    parsed = options.bucket_uri(req.bucket)
    # render is offline: the bucket's region is not looked up (launch does it).
    place = options.placement(str(parsed), cloud, req.region, look_up_region=False,
                              check_credentials=False)
    run_id = options.run_id(req.run_id) or _example_run_id(preset)
    data = req.data or str(parsed.child(bucket_keys.example_dataset()))
    options.bucket_uri(data, "--data")
    opts = TaskOptions(
        run_id=run_id, run_uri=str(parsed.child(bucket_keys.run_spec(run_id))),
        run_prefix_uri=str(parsed.child(bucket_keys.run_prefix(run_id))),
        data_uri=data, use_spot=req.spot, cloud=place.cloud, region=place.region,
        name=options.job_name(req.name), code_version=code_version,
    )
    config = build_task_config(preset, opts)
    validate_task_config(config)
    return to_yaml(config, _render_header(req, preset, cloud, code_version, ov))


def with_overrides(preset: Preset, req, checkpoint=None):
    """(preset carrying the request's --set/--config hyperparameters, the overrides,
    the checkpoint policy): validated by the run spec's models (sdk/overrides.py)."""
    from vicuna_cloud.sdk import overrides

    ov, models = overrides.resolve(req.overrides, req.config, hyper=preset.hyper,
                                   checkpoint=checkpoint)
    return overrides.apply_to_preset(preset, models), ov, models["checkpoint"]


def _render_header(req: RenderRequest, preset: Preset, cloud: Optional[str],
                   code_version: str, ov=None) -> str:
    """The YAML's header: the `render` command that reproduces the file, every non-default
    option included."""
    args = [preset.name, "--version", preset.version]
    if not req.spot:
        args.append("--no-spot")
    for flag, value, default in (("--base-model", req.base_model, None), ("--nodes", req.nodes, None),
                                 ("--gpus", req.gpus, None), ("--cloud", cloud, None),
                                 ("--region", req.region, None),
                                 ("--bucket", req.bucket, EXAMPLE_BUCKET), ("--data", req.data, None),
                                 ("--run-id", req.run_id, None), ("--name", req.name, None)):
        if value is not None and value != default:
            args += [flag, shlex.quote(str(value))]
    for flag in (ov.as_flags() if ov else ()):
        args += ["--set", shlex.quote(flag.removeprefix("--set "))]
    return (
        f"SkyPilot task for Vicuna {preset.size} {preset.version}, rendered by vicuna-cloud "
        f"{code_version}.\nDo not edit: `vicuna-cloud render {' '.join(args)}` writes it; "
        "`vicuna-cloud launch` renders its own\nwith your bucket, dataset and run id, and "
        "writes runs/<run_id>/run.json (all hyperparameters) first."
    )


def _example_run_id(preset: Preset) -> str:
    v = re.sub(r"[^a-z0-9]+", "-", preset.version.lower()).strip("-")
    return f"vicuna-{preset.name}-{v}-example"


# --- plan ---------------------------------------------------------------------------------
def dataset_ref(data_uri: str) -> tuple[str, str]:
    """(uri, sha256 of train.jsonl) of an uploaded dataset, from its manifest.json (or the
    content-addressed URI itself)."""
    from vicuna_cloud.data.manifest import ManifestError, parse_manifest
    from vicuna_cloud.storage import BucketAccessError, NotFoundError, StorageError, open_bucket

    ds = open_bucket(data_uri)
    try:
        names = {o.key for o in ds.list("")}
    except BucketAccessError as e:
        raise StorageUnavailable(f"--data {data_uri}: {str(e).splitlines()[0]}") from None
    except StorageError as e:
        raise StorageUnavailable(f"--data {data_uri} is unreachable: {str(e).splitlines()[0]}") from None
    if bucket_keys.TRAIN_FILE not in names:
        raise ConfigError(f"--data {data_uri} holds no train.jsonl; {_DATA_HINT}")
    sha = None
    if bucket_keys.MANIFEST_FILE in names:
        try:
            sha = parse_manifest(ds.get_bytes(bucket_keys.MANIFEST_FILE), data_uri).sha256
        except (NotFoundError, ManifestError):
            sha = None
    sha = sha if isinstance(sha, str) else bucket_keys.dataset_sha_from_uri(data_uri)
    if sha is None:
        raise ConfigError(f"--data {data_uri} has no manifest.json with the dataset sha256; {_DATA_HINT}")
    if not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise ConfigError(f"--data {data_uri}: manifest.json's sha256 {sha[:70]!r} is not 64 hex "
                          f"characters (damaged upload?); {_DATA_HINT}")
    return data_uri.rstrip("/"), sha


def _check_inputs(req: LaunchRequest) -> tuple[Preset, Optional[str], Optional[str],
                                               Optional[str]]:
    """(preset with its overrides, cloud, job name, run id): the checks that need no
    network, in the order the CLI has always reported them."""
    preset = options.preset(req.preset, req.version, req.base_model, req.gpus, req.nodes)
    preset, _, _ = with_overrides(preset, req)
    if preset.hardware.accelerator == "cpu" and req.gpus is None:
        raise ConfigError("the tiny preset runs on CPU: use `vicuna-cloud launch tiny --local`, "
                          "or give --gpus (cpu:1 --nodes 2 is a cents-cheap rehearsal on CPU VMs)")
    cloud = options.cloud(req.cloud)
    name = options.job_name(req.name)
    run_id = options.run_id(req.run_id)
    options.positive_cost(req.max_cost)
    if req.bucket is None and not req.dry_run:
        raise ConfigError("--bucket is required for a cloud run: give s3://BUCKET[/prefix] or "
                          "gs://BUCKET[/prefix] (create one with `aws s3 mb` / `gcloud storage "
                          "buckets create`)")
    return preset, cloud, name, run_id


def _usable_clouds(req: LaunchRequest, cloud: str, notes: dict[str, str]) -> list[str]:
    """Clouds with credentials here; a dry run notes their absence (it needs none)."""
    from vicuna_cloud.runspec import Cloud
    from vicuna_cloud.skypilot import credentials

    try:
        return credentials.check(cloud)
    except CredentialsError as e:
        if not req.dry_run:
            raise
        notes["credentials"] = f"none found (a launch needs them): {e}"
        return list(Cloud.priced()) if cloud == Cloud.ANY.value else [cloud]


def _check_bucket(bkt, parsed) -> None:
    from vicuna_cloud.storage import BucketAccessError, StorageError

    try:
        bkt.check_access()
    except BucketAccessError as e:
        raise StorageUnavailable(f"--bucket {parsed}: {str(e).splitlines()[0]}") from None
    except StorageError as e:
        raise StorageUnavailable(f"--bucket {parsed} is unreachable: {str(e).splitlines()[0]}") from None


def plan(req: LaunchRequest, *, optimize: bool = True) -> LaunchPlan:
    """Validate everything and build spec and task, writing and submitting nothing.

    A real launch needs --bucket, --data and credentials. A dry run checks whatever it is
    given and reports what it was not (so a plan works on a fresh machine: it renders,
    checks the task and shows the optimizer's choice).
    """
    from vicuna_cloud.storage import open_bucket

    from vicuna_cloud.skypilot.locality import CLOUD_OF_SCHEME

    preset, cloud, name, run_id = _check_inputs(req)
    notes: dict[str, str] = {}
    warnings: list[str] = []
    parsed = options.bucket_uri(req.bucket if req.bucket is not None else EXAMPLE_BUCKET)
    if req.data is None and not req.dry_run:
        raise ConfigError(
            "--data is required for a cloud run: run `vicuna-cloud data prepare RAW.json --out "
            f"DIR` then `vicuna-cloud data upload DIR {parsed}` and pass the "
            "datasets/<sha256> URI it prints")
    if req.data is not None:
        options.bucket_uri(req.data, "--data")
    usable = _usable_clouds(req, cloud or CLOUD_OF_SCHEME[parsed.scheme], notes)
    bkt = open_bucket(str(parsed))
    if req.bucket is None:
        notes["bucket"] = f"not given, not checked ({EXAMPLE_BUCKET} shown; launch needs --bucket)"
    elif "credentials" in notes:
        notes["bucket"] = f"{parsed} not checked (no credentials to read it with)"
    else:
        _check_bucket(bkt, parsed)
    if req.data is not None and "credentials" not in notes:
        data_uri, sha = dataset_ref(req.data)
    else:
        data_uri, sha = (req.data or str(parsed.child(bucket_keys.example_dataset()))), None
        notes["dataset"] = ("not given (launch needs --data from `vicuna-cloud data upload`)"
                            if req.data is None else "not read (no credentials)")
    place = options.placement(str(parsed), cloud, req.region,
                              look_up_region=req.bucket is not None and "credentials" not in notes,
                              check_credentials=not req.dry_run)
    warnings += place.warnings
    _check_gated(preset, req.dry_run, warnings)
    _check_clean_tree(req, warnings)
    p = _build(req, preset, place, name, run_id or _new_run_id(preset), bkt, data_uri, sha)
    p.clouds = [c for c in usable if place.cloud in ("any", c)] or usable
    p.not_checked, p.warnings = notes, warnings
    p.placement = {"cloud": place.cloud, "region": place.region,
                   "bucket_cloud": place.bucket_cloud, "bucket_region": place.bucket_region,
                   "notes": list(place.notes)}
    if optimize:
        p.optimizer = choose(p)
    return p


#: Base models whose weights Hugging Face gates behind a licence click: a node without
#: HF_TOKEN fails at download, after paying for the cluster.
GATED_PREFIXES = ("meta-llama/",)


def _check_gated(preset: Preset, dry_run: bool, warnings: list[str]) -> None:
    gated = [m for m in {preset.base_model, preset.tokenizer} if m.startswith(GATED_PREFIXES)]
    if not gated or os.environ.get("HF_TOKEN"):
        return
    msg = (f"{gated[0]} is gated on Hugging Face: export HF_TOKEN=<a token whose account "
           "accepted its licence> before launching (it travels as a SkyPilot secret, never "
           "in a file)")
    if not dry_run:
        raise ConfigError(msg)
    warnings.append("launch will refuse: " + msg)


def _check_clean_tree(req: LaunchRequest, warnings: list[str]) -> None:
    """The nodes run the synced work tree: uncommitted changes are refused (or recorded)."""
    from vicuna_cloud import run_store

    git = run_store.git_state()
    if not git.dirty:
        return
    msg = (f"the work tree has changes not in commit {git.commit or '?'} ({git.summary}): "
           "the nodes would run code that no commit holds")
    if not req.dry_run and not req.allow_dirty:
        raise ConfigError(msg + "; commit them, or pass --allow-dirty to launch anyway")
    warnings.append(msg + ("" if req.allow_dirty else "; launch refuses without --allow-dirty"))


def _with_node_prices(spec, preset: Preset, cloud: str):
    """Copy the catalog's zone prices into run.json: the node has no skypilot to price
    its ledger segment with (vicuna_cloud.ledger reads budget.node_prices first)."""
    from vicuna_cloud.pricing import table_rows
    from vicuna_cloud.runspec import NodePriceRow

    if preset.hardware.accelerator == "cpu":
        return spec
    rows = [NodePriceRow(**r) for r in table_rows(preset.hardware.accelerators, cloud)]
    return spec.model_copy(update={"budget": spec.budget.model_copy(
        update={"node_prices": rows})})


def _new_run_id(preset: Preset) -> str:
    from vicuna_cloud.run_store import new_run_id

    return new_run_id(preset)


def _build(req: LaunchRequest, preset: Preset, place, name: Optional[str], run_id: str,
           bkt, data_uri: str, sha: Optional[str]) -> LaunchPlan:
    """Spec and task, the task parsed by SkyPilot with the secrets from the environment."""
    from vicuna_cloud.run_store import spec_from_preset
    from vicuna_cloud.skypilot.task import (
        SECRET_NAMES, TaskOptions, build_task_config, validate_task_config,
    )

    _, ov, checkpoint = with_overrides(preset, req)  # preset already carries the hyper
    spec = spec_from_preset(
        preset, run_id=run_id, dataset_uri=data_uri, dataset_sha256=sha,
        bucket_uri=bkt.uri, use_spot=req.spot, cloud=place.cloud, max_cost_usd=req.max_cost,
        checkpoint=checkpoint, overrides=ov.validated,
    )
    spec = _with_node_prices(spec, preset, place.cloud)
    opts = TaskOptions(
        run_id=run_id, run_uri=bkt.child_uri(bucket_keys.run_spec(run_id)),
        run_prefix_uri=bkt.child_uri(bucket_keys.run_prefix(run_id)),
        data_uri=data_uri, use_spot=req.spot, cloud=place.cloud, region=place.region,
        name=name, code_version=spec.code_version, workdir=_workdir(),
    )
    secrets = {k: os.environ[k] for k in SECRET_NAMES if os.environ.get(k)}
    config = build_task_config(preset, opts)
    task = validate_task_config(config, secrets=secrets)
    p = LaunchPlan(preset=preset, spec=spec, task_config=config, job_name=config["name"],
                   bucket_uri=bkt.uri, run_uri=opts.run_uri, secret_names=sorted(secrets),
                   clouds=[], not_checked={}, dry_run=req.dry_run)
    p._task = task
    return p


def _workdir() -> str:
    """The source tree to sync to the nodes: this checkout (setup installs it)."""
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "train").is_dir():
        return str(root)
    raise ConfigError(
        "cloud launches sync this source tree to the nodes, but vicuna-cloud is not running "
        "from a checkout: `git clone` the project and `pip install -e .` it, then launch again"
    )


def choose(p: LaunchPlan) -> OptimizerChoice:
    """SkyPilot's optimizer over the local catalog, for the clouds usable here; also
    records the bill's launch-time facts in the plan (costs/launch_bill.py)."""
    from vicuna_cloud.skypilot.optimizer import choose as sky_choose

    from vicuna_cloud.costs import launch_bill

    pick = sky_choose(p._task, clouds=tuple(p.clouds))
    # The launch price is known now: run.json's billing (fail-closed fallback, disks,
    # bucket, controller) and, with --max-cost, the task's max_hourly_cost.
    launch_bill.apply(p, pick)
    return pick


def write_dry_run(p: LaunchPlan, out: Path) -> list[str]:
    """A dry run's files: task.yaml and run.json in ``out``."""
    from vicuna_cloud.skypilot.task import to_yaml

    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "task.yaml").write_text(to_yaml(p.task_config, "dry run: not submitted"))
        (out / "run.json").write_text(p.spec.to_json())
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot write there ({e.strerror}); "
                          "give a writable directory") from None
    return [str(out / "task.yaml"), str(out / "run.json")]


# --- launch -------------------------------------------------------------------------------
def launch(p: LaunchPlan, warn=None) -> LaunchResult:
    """Write run.json (never over a different run's), submit the managed job, record the
    run in this machine's index. Raises before submitting if anything fails."""
    from vicuna_cloud import run_index
    from vicuna_cloud.run_store import write_run_spec
    from vicuna_cloud.skypilot import submit
    from vicuna_cloud.storage import StorageError, open_bucket

    if p.dry_run:
        raise ConfigError("this plan is a dry run: plan again without dry_run to launch")
    rid = p.spec.run_id
    try:
        run_uri = write_run_spec(open_bucket(p.bucket_uri), p.spec)
    except RunConflict:
        raise
    except StorageError as e:
        raise StorageUnavailable(f"cannot write the run spec to {p.bucket_uri}: "
                                 f"{str(e).splitlines()[0]}; nothing was submitted, launch again "
                                 f"with --run-id {rid}") from None
    for w in p.warnings if warn else ():  # every check passed: say what is odd, then pay
        warn(w)
    starting = submit.local_server_will_start()
    if starting and warn:
        warn(f"no SkyPilot API server answers at {starting}: SkyPilot starts a local one now "
             "(about 12 s; stop it later with `sky api stop`)")
    try:
        job_id = submit.launch(p._task, p.job_name)
    except submit.ApiUnreachable as e:
        raise BackendError(
            f"SkyPilot API server unreachable ({e}); start it with `sky api start` or set "
            f"SKYPILOT_API_SERVER_ENDPOINT, then launch again with --run-id {rid}") from None
    except Exception as e:  # SkyPilot's own launch errors: say which and how to retry
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BackendError(f"SkyPilot refused the job: {first}; fix it and launch again with "
                           f"--run-id {rid} ({run_uri} is kept)") from None
    warning = None
    try:  # the job is submitted: a local bookkeeping failure must not hide its id
        run_index.record(run_index.RunRecord(run_id=rid, bucket_uri=p.bucket_uri,
                                             backend="skypilot", job_id=job_id,
                                             job_name=p.job_name, preset=p.preset.name))
    except OSError as e:
        warning = (f"cannot record the run in {run_index.home()} ({e.strerror}); pass "
                   f"--bucket {p.bucket_uri} to status/cost/logs")
    return LaunchResult(plan=p, job_id=job_id, run_uri=run_uri, warning=warning)


def render_task(preset: str, **fields) -> str:
    """``render(RenderRequest(preset=preset, **fields))``: the YAML of tasks/<preset>.yaml."""
    return render(RenderRequest(preset=preset, **fields))
