"""`launch --local` as a call: the whole product on this machine's CPU.

Same run spec, same `train` entry, same checkpoint and ledger code as a cloud run:
1. bucket: the request's (a directory, s3:// or gs://) or a directory under the user data dir;
2. data: the shipped sample corpus through the data pipeline (builtin:llama-sp tokenizer),
   uploaded content-addressed to ``datasets/<sha256>/``;
3. run spec from the preset (resources.cloud "local"), written to ``runs/<id>/run.json``;
   an existing run id reuses that spec, and the trainer resumes from the newest committed
   checkpoint;
4. the task's command (``torchrun ... -m train --run-uri URI``) under the local supervisor
   (simulated preemptions, restarts, Ctrl-C);
5. the cost report (local segments at the request's price) and the exported model's path.

Progress goes to ``on_event`` (``LocalEvent``); nothing here prints.
"""

from __future__ import annotations

import shlex

import os
from typing import Callable, Optional

from vicuna_cloud import bucket_keys, paths
from vicuna_cloud.errors import ConfigError, RunConflict, StorageUnavailable
from vicuna_cloud.recipes import Preset
from vicuna_cloud.runspec import RunSpec
from vicuna_cloud.sdk import options
from vicuna_cloud.sdk.models import (
    DEFAULT_SEED, LocalEvent, LocalLaunchRequest, LocalLaunchResult,
)

EventFn = Callable[[LocalEvent], None]


def _local_overrides(p: Preset, req: LocalLaunchRequest):
    """(preset with the overrides, overrides, checkpoint policy, seed) of a local run:
    --set/--config over the Python callers' ``hyper_overrides`` over the preset; the local
    checkpoint cadence is the base the checkpoint keys override."""
    from vicuna_cloud.local.launch import LOCAL_CHECKPOINT_STEPS
    from vicuna_cloud.runspec import CheckpointPolicy
    from vicuna_cloud.sdk import overrides

    steps = req.checkpoint_steps or p.extra.get("checkpoint_steps", LOCAL_CHECKPOINT_STEPS)
    hyper = p.hyper.model_copy(update={"seed": req.seed})
    extra = {f"hyper.{k}": v for k, v in (req.hyper_overrides or {}).items()}
    ov, models = overrides.resolve(req.overrides, req.config, hyper=hyper, extra=extra,
                                   checkpoint=CheckpointPolicy(interval_steps=steps, keep=2))
    seed = models["hyper"].seed
    if "hyper.seed" in ov.raw and req.seed not in (seed, DEFAULT_SEED):
        raise ConfigError(f"--seed {req.seed} and hyper.seed={seed} disagree; give one of them")
    return overrides.apply_to_preset(p, models), ov, models["checkpoint"], seed


def _check(req: LocalLaunchRequest) -> Preset:
    if req.preemptions < 0:
        raise ConfigError(f"--preemptions {req.preemptions}: give 0 or more")
    if req.price_per_hour < 0:
        raise ConfigError(f"--price-per-hour {req.price_per_hour}: give 0 or more (USD)")
    options.positive_cost(req.max_cost)
    options.run_id(req.run_id)
    base = req.base_model
    if base is not None:
        from vicuna_cloud.local.demo import check_local_base

        base = check_local_base(req.preset, base)
    p = options.preset(req.preset, req.version) if base is None else _preset_on(req, base)
    if p.hardware.accelerator != "cpu":
        raise ConfigError(f"--local runs on this machine's CPU: use the small or tiny preset "
                          f"(`vicuna-cloud launch small --local`), not {req.preset!r}")
    return p


def _preset_on(req: LocalLaunchRequest, base: str) -> Preset:
    from vicuna_cloud.recipes import RecipeError, get_preset

    try:
        return get_preset(req.preset, req.version, base_model=base)
    except RecipeError as e:
        raise ConfigError(str(e)) from None


def open_local_bucket(uri: str):
    """The run's bucket, created when it is a directory, checked readable and writable."""
    from vicuna_cloud.storage import StorageError, open_bucket

    try:
        if "://" not in uri or uri.startswith("file://"):
            os.makedirs(uri[len("file://"):] if uri.startswith("file://") else uri, exist_ok=True)
        bucket = open_bucket(uri)
        bucket.check_access()
        return bucket
    except ValueError as e:  # InvalidBucketURI and friends
        raise ConfigError(f"--bucket {uri}: {e}") from None
    except (StorageError, OSError) as e:
        raise StorageUnavailable(f"--bucket {uri}: {str(e).splitlines()[0]}") from None


