"""Serving a run's export: plan and launch the SkyServe/vLLM service, or the command of
the local OpenAI-compatible server.

    p = sdk.plan_serve(sdk.ServeRequest(run="vicuna-7b-...", bucket="s3://b/v", spot=True))
    p.yaml()                      # the checked task, as `serve --dry-run -o` writes it
    sdk.serve(p)                  # `sky serve up`; -> ServeResult(service, endpoint)
    cmd, name = sdk.local_server_command("vicuna-7b-...", port=8000)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Optional

from pydantic import BaseModel, Field, JsonValue

from vicuna_cloud import bucket_keys, run_index
from vicuna_cloud.errors import BackendError, ConfigError, RunNotFound, StorageUnavailable
from vicuna_cloud.serving.task import ExportInfo


@dataclass(frozen=True)
class ServeRequest:
    run: str
    bucket: Optional[str] = None  # default: where this machine launched the run
    spot: bool = False
    gpus: Optional[str] = None    # default: by model size (serving.task.default_accelerators)
    cloud: str = "any"
    replicas: int = 1
    name: Optional[str] = None


class ServeSummary(BaseModel):
    """What `serve --json` prints: the service as planned (and its endpoint once up)."""

    run_id: str
    service: str
    dry_run: bool
    model: str = Field(description="the export's URI the replicas read")
    served_model_name: str
    accelerators: str
    use_spot: bool
    replicas: int
    vllm: str
    stop_token_ids: list[int]
    stop_strings: list[str]
    max_model_len: int
    api_key: str = Field(description="whether $VICUNA_SERVE_API_KEY guards the endpoint")
    task: str
    endpoint: Optional[str]


@dataclass
class ServePlan:
    run_id: str
    config: dict[str, JsonValue]  # the service task as rendered (secrets never inside)
    task: object  # the parsed sky.Task, as SkyPilot's parser returned it (secrets inside)
    secrets: dict[str, str] = field(repr=False)
    model_uri: str
    info: ExportInfo  # what the export decides: template, stop tokens, context

    def yaml(self) -> str:
        from vicuna_cloud.skypilot.task import to_yaml

        return to_yaml(self.config, f"SkyServe service for run {self.run_id}, rendered by "
                                    "`vicuna-cloud serve`; secrets come from the environment.")

    def summary(self, endpoint: Optional[str] = None, dry_run: bool = True) -> ServeSummary:
        from vicuna_cloud.serving.task import API_KEY_SECRET, VLLM_VERSION

        res = self.config["resources"]
        return ServeSummary(
            run_id=self.run_id, service=self.config["name"], dry_run=dry_run,
            model=self.model_uri, served_model_name=self.run_id,
            accelerators=res["accelerators"], use_spot=res["use_spot"],
            replicas=self.config["service"]["replicas"], vllm=VLLM_VERSION,
            stop_token_ids=list(self.info.eos_token_ids),
            stop_strings=list(self.info.stop_strings), max_model_len=self.info.context,
            api_key=f"${API_KEY_SECRET} set" if self.secrets else
            f"none (${API_KEY_SECRET} unset: the endpoint is open)",
            task="accepted by sky.Task.from_yaml_config", endpoint=endpoint)


@dataclass(frozen=True)
class ServeResult:
    service: str
    endpoint: Optional[str]
    price_per_hour: Optional[float]


def _read_json(bucket, key: str) -> dict:
    from vicuna_cloud.storage import NotFoundError

    try:
        return json.loads(bucket.get_bytes(key))
    except NotFoundError:
        raise RunNotFound(f"{bucket.child_uri(key)} is missing: the run has no complete export; "
                          "wait for it to finish or run `vicuna-cloud export`") from None
    except ValueError:
        raise ConfigError(f"{bucket.child_uri(key)} is not JSON; re-export the run") from None


def _open_run(run: str, bucket: Optional[str]):
    from vicuna_cloud.runspec import RUN_ID_PATTERN, RunSpec
    from vicuna_cloud.storage import StorageError, open_bucket

    if not RUN_ID_PATTERN.fullmatch(run):
        raise ConfigError(f"{run!r} is not a run id; give the id from `vicuna-cloud status` (a "
                          "model directory can be served with --local)")
    if bucket is None:
        rec = run_index.lookup(run)
        if rec is None:
            raise ConfigError(f"no --bucket given and run {run} was not launched from this "
                              "machine; pass --bucket s3://BUCKET[/prefix] or gs://...")
        bucket = rec.bucket_uri
    b = open_bucket(bucket)
    try:
        return b, RunSpec.from_json(b.get_bytes(bucket_keys.run_spec(run)))
    except StorageError:
        raise RunNotFound(f"no run {run!r} in {bucket}: check the run id, or pass the --bucket "
                          "the run was launched with") from None


def plan_serve(req: ServeRequest) -> ServePlan:
    """Everything checked, nothing launched: run spec and export read from the bucket, the
    service built from them and accepted by SkyPilot's parser."""
    from vicuna_cloud.recipes import RecipeError, get_preset
    from vicuna_cloud.serving.task import (
        API_KEY_SECRET, ServeOptions, build_serve_config, default_accelerators, export_info,
        validate_serve_config,
    )
    from vicuna_cloud.storage import StorageError
    from vicuna_cloud.templates import get_template

    b, spec = _open_run(req.run, req.bucket)
    final = bucket_keys.final_prefix(req.run).rstrip("/")
    try:
        tok_cfg = _read_json(b, f"{final}/tokenizer_config.json")
        gen_cfg = _read_json(b, f"{final}/generation_config.json")
        cfg = _read_json(b, f"{final}/config.json")
    except StorageError as e:
        raise StorageUnavailable(f"cannot read {b.uri}: {str(e).splitlines()[0]}") from None
    try:
        n_params = get_preset(spec.preset, spec.version).arch.n_params
    except RecipeError:
        n_params = None
    secrets = {API_KEY_SECRET: os.environ[API_KEY_SECRET]} if os.environ.get(API_KEY_SECRET) else {}
    info = export_info(tok_cfg, gen_cfg, cfg, get_template(spec.template).stop_strings)
    opts = ServeOptions(run_id=req.run, model_uri=b.child_uri(final), cloud=req.cloud.lower(),
                        accelerators=req.gpus or default_accelerators(n_params),
                        use_spot=req.spot, name=req.name, replicas=req.replicas)
    config = build_serve_config(opts, info)
    task = validate_serve_config(config, secrets=secrets)
    return ServePlan(req.run, config, task, secrets, opts.model_uri, info)


