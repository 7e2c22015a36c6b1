"""The run spec: the single source of truth for one training run.

The CLI writes it to ``runs/<run_id>/run.json`` in the bucket at launch; every node reads
it back (its URI arrives as ``python -m train --run-uri URI``) and validates it with this
same model, so no hyperparameter lives only in a shell line of a task YAML.
Torch-free: both planes import it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from datetime import datetime, timezone
from enum import Enum
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator

from vicuna_cloud.errors import ConfigError

RUN_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")  # use with fullmatch ($ allows "\n")
RUN_ID_RULE = "1-63 lowercase letters, digits and '-', starting with a letter or digit"
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")


class Cloud(str, Enum):
    """Where a run is provisioned: the one list of clouds (the CLI's --cloud, the run
    spec, the credential check and the price catalog all read it)."""

    AWS = "aws"
    GCP = "gcp"
    ANY = "any"      # SkyPilot's optimizer picks the cheapest of the usable clouds
    LOCAL = "local"  # `launch --local`: this machine's CPU

    @classmethod
    def priced(cls) -> tuple[str, ...]:
        """The clouds with a price catalog and credentials to check."""
        return (cls.AWS.value, cls.GCP.value)

    @classmethod
    def choosable(cls) -> tuple[str, ...]:
        """What --cloud accepts."""
        return (cls.AWS.value, cls.GCP.value, cls.ANY.value)


def check_run_id(value: str, flag: Optional[str] = None) -> str:
    """The one run-id check (every command, the run spec, the local backend)."""
    if isinstance(value, str) and RUN_ID_PATTERN.fullmatch(value):
        return value
    what = f"{flag} {value!r}" if flag else repr(value)
    raise InvalidRunId(f"{what} is not a run id: use {RUN_ID_RULE} (list runs with "
                       "`vicuna-cloud status`)")


class InvalidRunId(ConfigError):
    """A run id that does not match RUN_ID_PATTERN."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    """Which network to fine-tune and how its shape relates to the recipe."""

    base_model: str = Field(
        description="Hugging Face id or local path; 'config:<preset>' builds a randomly "
        "initialised LLaMA from `architecture` (the tiny preset, no download)."
    )
    tokenizer: str = Field(
        description="Hugging Face id or local path; 'builtin:llama-sp' is the LLaMA-format "
        "SentencePiece tokenizer shipped in the mistral-common wheel (no download)."
    )
    context_length: int = Field(gt=0, description="The base model's native context.")
    n_params: int = Field(gt=0, description="Parameter count, for FLOP and memory estimates.")
    architecture: Optional[dict] = Field(
        default=None,
        description="LlamaConfig keyword arguments, used only when base_model is 'config:...'.",
    )


class Hyperparameters(_Strict):
    epochs: float = Field(3, gt=0)
    global_batch_size: int = Field(128, gt=0, description="Conversations per optimizer step.")
    micro_batch_size: int = Field(
        2, gt=0, description="Padded mode: conversations per micro-batch per GPU."
    )
    micro_batch_tokens: int = Field(
        8192, gt=0, description="Packed mode: token budget per micro-batch per GPU."
    )
    learning_rate: float = Field(2e-5, gt=0)
    lr_schedule: Literal["cosine"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    grad_clip: float = Field(1.0, gt=0)
    max_length: int = Field(2048, gt=0)
    batching: Literal["packed", "padded"] = "packed"
    dtype: Literal["bf16", "fp32"] = "bf16"
    gradient_checkpointing: bool = True
    rope_scaling_factor: Optional[float] = Field(
        None, description="Linear RoPE factor; None = derived: ceil(max_length / context)."
    )
    seed: int = 42
    log_every_steps: int = Field(1, gt=0)
    eval_every_steps: Optional[int] = Field(
        None, gt=0, description="Eval loss on the held-out split every N steps, besides the "
        "start and the end; None = start and end only."
    )

    @model_validator(mode="after")
    def _conversation_fits_a_micro_batch(self) -> "Hyperparameters":
        """Packing never splits a conversation, so one of max_length must fit: refused at
        launch rather than on a paid node."""
        if self.batching == "packed" and self.micro_batch_tokens < self.max_length:
            raise ValueError(
                f"micro_batch_tokens {self.micro_batch_tokens} < max_length {self.max_length}: "
                "a conversation must fit in one micro-batch; raise micro_batch_tokens"
            )
        return self


#: Hyperparameters that change what is logged or evaluated, never the trained weights
#: (eval runs under no_grad and draws no random numbers): not in the training hash.
NON_WEIGHT_HYPER = ("log_every_steps", "eval_every_steps")


class DatasetRef(_Strict):
    uri: str = Field(description="Directory (local, s3://, gs://) holding train.jsonl.")
    sha256: Optional[str] = Field(
        None, description="sha256 of train.jsonl; the trainer refuses a mismatch."
    )
    eval_sha256: Optional[str] = Field(
        None, description="sha256 of eval.jsonl beside it (the held-out split of `data "
        "prepare --eval-fraction`); None = no eval loss."
    )

    @field_validator("sha256", "eval_sha256")
    @classmethod
    def _hex(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not SHA256_PATTERN.fullmatch(v):
            raise ValueError("dataset sha256 must be 64 lowercase hex characters")
        return v


class CheckpointPolicy(_Strict):
    interval_seconds: Optional[float] = Field(
        None, gt=0, description="Fixed time interval; None = Young/Daly from measured cost."
    )
    interval_steps: Optional[int] = Field(None, gt=0, description="Step-based interval.")
    mtbf_hours: float = Field(
        6.0, gt=0, description="Expected hours between preemptions, for Young/Daly."
    )
    keep: int = Field(2, ge=1, description="Committed checkpoints kept in the bucket.")


def young_daly_seconds(cost_s: float, mtbf_s: float) -> float:
    """The one checkpoint-interval rule, Young (1974) / Daly (2006): sqrt(2 x C x MTBF)
    minimises expected lost work plus checkpoint overhead (C: what one save costs the
    loop). Both in seconds. The trainer (train/ckpt_interval.py) and the cost estimator
    (costs/estimate.py) use it."""
    if cost_s < 0 or mtbf_s <= 0:
        raise ValueError("checkpoint cost must be >= 0 and MTBF > 0")
    return math.sqrt(2.0 * cost_s * mtbf_s)


class Resources(_Strict):
    accelerators: str = "A100-80GB:8"
    nodes: int = Field(1, ge=1)
    use_spot: bool = True
    cloud: Literal["aws", "gcp", "any", "local"] = Cloud.ANY.value  # a Cloud value


class NodePriceRow(_Strict):
    """One zone's catalog price of one node, copied into run.json at launch: the node
    installs no skypilot (so has no catalog) and prices its ledger segment from these."""

    cloud: str
    region: str
    zone: Optional[str] = None
    instance_type: str
    accelerators: str
    on_demand: float = Field(ge=0)
    spot: Optional[float] = Field(None, ge=0)
    source: str


class Budget(_Strict):
    max_cost_usd: Optional[float] = Field(None, gt=0)
    heartbeat_seconds: float = Field(60.0, gt=0, le=60.0)
    local_price_per_hour: float = Field(0.0, ge=0, description="Local runs only.")
    node_prices: list[NodePriceRow] = Field(
        default_factory=list,
        description="The catalog's node price per zone at launch (cloud runs).")


class DiskBill(_Strict):
    """One node's disk on one cloud, as SkyPilot provisions the task's disk_tier."""

    disk_type: Optional[str] = None
    iops: Optional[int] = None
    price_per_hour: float = Field(0.0, ge=0)
    source: str = ""


class Billing(_Strict):
    """What launch knew about the bill: read by the node (cap, fallback price) and cost.

    Written once at launch; never part of the training hash. A segment that cannot price
    itself is charged ``fallback_price_per_hour`` (the higher of the optimizer's launch
    price and the highest catalog price of the instance type under ``max_hourly_cost``),
    so the cap fails closed."""

    launched_at: Optional[float] = None
    launch_cloud: Optional[str] = None
    launch_region: Optional[str] = None
    launch_zone: Optional[str] = None
    launch_instance_type: Optional[str] = None
    launch_price_per_hour: Optional[float] = Field(None, ge=0)
    launch_price_source: str = ""
    fallback_price_per_hour: Optional[float] = Field(None, ge=0)
    fallback_price_source: str = ""
    max_hourly_cost: Optional[float] = Field(None, gt=0)
    disk_size_gb: Optional[int] = Field(None, gt=0)
    disk_tier: Optional[str] = None
    disks: dict[str, DiskBill] = Field(default_factory=dict)
    bucket_cloud: Optional[str] = None
    bucket_region: Optional[str] = None
    controller_instance_type: Optional[str] = None
    controller_price_per_hour: Optional[float] = Field(None, ge=0)
    controller_disk_price_per_hour: float = Field(0.0, ge=0)
    controller_source: str = ""
    controller_idle_minutes: float = Field(10.0, ge=0)


class RunSpec(_Strict):
    """Everything a node needs to train (or resume) a run."""

    schema_version: Literal[1] = 1
    run_id: str
    preset: str
    version: str
    template: str
    model: ModelSpec
    hyper: Hyperparameters = Hyperparameters()
    dataset: DatasetRef
    bucket_uri: str = Field(description="Bucket root: runs/<run_id>/ lives under it.")
    resources: Resources = Resources()
    budget: Budget = Budget()
    checkpoint: CheckpointPolicy = CheckpointPolicy()
    billing: Billing = Billing()
    code_version: str
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    overrides: dict[str, JsonValue] = Field(
        default_factory=dict, description="The keys `launch --set/--config` changed from the "
        "preset, with their validated values (hyper.learning_rate: 1e-05); the values "
        "themselves are in hyper/checkpoint above. Never part of the training hash.")

    @field_validator("run_id")
    @classmethod
    def _run_id(cls, v: str) -> str:
        return check_run_id(v)

    @model_validator(mode="after")
    def _template_known(self) -> "RunSpec":
        from vicuna_cloud.templates import TEMPLATES

        if self.template not in TEMPLATES:
            raise ValueError(
                f"unknown chat template {self.template!r}; known: {', '.join(sorted(TEMPLATES))}"
            )
        return self

    # --- derived values -------------------------------------------------------------
    @property
    def run_prefix(self) -> str:
        from vicuna_cloud.bucket_keys import run_prefix

        return run_prefix(self.run_id)

    @property
    def rope_scaling_factor(self) -> Optional[float]:
        """Linear RoPE factor: explicit, or ceil(max_length / context) when it exceeds it."""
        if self.hyper.rope_scaling_factor is not None:
            return self.hyper.rope_scaling_factor
        return rope_factor_for(self.hyper.max_length, self.model.context_length)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> "RunSpec":
        return cls.model_validate_json(text)

    def training_hash(self) -> str:
        """Hash of everything that changes the trained weights.

        A checkpoint records it; resuming under a spec with a different hash is refused.
        Budget, checkpoint cadence and provisioning may change between attempts.
        """
        payload = self.model_dump(
            include={"run_id", "model", "hyper", "dataset", "template", "resources"}
        )
        # Where the run is provisioned does not change the math, the world size does.
        payload["resources"] = {"accelerators": self.resources.accelerators,
                                "nodes": self.resources.nodes}
        # Fields added later hash as before while unset, so older runs still resume.
        if payload["dataset"].get("eval_sha256") is None:
            payload["dataset"].pop("eval_sha256", None)
        # What only changes what is logged, not the weights, hashes at its default, so an
        # override of it (`--set hyper.log_every_steps=10`) keeps the hash.
        for name in NON_WEIGHT_HYPER:
            payload["hyper"][name] = Hyperparameters.model_fields[name].default
        if payload["hyper"].get("eval_every_steps") is None:
            payload["hyper"].pop("eval_every_steps", None)
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()


def rope_factor_for(max_length: int, context_length: int) -> Optional[float]:
    """The one RoPE rule: linear factor ceil(max_length / context) past the base context
    (v1.5-16k: 16,384 / 4,096 = 4), None within it. Presets and the trainer both use it."""
    if max_length <= context_length:
        return None
    return float(-(-max_length // context_length))