def _existing_spec(bkt, run_id: Optional[str]) -> Optional[RunSpec]:
    from vicuna_cloud.storage import NotFoundError, StorageError

    if run_id is None:
        return None
    try:
        return RunSpec.from_json(bkt.get_bytes(bucket_keys.run_spec(run_id)))
    except NotFoundError:
        return None
    except (StorageError, ValueError) as e:
        raise RunConflict(f"cannot read runs/{run_id}/run.json in {bkt.uri}: "
                          f"{str(e).splitlines()[0]}") from None


def _resume(spec: RunSpec, p: Preset, req: LocalLaunchRequest, bkt, emit: EventFn,
            ov=None) -> None:
    """An existing run: refuse a different one, say what is kept."""
    rid = spec.run_id
    if spec.bucket_uri != bkt.uri:  # the trainer follows run.json's bucket, not --bucket
        raise RunConflict(
            f"run {rid}'s run.json in {bkt.uri} names bucket {spec.bucket_uri}: its "
            f"checkpoints and ledger go there. Relaunch with --bucket "
            f"{shlex.quote(spec.bucket_uri)}, or choose a new --run-id")
    if spec.resources.cloud != "local":
        raise RunConflict(f"run {rid} in {bkt.uri} is a {spec.resources.cloud} run; manage "
                          "it with `vicuna-cloud status/cancel`, or choose a new --run-id")
    if spec.preset != p.name or spec.version != p.version or spec.hyper.seed != req.seed:
        raise RunConflict(
            f"run {rid} exists in {bkt.uri} as preset {spec.preset} {spec.version} "
            f"seed {spec.hyper.seed}; relaunch with those, or choose a new --run-id")
    if ov:
        from vicuna_cloud.sdk.overrides import conflicts

        differ = conflicts(spec, ov)
        if differ:
            raise RunConflict(
                f"run {rid} exists in {bkt.uri} with other settings ({'; '.join(differ)}); "
                "a run keeps its run.json: relaunch without those --set/--config values, or "
                "choose a new --run-id")
    emit(LocalEvent(kind="resuming", run_id=rid,
                    message=f"Resuming run {rid} from {bkt.child_uri(bucket_keys.run_prefix(rid))}"))
    if spec.overrides and not ov:
        emit(LocalEvent(kind="note", run_id=rid, message=(
            "the run keeps the overrides in its run.json: " + ", ".join(
                f"{k}={v}" for k, v in spec.overrides.items()))))
    if (spec.budget.local_price_per_hour, spec.budget.max_cost_usd) != (req.price_per_hour, req.max_cost):
        emit(LocalEvent(kind="note", run_id=rid, message=(
            f"the run keeps its own price (${spec.budget.local_price_per_hour}/h) and budget "
            f"({spec.budget.max_cost_usd or 'none'}) from its run.json")))