def serve(plan: ServePlan) -> ServeResult:
    """`sky serve up`; records the service (with its $/hour when known) for `eval`."""
    import sky

    from vicuna_cloud.serving import index
    from vicuna_cloud.skypilot.submit import ApiUnreachable, _unreachable

    try:
        service, endpoint = sky.stream_and_get(
            sky.serve.up(plan.task, service_name=plan.config["name"]))
    except (sky.exceptions.ApiServerConnectionError, ConnectionError) as e:
        raise _unreachable(e) from None
    except ApiUnreachable:
        raise
    except Exception as e:  # noqa: BLE001 - SkyPilot's own refusal, in one line
        raise BackendError(f"SkyPilot refused the service: {str(e).strip().splitlines()[0]}") from None
    price = None
    try:
        from vicuna_cloud.skypilot.optimizer import choose

        price = choose(plan.task).price_per_hour
    except Exception:  # noqa: BLE001 - the price is optional: eval then takes --price-per-hour
        pass
    index.record(plan.run_id, service, price, endpoint or "", stop=list(plan.info.stop_strings))
    return ServeResult(service, endpoint, price)


def local_server_command(run: str, bucket: Optional[str] = None,
                         port: int = 8000) -> tuple[list[str], str, str, str]:
    """(argv of `python -m train.serve`, model name, model dir, template) for a run id or
    an exported model directory (an S3/GCS export is downloaded first)."""
    from vicuna_cloud.sdk.export import chat_model
    from vicuna_cloud.serving.local import server_command

    model_dir, template = chat_model(run, bucket)
    name = os.path.basename(os.path.abspath(run)) if os.path.isdir(run) else run
    return server_command(model_dir, template, port, name), name, model_dir, template
