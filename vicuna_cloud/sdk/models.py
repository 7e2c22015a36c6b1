"""The SDK's typed requests, plans and results (pydantic models and dataclasses; no
``Any`` fields).

A request says what the caller wants (the CLI's flags, one field each); a plan is what a
launch would do, checked but not yet done; a result is what happened. JSON-shaped values
the trainer or SkyPilot own (a metrics line, the task config) are ``JsonValue``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, JsonValue, PrivateAttr

from vicuna_cloud.costs.report import RunCost
from vicuna_cloud.local.live_view import StdoutProbe
from vicuna_cloud.local.supervisor import Attempt
from vicuna_cloud.recipes import Preset
from vicuna_cloud.runspec import RunSpec
from vicuna_cloud.skypilot.optimizer import OptimizerChoice

#: What `render` shows when no --bucket is given (the committed tasks/*.yaml use it).
EXAMPLE_BUCKET = "s3://my-vicuna-bucket"
DEFAULT_SEED = 42


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskRequest(_Request):
    """What `render` and a cloud launch share: the preset and how to provision it."""

    preset: str = Field(description="tiny, 7b, 13b or 33b")
    version: Optional[str] = Field(None, description="v0, v1.1, v1.3, v1.5, v1.5-16k")
    base_model: Optional[str] = Field(None, description="Hugging Face id like org/name")
    spot: bool = True
    nodes: Optional[int] = None
    gpus: Optional[str] = Field(None, description="NAME:COUNT, e.g. A100-80GB:8")
    cloud: Optional[str] = Field(None, description="aws, gcp or any; default: the bucket's cloud")
    region: Optional[str] = Field(None, description="a region or any; default: the bucket's "
                                  "region when launch can read it")
    name: Optional[str] = Field(None, description="managed job name (default: the run id)")
    run_id: Optional[str] = None
    overrides: list[str] = Field(default_factory=list, description="run-spec overrides as "
                                 "--set takes them: KEY=VALUE, e.g. hyper.learning_rate=1e-5")
    config: Optional[str] = Field(None, description="a YAML file of overrides (the same "
                                  "dotted keys as a nested mapping); --set wins over it")


class RenderRequest(TaskRequest):
    bucket: str = EXAMPLE_BUCKET
    data: Optional[str] = Field(None, description="dataset URI (datasets/<sha256>)")
    code_version: Optional[str] = None


class LaunchRequest(TaskRequest):
    """A cloud launch (SkyPilot managed job). ``dry_run``: check what is given and report
    what is not, so a plan can be made on a machine without credentials or a bucket."""

    bucket: Optional[str] = Field(None, description="s3://BUCKET[/prefix] or gs://BUCKET[/prefix]")
    data: Optional[str] = Field(None, description="dataset URI printed by `data upload`")
    max_cost: Optional[float] = Field(None, description="stop at this spend (USD)")
    dry_run: bool = False
    allow_dirty: bool = Field(False, description="launch although the work tree has "
                              "uncommitted changes (recorded in the code version)")


class LocalLaunchRequest(_Request):
    """A run on this machine's CPU under the local supervisor."""

    preset: str = "tiny"
    version: Optional[str] = None
    bucket: Optional[str] = Field(None, description="directory, s3:// or gs:// (default: "
                                  "a directory under the user data dir)")
    run_id: Optional[str] = Field(None, description="an existing run id resumes that run")
    preemptions: int = Field(0, description="simulated preemptions")
    seed: int = Field(DEFAULT_SEED, description="training seed and preemption schedule")
    price_per_hour: float = Field(0.0, description="pretend price (USD per hour)")
    max_cost: Optional[float] = None
    base_model: Optional[str] = Field(None, description="small preset: a directory from "
                                      "`base import` or builtin:NAME (default: the preset's)")
    hyper_overrides: Optional[dict] = Field(None, description="hyperparameters replacing the "
                                            "preset's in a new run (e.g. fewer steps)")
    checkpoint_steps: Optional[int] = Field(None, description="checkpoint interval of a new run")
    overrides: list[str] = Field(default_factory=list, description="run-spec overrides as "
                                 "--set takes them: KEY=VALUE, e.g. hyper.epochs=2")
    config: Optional[str] = Field(None, description="a YAML file of overrides; --set wins")
    take_over: bool = Field(False, description="take the run over from a writer whose "
                            "heartbeat is stale (vicuna_cloud/lease.py)")