def _new_spec(p: Preset, req: LocalLaunchRequest, bkt, emit: EventFn, ov=None,
              checkpoint=None) -> RunSpec:
    """Sample data prepared and uploaded, a new spec written to the bucket."""
    from vicuna_cloud.data.reader import DataError
    from vicuna_cloud.data.upload import upload_dataset
    from vicuna_cloud.local.launch import LOCAL_CHECKPOINT_STEPS, LOCAL_HEARTBEAT_S
    from vicuna_cloud.local.sample import prepare_sample_dataset
    from vicuna_cloud.run_store import new_run_id, write_run_spec
    from vicuna_cloud.runspec import Budget, CheckpointPolicy

    from vicuna_cloud.local import demo
    from vicuna_cloud.local.sample import LOCAL_EVAL_FRACTION

    if p.base_model.startswith("builtin:"):
        emit(LocalEvent(kind="preparing", message=f"Base model {p.base_model}: fetching and "
                        "converting it once (later runs find it in the cache)"))
        p, msg = demo.resolve_base(p)
        emit(LocalEvent(kind="data", message=msg))
    emit(LocalEvent(kind="preparing", message="Preparing the sample corpus (HTML to markdown, "
                    "filters, language ID, splitting with the base model's tokenizer)"))
    data_dir, manifest = prepare_sample_dataset(
        p.max_length, p.template, p.tokenizer, curated=demo.curated_for(p),
        eval_fraction=p.extra.get("eval_fraction", LOCAL_EVAL_FRACTION),
        max_raw_bytes=p.extra.get("max_raw_bytes"))
    try:  # the same content-addressed, verified upload as `vicuna-cloud data upload`
        up = upload_dataset(data_dir, bkt.uri)
    except DataError as e:
        raise DataError(f"uploading the sample dataset failed: {e}") from None
    raw = manifest.to_dict()
    emit(LocalEvent(kind="data", message=demo.data_line(raw) + f", {up.uri}"))
    steps = req.checkpoint_steps or p.extra.get("checkpoint_steps", LOCAL_CHECKPOINT_STEPS)
    spec = _spec_from_preset(p, req, new_run_id(p) if req.run_id is None else req.run_id,
                             bkt.uri, up.uri, up.sha256,
                             checkpoint or CheckpointPolicy(interval_steps=steps, keep=2),
                             eval_sha256=(raw.get("eval") or {}).get("sha256"),
                             overrides=ov.validated if ov else None)
    spec = spec.model_copy(update={"budget": Budget(
        max_cost_usd=req.max_cost, local_price_per_hour=req.price_per_hour,
        heartbeat_seconds=LOCAL_HEARTBEAT_S)})
    write_run_spec(bkt, spec)
    return spec


def _spec_from_preset(p, req, run_id, bucket_uri, dataset_uri, sha, checkpoint,
                      eval_sha256=None, overrides=None) -> RunSpec:
    """``p`` already carries every override (``_local_overrides``)."""
    from vicuna_cloud.run_store import spec_from_preset

    return spec_from_preset(
        p, run_id=run_id, dataset_uri=dataset_uri, dataset_sha256=sha, bucket_uri=bucket_uri,
        use_spot=req.preemptions > 0, cloud="local", max_cost_usd=req.max_cost,
        local_price_per_hour=req.price_per_hour, seed=req.seed, checkpoint=checkpoint,
        eval_sha256=eval_sha256, overrides=overrides)


def launch_local(req: LocalLaunchRequest = LocalLaunchRequest(),
                 on_event: Optional[EventFn] = None) -> LocalLaunchResult:
    """Run a preset end to end on this machine; a bad request raises before anything runs,
    how the run itself ended is in the result (``outcome``, ``exit_code``)."""
    from vicuna_cloud.lease import LeaseHeld
    from vicuna_cloud.local.launch import record_local_run, supervise, take_lease
    from vicuna_cloud.storage import StorageError

    emit = on_event or (lambda event: None)
    p = _check(req)
    p, ov, checkpoint, seed = _local_overrides(p, req)
    req = req.model_copy(update={"seed": seed})  # hyper.seed= is the run's seed
    bkt = open_local_bucket(req.bucket or paths.default_bucket_uri())
    spec = _existing_spec(bkt, req.run_id)
    if spec is not None:
        _resume(spec, p, req, bkt, emit, ov)
        done = _finished(bkt, spec.run_id)
        if done is not None:  # relaunching a finished run: a no-op that says so
            out = LocalLaunchResult(run_id=spec.run_id, preset=p.name, bucket_uri=bkt.uri,
                                    bucket_given=req.bucket is not None, log_path="",
                                    outcome="nothing to do", exit_code=0, attempts=0,
                                    note=(f"run {spec.run_id} {done}; nothing to do (no "
                                          "segment, no recovery added); start a new run "
                                          "without --run-id"))
            out.cost, out.cost_error = _cost(bkt, out.run_id)
            return out
    else:
        spec = _new_spec(p, req, bkt, emit, ov, checkpoint)
    record_local_run(spec.run_id, bkt.uri, p.name)
    rid = spec.run_id
    try:  # one writer per run: a second launch is refused here (issue 14)
        keeper = take_lease(bkt, spec, req.take_over)
    except LeaseHeld as e:
        raise RunConflict(str(e)) from None
    except StorageError as e:
        raise StorageUnavailable(f"cannot take the run's lease in {bkt.uri}: "
                                 f"{str(e).splitlines()[0]}") from None
    result, log_path = supervise(
        bkt, rid, req.preemptions, req.seed,
        on_start=lambda probe, what: emit(LocalEvent(kind="started", run_id=rid, message=what,
                                                     progress=probe)),
        on_event=lambda kind, attempt: emit(LocalEvent(kind="attempt", run_id=rid,
                                                       attempt_kind=kind, attempt=attempt)),
        keeper=keeper)
    out = LocalLaunchResult(run_id=spec.run_id, preset=p.name, bucket_uri=bkt.uri,
                            bucket_given=req.bucket is not None, log_path=log_path,
                            outcome=result.outcome, exit_code=result.exit_code,
                            attempts=len(result.attempts))
    _finish(out, bkt)
    return out


