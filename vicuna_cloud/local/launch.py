"""`vicuna-cloud launch tiny --local`: the whole product on this machine's CPU.

Same run spec, same `train` entry, same checkpoint and ledger code as a cloud run:
1. bucket: --bucket (a directory, s3:// or gs://) or a directory under the user data dir;
2. data: the shipped sample corpus through the data pipeline (builtin:llama-sp tokenizer),
   uploaded content-addressed to ``datasets/<sha256>/``;
3. run spec from the preset (resources.cloud "local"), written to ``runs/<id>/run.json``;
   a launch with an existing --run-id reuses that spec, and the trainer resumes from the
   newest committed checkpoint;
4. the task's command, ``torchrun --standalone --nnodes 1 --nproc_per_node 2 -m train
   URI``, under the local supervisor (simulated preemptions, restarts, Ctrl-C);
5. the cost report (local segments at --price-per-hour) and the exported model's path.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from typing import Optional

from vicuna_cloud.cli.common import UserError, console, err_console
from vicuna_cloud.exit_codes import EXIT_CONFIG
from vicuna_cloud.local import paths
from vicuna_cloud.local.supervisor import EXIT_CANCELLED, Supervisor, SupervisorConfig

NPROC = 2
#: Step-based checkpoints for the short local run (a cloud run derives its interval
#: from the measured save cost, Young/Daly). Small enough that a preemption loses little.
LOCAL_CHECKPOINT_STEPS = 3
#: Heartbeat often enough that a SIGKILLed segment's billed time is close to its life.
LOCAL_HEARTBEAT_S = 2.0


def torchrun_command(run_uri: str, nproc: int = NPROC) -> list[str]:
    """The task's `run` line for one node. The URI goes positionally: torchrun's own
    argparse takes `--run` after `-m train` for an abbreviation of its --run-path."""
    exe = os.path.join(os.path.dirname(sys.executable), "torchrun")
    head = [exe] if os.access(exe, os.X_OK) else [sys.executable, "-m", "torch.distributed.run"]
    return head + ["--standalone", "--nnodes", "1", "--nproc_per_node", str(nproc),
                   "-m", "train", run_uri]


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def prepare_sample_dataset(max_length: int, template: str, tokenizer: str) -> tuple[str, dict]:
    """Run the shipped corpus through the data pipeline once; later launches reuse it."""
    from vicuna_cloud.data.pipeline import PrepareOptions, prepare
    from vicuna_cloud.data.reader import DataError
    from vicuna_cloud.local.sample import sample_path

    src = sample_path()
    opts = PrepareOptions(tokenizer=tokenizer, template=template, max_length=max_length)
    key = hashlib.sha256((_sha256_file(src) + json.dumps(opts.for_manifest(), sort_keys=True))
                         .encode()).hexdigest()[:16]
    out = os.path.join(paths.home(), "datasets", f"sample-{key}")
    manifest_path = os.path.join(out, "manifest.json")
    if os.path.isfile(manifest_path):
        with open(manifest_path) as f:
            manifest = json.load(f)
        train = os.path.join(out, "train.jsonl")
        if os.path.isfile(train) and manifest.get("output", {}).get("sha256") == _sha256_file(train):
            return out, manifest
    try:
        with console.status("Preparing the sample corpus (HTML to markdown, filters, "
                            "language ID, splitting with the LLaMA tokenizer)"):
            result = prepare([src], out, opts, force=True)
    except DataError as e:
        raise UserError(f"preparing the sample corpus failed: {e}") from None
    return out, result.manifest


def _open_bucket(uri: str):
    from vicuna_cloud.storage import StorageError, open_bucket
    from vicuna_cloud.storage.uri import InvalidBucketURI

    try:
        if "://" not in uri or uri.startswith("file://"):
            os.makedirs(uri[len("file://"):] if uri.startswith("file://") else uri, exist_ok=True)
        bucket = open_bucket(uri)
        bucket.check_access()
        return bucket
    except (InvalidBucketURI, ValueError) as e:
        raise UserError(f"--bucket {uri}: {e}") from None
    except (StorageError, OSError) as e:
        raise UserError(f"--bucket {uri}: {str(e).splitlines()[0]}") from None


def close_cancelled_segment(bucket, run_id: str, since: float) -> Optional[str]:
    """After Ctrl-C: record the newest segment of this launch as ended by "cancelled".

    The trainer treats SIGTERM as a preemption notice (checkpoint, ledger end
    "preempted", exit 75); the user's intent was to cancel, so the launcher, which
    knows it, writes that end reason. A segment killed before it could write an end
    gets one now.
    """
    from dataclasses import asdict

    from vicuna_cloud.ledger import ledger_prefix, read_ledger

    segs = [s for s in read_ledger(bucket, run_id).segments if s.start_time >= since - 1]
    if not segs:
        return None
    seg = max(segs, key=lambda s: s.start_time)
    if seg.end_reason == "completed":
        return None
    now = time.time()
    seg.end_time = seg.end_time or now
    seg.last_heartbeat = max(seg.last_heartbeat, seg.end_time)
    seg.end_reason = "cancelled"
    bucket.put_bytes(f"{ledger_prefix(run_id)}{seg.segment_id}.json",
                     json.dumps(asdict(seg), indent=1, sort_keys=True).encode())
    return seg.segment_id


def launch_local(*, preset: str, version: Optional[str], bucket: Optional[str],
                 run_id: Optional[str], preemptions: int, seed: int, price_per_hour: float,
                 max_cost: Optional[float]) -> int:
    """Run a preset end to end on this machine; returns the process exit code."""
    from vicuna_cloud.recipes import RecipeError, get_preset
    from vicuna_cloud.runs import RunSpecConflict, new_run_id, spec_from_preset, write_run_spec
    from vicuna_cloud.runspec import RUN_ID_PATTERN, Budget, CheckpointPolicy, RunSpec
    from vicuna_cloud.storage import NotFoundError, StorageError

    if preemptions < 0:
        raise UserError(f"--preemptions {preemptions}: give 0 or more")
    if price_per_hour < 0:
        raise UserError(f"--price-per-hour {price_per_hour}: give 0 or more (USD)")
    if max_cost is not None and max_cost <= 0:
        raise UserError(f"--max-cost {max_cost}: give a positive amount (USD)")
    if run_id is not None and not RUN_ID_PATTERN.fullmatch(run_id):
        raise UserError(f"--run-id {run_id!r}: use 1-63 lowercase letters, digits and '-', "
                        "starting with a letter or digit")
    try:
        p = get_preset(preset, version)
    except RecipeError as e:
        raise UserError(str(e)) from None
    if p.hardware.accelerator != "cpu":
        raise UserError(f"--local runs on this machine's CPU: use the tiny preset "
                        f"(`vicuna-cloud launch tiny --local`), not {preset!r}")
    bucket_uri = bucket or paths.default_bucket_uri()
    bkt = _open_bucket(bucket_uri)
    bucket_uri = bkt.uri

    # ---- run spec: reuse an existing run (resume), or make a new one ---------------
    spec: Optional[RunSpec] = None
    if run_id is not None:
        try:
            spec = RunSpec.from_json(bkt.get_bytes(f"runs/{run_id}/run.json"))
        except NotFoundError:
            spec = None
        except (StorageError, ValueError) as e:
            raise UserError(f"cannot read runs/{run_id}/run.json in {bucket_uri}: "
                            f"{str(e).splitlines()[0]}") from None
    if spec is not None:
        if spec.resources.cloud != "local":
            raise UserError(f"run {run_id} in {bucket_uri} is a {spec.resources.cloud} run; "
                            "manage it with `vicuna-cloud status/cancel`, or choose a new --run-id")
        if spec.preset != p.name or spec.version != p.version or spec.hyper.seed != seed:
            raise UserError(
                f"run {run_id} exists in {bucket_uri} as preset {spec.preset} {spec.version} "
                f"seed {spec.hyper.seed}; relaunch with those, or choose a new --run-id")
        console.print(f"Resuming run [bold]{run_id}[/] from {bkt.child_uri(f'runs/{run_id}')}",
                      highlight=False)
        if (spec.budget.local_price_per_hour, spec.budget.max_cost_usd) != (price_per_hour, max_cost):
            console.print(f"[yellow]note:[/] the run keeps its own price "
                          f"(${spec.budget.local_price_per_hour}/h) and budget "
                          f"({spec.budget.max_cost_usd or 'none'}) from its run.json",
                          highlight=False)
    else:
        from vicuna_cloud.data.reader import DataError
        from vicuna_cloud.data.upload import upload_dataset

        data_dir, manifest = prepare_sample_dataset(p.max_length, p.template, p.tokenizer)
        try:  # the same content-addressed, verified upload as `vicuna-cloud data upload`
            up = upload_dataset(data_dir, bucket_uri)
        except DataError as e:
            raise UserError(f"uploading the sample dataset failed: {e}") from None
        sha, dataset_uri = up.sha256, up.uri
        counts, tokens = manifest.get("counts", {}), manifest.get("tokens", {}).get("total")
        console.print(f"Data: {counts.get('input', '?')} raw conversations -> "
                      f"{counts.get('split_pieces', '?')} training pieces"
                      + (f" ({tokens:,} tokens)" if isinstance(tokens, int) else "")
                      + f", {dataset_uri}", highlight=False)
        rid = run_id or new_run_id(p)
        spec = spec_from_preset(
            p, run_id=rid, dataset_uri=dataset_uri, dataset_sha256=sha,
            bucket_uri=bucket_uri, use_spot=preemptions > 0, cloud="local",
            max_cost_usd=max_cost, local_price_per_hour=price_per_hour, seed=seed,
            checkpoint=CheckpointPolicy(interval_steps=LOCAL_CHECKPOINT_STEPS, keep=2),
        )
        spec = spec.model_copy(update={"budget": Budget(
            max_cost_usd=max_cost, local_price_per_hour=price_per_hour,
            heartbeat_seconds=LOCAL_HEARTBEAT_S)})
        try:
            write_run_spec(bkt, spec)
        except RunSpecConflict as e:
            raise UserError(str(e)) from None
    run_id = spec.run_id
    run_uri = bkt.child_uri(f"runs/{run_id}/run.json")
    _record_index(run_id, bucket_uri, p.name)

    # ---- supervise the task's command ----------------------------------------------
    from vicuna_cloud.local.progress import LiveView, StdoutProbe, ViewState

    local_dir = paths.run_dir(run_id)
    os.makedirs(local_dir, exist_ok=True)
    log_path = os.path.join(local_dir, "train.log")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # 2 processes share the CPU: no oversubscription
    env.setdefault("VICUNA_LOCAL_ROOT", os.path.join(local_dir, "node"))
    env["PYTHONUNBUFFERED"] = "1"
    probe = StdoutProbe()
    state = ViewState(run_id=run_id, planned_preemptions=preemptions)
    view = LiveView(state, probe, console=console)
    started = time.time()
    sup = Supervisor(
        torchrun_command(run_uri), config=SupervisorConfig(preemptions=preemptions, seed=seed),
        probe=probe, env=env, log_path=log_path, on_line=probe.feed, on_event=view.on_event,
        on_cancel=lambda: close_cancelled_segment(bkt, run_id, started),
    )
    console.print(f"Run [bold]{run_id}[/]: {' '.join(torchrun_command(run_uri)[-8:])} "
                  f"(log: {log_path})", highlight=False)
    with view:
        result = sup.run()

    # ---- the end: cost report, exported model --------------------------------------
    _print_cost(bkt, run_id)
    if result.outcome == "completed":
        from vicuna_cloud.local.models import ExportNotFound, local_export_dir

        try:
            model_dir = local_export_dir(bkt, run_id)
            console.print(f"[bold green]Exported model:[/] {model_dir}\n"
                          f"Try it: vicuna-cloud chat {run_id}"
                          + ("" if bucket is None else f" --bucket {bucket_uri}"),
                          highlight=False)
        except (ExportNotFound, StorageError) as e:
            err_console.print(f"[bold red]error:[/] training completed but {e}")
            return 1
        return 0
    if result.outcome == "cancelled":
        err_console.print(f"Cancelled. Resume with: vicuna-cloud launch {p.name} --local "
                          f"--run-id {run_id}" + (f" --bucket {bucket_uri}" if bucket else ""),
                          highlight=False)
        return EXIT_CANCELLED
    if result.outcome == "config":
        err_console.print(f"[bold red]error:[/] the trainer rejected the run's input "
                          f"(exit {EXIT_CONFIG}); see {log_path}", highlight=False)
        return result.exit_code
    err_console.print(f"[bold red]error:[/] training {result.outcome} after "
                      f"{len(result.attempts)} attempts (exit {result.exit_code}); "
                      f"see {log_path}", highlight=False)
    return result.exit_code or 1


def _record_index(run_id: str, bucket_uri: str, preset: str) -> None:
    """So `vicuna-cloud cost RUN` / `status` find the bucket without --bucket."""
    try:
        from vicuna_cloud.skypilot import index

        index.record(index.RunRecord(run_id=run_id, bucket_uri=bucket_uri, backend="local",
                                     preset=preset))
    except (ImportError, OSError):
        pass


def _print_cost(bucket, run_id: str) -> None:
    try:
        from vicuna_cloud.cli.cost import render_run
        from vicuna_cloud.costs import report

        rc = report.run_cost(bucket, run_id)
    except Exception as e:  # the run's outcome matters more than its bill
        err_console.print(f"[yellow]cost report unavailable: {str(e).splitlines()[0]}")
        return
    rc.skypilot = {"reachable": None,
                   "note": "local run: segments priced at --price-per-hour, no SkyPilot records"}
    render_run(rc)