class LaunchPlan(BaseModel):
    """A checked cloud launch: the run spec and the task SkyPilot accepted, nothing written
    or submitted yet. ``launch(plan)`` writes the spec and submits."""

    preset: Preset
    spec: RunSpec
    task_config: dict[str, JsonValue] = Field(description="the task as rendered, before parsing")
    job_name: str
    bucket_uri: str
    run_uri: str
    secret_names: list[str] = Field(description="secrets that travel with the job (values never "
                                    "stored here)")
    clouds: list[str] = Field(description="clouds with credentials here")
    not_checked: dict[str, str] = Field(description="dry run: what was not given, so not checked")
    optimizer: Optional[OptimizerChoice] = None
    dry_run: bool = False
    warnings: list[str] = Field(default_factory=list, description="said before submitting: "
                                "a dirty tree, a crossing of clouds or regions, a missing token")
    placement: dict[str, JsonValue] = Field(default_factory=dict, description="where the "
                                            "nodes run relative to the bucket")
    _task: object = PrivateAttr(default=None)  # the parsed sky.Task (secrets inside)

    def summary(self) -> "LaunchSummary":
        """What `launch --json` prints (dry run or not)."""
        return LaunchSummary(
            run_id=self.spec.run_id, job_name=self.job_name, dry_run=self.dry_run,
            preset=self.preset.name, version=self.preset.version, bucket=self.bucket_uri,
            run_uri=self.run_uri, dataset=self.spec.dataset.uri,
            dataset_sha256=self.spec.dataset.sha256,
            optimizer=self.optimizer.as_dict() if self.optimizer else None,
            secrets=sorted(self.secret_names), code_version=self.spec.code_version,
            placement=dict(self.placement), warnings=list(self.warnings),
            not_checked=dict(self.not_checked), billing=self.spec.billing.model_dump())


class LaunchSummary(BaseModel):
    """The --json twin of launch's table; ``job_id`` once submitted, ``written`` after a
    dry run with --out (printed with ``exclude_unset``: absent until then, as before)."""

    run_id: str
    job_name: str
    dry_run: bool
    preset: str
    version: str
    bucket: str
    run_uri: str
    dataset: str
    dataset_sha256: Optional[str]
    optimizer: Optional[dict[str, JsonValue]]
    secrets: list[str] = Field(description="names only; values never leave the environment")
    code_version: str
    placement: dict[str, JsonValue]
    warnings: list[str]
    not_checked: dict[str, str]
    billing: dict[str, JsonValue]
    job_id: Optional[int] = None
    written: Optional[list[str]] = None


class LaunchResult(BaseModel):
    plan: LaunchPlan
    job_id: int
    run_uri: str
    warning: Optional[str] = Field(None, description="submitted, but the run index could not "
                                   "be written")


class RunStatus(BaseModel):
    run_id: str
    job_id: Optional[int]
    state: str
    recoveries: Optional[int]
    recoveries_from: Optional[str] = None  # "skypilot" | "ledger"
    cloud: Optional[str] = None
    region: Optional[str] = None
    failure_reason: Optional[str] = None
    progress: str
    checkpoints: int
    segments: int
    last_end_reason: Optional[str]
    last_metrics: Optional[dict[str, JsonValue]]
    bucket: str
    eval: Optional[dict[str, Optional[dict[str, JsonValue]]]] = Field(
        None, description="first and last eval records (held-out eval loss)")


class StatusReport(BaseModel):
    api_error: Optional[str] = Field(None, description="SkyPilot unreachable: rows show what "
                                     "the bucket knows")
    runs: list[RunStatus]


LocalEventKind = Literal["resuming", "note", "preparing", "data", "started", "attempt"]


@dataclass(frozen=True)
class LocalEvent:
    """Progress of a local launch, for ``launch_local(..., on_event=...)``.

    ``started`` carries ``progress``, whose ``poll()``/``last()`` give the newest step (the
    CLI's live view polls it); ``attempt`` carries the supervisor's event name in
    ``attempt_kind`` (started, preempted, recovering, completed, failed, config,
    cancelled) and the attempt itself.
    """

    kind: LocalEventKind
    message: str = ""
    run_id: Optional[str] = None
    attempt_kind: Optional[str] = None
    attempt: Optional[Attempt] = None
    progress: Optional[StdoutProbe] = None


@dataclass
class LocalLaunchResult:
    """How a local run ended. ``exit_code`` is the process exit code the CLI returns."""

    run_id: str
    preset: str
    bucket_uri: str
    bucket_given: bool
    log_path: str
    outcome: str                       # completed | stopped: budget | nothing to do |
                                       # cancelled | config | failed | ...
    exit_code: int
    attempts: int
    model_dir: Optional[str] = None
    error: Optional[str] = None        # why it did not complete, one line
    note: Optional[str] = None         # a budget stop, a relaunch with nothing to do
    cost: Optional[RunCost] = None
    cost_error: Optional[str] = None