def _finish(out: LocalLaunchResult, bkt) -> None:
    """The end: cost report, exported model, or why it did not complete."""
    from vicuna_cloud.exit_codes import EXIT_CONFIG
    from vicuna_cloud.local.supervisor import EXIT_CANCELLED

    out.cost, out.cost_error = _cost(bkt, out.run_id)
    if out.outcome == "completed" and _last_end(bkt, out.run_id) == "budget":
        _budget_stopped(out, bkt)
    elif out.outcome == "completed":
        from vicuna_cloud.exported_model import ExportNotFound, local_export_dir
        from vicuna_cloud.storage import StorageError

        try:
            out.model_dir = local_export_dir(bkt, out.run_id)
            out.exit_code = 0
        except (ExportNotFound, StorageError) as e:
            out.error, out.exit_code = f"training completed but {e}", 1
    elif out.outcome == "cancelled":
        out.exit_code = EXIT_CANCELLED
    elif out.outcome in ("lease-held", "stopped"):
        out.error = (f"another writer holds run {out.run_id} (its lease was taken over); "
                     f"see {out.log_path} and `vicuna-cloud status {out.run_id}`")
    elif out.outcome == "config":
        out.error = (f"the trainer rejected the run's input (exit {EXIT_CONFIG}); "
                     f"see {out.log_path}")
    else:
        out.error = (f"training {out.outcome} after {out.attempts} attempts (exit "
                     f"{out.exit_code}); see {out.log_path}")
        out.exit_code = out.exit_code or 1


def _ledger(bkt, run_id: str):
    from vicuna_cloud.ledger import read_ledger
    from vicuna_cloud.storage import StorageError

    try:
        return read_ledger(bkt, run_id).segments
    except StorageError:
        return []


def _last_end(bkt, run_id: str) -> Optional[str]:
    segs = _ledger(bkt, run_id)
    return segs[-1].end_reason if segs else None


def _finished(bkt, run_id: str) -> Optional[str]:
    """'already completed at step N' / 'stopped at its budget' when relaunching is moot."""
    segs = _ledger(bkt, run_id)
    if not segs:
        return None
    last = segs[-1]
    if last.end_reason == "completed":
        return f"already completed at step {last.last_step}"
    if last.end_reason == "budget":
        return (f"stopped at its budget at step {last.last_step} (run.json's --max-cost "
                "holds for every relaunch)")
    return None


def _budget_stopped(out: LocalLaunchResult, bkt) -> None:
    """A budget stop is its own outcome: exit 0, the last checkpoint exported, no error."""
    from vicuna_cloud.exported_model import ExportNotFound, local_export_dir
    from vicuna_cloud.storage import StorageError

    out.outcome, out.exit_code = "stopped: budget", 0
    try:
        out.model_dir = local_export_dir(bkt, out.run_id)
        out.note = "stopped: budget; the last committed checkpoint is exported"
    except (ExportNotFound, StorageError):
        out.note = "stopped: budget; no step was trained, so nothing was exported"


def _cost(bkt, run_id: str):
    """(RunCost, None), or (None, why) when the ledger cannot be read: the run's outcome
    matters more than its bill."""
    try:
        from vicuna_cloud.costs import report

        rc = report.run_cost(bkt, run_id)
    except Exception as e:
        return None, str(e).splitlines()[0] if str(e) else type(e).__name__
    rc.skypilot = {"reachable": None,
                   "note": "local run: segments priced at --price-per-hour, no SkyPilot records"}
    return rc, None
