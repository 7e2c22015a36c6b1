"""Typed SkyPilot task builder: preset + launch options -> task dict -> checked YAML.

The dict is always checked twice before anyone sees it: by our own rules for the parts
SkyPilot's client lets through (``job_recovery`` keys and strategy, exit code 137, names),
then by SkyPilot's own parser, ``sky.Task.from_yaml_config``, on a deep copy (it mutates
its argument).

Decisions, each checked against SkyPilot 0.14.1's source (tasks/README.md cites the lines):
- job_recovery: ``max_restarts_on_errors: 0``: any exit not listed in
  ``recover_on_exit_codes`` ends the job at once (a bad spec, a failed setup, a bug would
  fail the same way on a new cluster); ``recover_on_exit_codes`` lists EXIT_PREEMPTED (75)
  and EXIT_TRANSIENT (69: storage outage, NCCL/CUDA/network fault), which restart without
  counting. Never 137 (OOM kill: retrying cannot help). Preemptions recover regardless.
- One file_mount, the run prefix MOUNT-ed at RUN_MOUNT (``$VICUNA_RUN_DIR``): setup's
  ``python3 -m vicuna_cloud.nodeside open`` (and run's ``gate``) run before any install,
  with the image's Python and the standard library only, so they cannot reach S3/GCS
  themselves; they read run.json and write this VM's ledger segment through the mount.
  Nothing else uses it: the trainer downloads the dataset and reads/writes the run prefix
  through vicuna_cloud.storage (atomic objects, COMMIT.json last), and there is no dataset
  COPY (it would only add time and failure modes to every recovery).
- Locality: the cloud (and the region, when launch could read it) follow the bucket;
  crossing is an explicit ``--cloud any`` / ``--region any`` that launch warns about.
- disk_tier ``high``: checkpoints are staged on the boot disk before upload; see
  DISK_TIER below for the arithmetic.
- network_tier ``best`` for multi-node on AWS only (EFA on p4de/p5). On GCP, 0.14.1's
  ``best`` means GPUDirect-TCPX with a Container-Optimized-OS image
  (sky/clouds/gcp.py, make_deploy_resources_variables), which A100 a2 VMs do not have.
- workdir: the source tree that renders the task, synced by SkyPilot; setup puts it on
  the venv's path.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any, Optional

from vicuna_cloud import __version__
from vicuna_cloud.exit_codes import EXIT_CONFIG, EXIT_FAILED, RECOVERABLE_EXIT_CODES
from vicuna_cloud.recipes import Preset
from vicuna_cloud.skypilot.run_script import run_script, setup_script
from vicuna_cloud.errors import ConfigError
from vicuna_cloud.runspec import Cloud

#: Where the run prefix is mounted for vicuna_cloud.nodeside (its only reader/writer).
RUN_MOUNT = "/vicuna/run"
SECRET_NAMES = ("HF_TOKEN", "WANDB_API_KEY")
RECOVERY_STRATEGY = "EAGER_NEXT_REGION"
#: Nothing that exits with a code outside recover_on_exit_codes is tried again.
MAX_RESTARTS_ON_ERRORS = 0
RECOVER_ON_EXIT_CODES = RECOVERABLE_EXIT_CODES
#: Checkpoints are staged on the boot disk, then uploaded (train/checkpoint.py). 7B's full
#: state is ~81 GB per save: gp3 at ``high`` (7,000 IOPS, 7000//16 = 437 MB/s by
#: sky/clouds/aws.py _get_disk_specs) writes it in ~3 min, well inside the ~20 min between
#: saves, for ~$0.07/h on 256 GB; ``best`` is io2 at 20,000 IOPS, ~$1.8/h. GCP: pd-ssd.
DISK_TIER = "high"
#: CPU-only presets (tiny): vCPUs asked per process.
CPUS_PER_PROCESS = 2

# What SkyPilot 0.14.1 understands in job_recovery (sky/utils/schemas.py and the
# strategies registered in sky/jobs/recovery_strategy.py). The client-side schema allows
# any extra key, so a typo would only surface on the API server: we check here.
JOB_RECOVERY_KEYS = frozenset({"strategy", "max_restarts_on_errors", "recover_on_exit_codes"})
JOB_RECOVERY_STRATEGIES = frozenset({"EAGER_NEXT_REGION", "FAILOVER"})
NEVER_RECOVER_ON = frozenset({137})  # SIGKILL/OOM: the same VM size will be killed again

CLOUDS = Cloud.choosable()
#: Which cloud a bucket scheme lives on: the default cloud of a launch follows it.
CLOUD_OF_SCHEME = {"s3": "aws", "gs": "gcp"}
#: Job names: SkyPilot 0.14.1's task-name rule (sky/task.py) capped at 63 characters:
#: letters and digits, joined by at most two of '.', '_', '-'.
NAME_PATTERN = re.compile(r"^(?=.{1,63}$)[A-Za-z0-9]+(?:[._-]{1,2}[A-Za-z0-9]+)*$")


class TaskValidationError(ConfigError):
    """The task would be rejected (by us or by SkyPilot's parser)."""


@dataclass(frozen=True)
class TaskOptions:
    """Everything about one launch that is not in the preset."""

    run_id: str
    run_uri: str  # full URI of runs/<run_id>/run.json
    run_prefix_uri: str  # bucket URI of runs/<run_id>/
    data_uri: str
    use_spot: bool = True
    cloud: str = "any"
    region: Optional[str] = None  # the bucket's region, when launch could read it
    name: Optional[str] = None
    code_version: str = __version__
    workdir: str = "."


def check_name(name: str, what: str = "--name") -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise TaskValidationError(
            f"{what} {name!r} may only use letters, digits, '.', '_' and '-' (1-63 "
            "characters, starting and ending with a letter or digit); choose another"
        )
    return name


def _resources(preset: Preset, opts: TaskOptions) -> dict[str, Any]:
    if opts.cloud not in CLOUDS:
        raise TaskValidationError(
            f"unknown cloud {opts.cloud!r}; use --cloud aws, gcp or any"
        )
    hw = preset.hardware
    res: dict[str, Any] = {}
    if hw.accelerator == "cpu":  # a CPU rehearsal of the real thing: no accelerator
        res["cpus"] = f"{hw.gpus_per_node * CPUS_PER_PROCESS}+"
    else:
        res["accelerators"] = hw.accelerators
    res.update({
        "use_spot": opts.use_spot,
        "disk_size": preset.disk_size_gb,
        "disk_tier": DISK_TIER,
        "job_recovery": {
            "strategy": RECOVERY_STRATEGY,
            "max_restarts_on_errors": MAX_RESTARTS_ON_ERRORS,
            "recover_on_exit_codes": list(RECOVER_ON_EXIT_CODES),
        },
    })
    fast = hw.nodes > 1 and hw.accelerator != "cpu"
    if opts.cloud == "any":
        aws: dict[str, Any] = {"cloud": "aws"}
        if fast:
            aws["network_tier"] = "best"
        res["any_of"] = [aws, {"cloud": "gcp"}]
    else:
        res["cloud"] = opts.cloud
        if opts.region:
            res["region"] = opts.region
        if fast and opts.cloud == "aws":
            res["network_tier"] = "best"
    return res


def build_task_config(preset: Preset, opts: TaskOptions) -> dict[str, Any]:
    """The task as a plain dict, in the key order the YAML shows."""
    name = check_name(opts.name or opts.run_id)
    if not opts.data_uri.startswith(("s3://", "gs://")):
        raise TaskValidationError(
            f"dataset URI {opts.data_uri!r} must be s3:// or gs:// for a cloud run; "
            "upload it with `vicuna-cloud data upload DIR s3://BUCKET/...`"
        )
    if not opts.run_prefix_uri.startswith(("s3://", "gs://")):
        raise TaskValidationError(
            f"bucket {opts.run_prefix_uri!r} must be s3:// or gs:// for a cloud run "
            "(a local directory works only with --local)"
        )
    return {
        "name": name,
        "workdir": opts.workdir,
        "num_nodes": preset.hardware.nodes,
        "resources": _resources(preset, opts),
        "envs": _envs(preset, opts),
        # Values are given at launch from the user's environment, never written here.
        "secrets": {name_: None for name_ in SECRET_NAMES},
        # nodeside's only way to the bucket before setup installs anything (see above).
        "file_mounts": {
            RUN_MOUNT: {"source": opts.run_prefix_uri.rstrip("/"), "mode": "MOUNT"},
        },
        "setup": setup_script(opts.code_version),
        "run": run_script(),
    }


def _envs(preset: Preset, opts: TaskOptions) -> dict[str, Any]:
    envs: dict[str, Any] = {
        "VICUNA_RUN_ID": opts.run_id,
        "VICUNA_RUN_URI": opts.run_uri,
        "VICUNA_CODE_VERSION": opts.code_version,
        "VICUNA_RUN_DIR": RUN_MOUNT,
    }
    if preset.hardware.accelerator == "cpu":  # SkyPilot sets 0 GPUs per node for these
        envs["VICUNA_PROCS_PER_NODE"] = str(preset.hardware.gpus_per_node)
    return envs


def check_job_recovery(config: dict[str, Any]) -> None:
    """Our checks for what SkyPilot's client-side schema lets through."""
    resources = config.get("resources") or {}
    blocks = [resources] + list(resources.get("any_of") or []) + list(
        resources.get("ordered") or [])
    for block in blocks:
        jr = block.get("job_recovery")
        if jr is None:
            continue
        if isinstance(jr, str):
            jr = {"strategy": jr}
        unknown = set(jr) - JOB_RECOVERY_KEYS
        if unknown:
            raise TaskValidationError(
                f"unknown job_recovery key(s) {', '.join(sorted(unknown))}; SkyPilot 0.14 "
                f"knows {', '.join(sorted(JOB_RECOVERY_KEYS))}"
            )
        strategy = jr.get("strategy")
        if strategy is not None and str(strategy).upper() not in JOB_RECOVERY_STRATEGIES:
            raise TaskValidationError(
                f"unknown job_recovery strategy {strategy!r}; use one of "
                f"{', '.join(sorted(JOB_RECOVERY_STRATEGIES))}"
            )
        codes = jr.get("recover_on_exit_codes") or []
        codes = [codes] if isinstance(codes, int) else list(codes)
        bad = NEVER_RECOVER_ON.intersection(codes)
        if bad:
            raise TaskValidationError(
                f"recover_on_exit_codes must not contain {sorted(bad)} (killed for memory: "
                "recovering would pay for the same failure again)"
            )
        never = {EXIT_CONFIG, EXIT_FAILED}.intersection(codes)
        if never or int(jr.get("max_restarts_on_errors") or 0) != 0:
            raise TaskValidationError(
                "job_recovery must not retry a config error or a bug: "
                "max_restarts_on_errors must be 0 and recover_on_exit_codes must not hold "
                f"{EXIT_CONFIG} or {EXIT_FAILED} (a new cluster would fail the same way)"
            )


def check_no_secret_values(config: dict[str, Any]) -> None:
    secrets = config.get("secrets") or {}
    if isinstance(secrets, dict):
        filled = [k for k, v in secrets.items() if v not in (None, "")]
        if filled:
            raise TaskValidationError(
                f"secret value(s) for {', '.join(filled)} in the task; they are passed at "
                "launch from the environment and must never be written"
            )


def validate_task_config(config: dict[str, Any], secrets: Optional[dict[str, str]] = None):
    """Check ``config`` and return SkyPilot's parsed ``sky.Task`` (config is not mutated).

    ``secrets`` (name -> value) become the task's secret values for submission only;
    secrets declared with no value are dropped when the user has none to give, so
    SkyPilot does not look for a managed secret that does not exist.
    """
    check_job_recovery(config)
    check_no_secret_values(config)
    import sky

    cfg = copy.deepcopy(config)
    overrides = None
    if secrets is not None:
        declared = cfg.get("secrets") or {}
        cfg["secrets"] = {k: v for k, v in declared.items() if k in secrets}
        overrides = [(k, v) for k, v in secrets.items() if k in declared]
    try:
        return sky.Task.from_yaml_config(cfg, secrets_overrides=overrides)
    except Exception as e:  # SkyPilot raises ValueError and jsonschema errors alike
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TaskValidationError(f"SkyPilot rejected the task: {first}") from None


class _LiteralDumper:
    """yaml.SafeDumper that writes multi-line strings (setup, run) as literal blocks."""

    @staticmethod
    def make():
        import yaml

        class Dumper(yaml.SafeDumper):
            pass

        def str_rep(dumper, data):
            style = "|" if "\n" in data else None
            return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)

        Dumper.add_representer(str, str_rep)
        return Dumper


def to_yaml(config: dict[str, Any], header: str = "") -> str:
    import yaml

    body = yaml.dump(config, Dumper=_LiteralDumper.make(), sort_keys=False,
                     default_flow_style=False, width=100, allow_unicode=True)
    lines = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return lines + body
