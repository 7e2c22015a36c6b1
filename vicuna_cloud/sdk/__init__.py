"""The Python API: what the CLI calls, and what a notebook calls.

In the spirit of SkyPilot's ``sky.launch`` / ``sky.jobs.launch``: typed requests in,
typed plans and results out, and one hierarchy of errors (``VicunaError``) whose messages
say what is wrong and how to fix it. Nothing here prints or exits.

    from vicuna_cloud import sdk

    p = sdk.plan(sdk.LaunchRequest(preset="7b", bucket="s3://b/v", data="s3://b/v/datasets/<sha>"))
    sdk.launch(p)                                   # run.json written, managed job submitted
    sdk.status(p.spec.run_id).runs[0].progress      # 'step 120/1611, loss 1.0123'
    sdk.launch_local(sdk.LocalLaunchRequest(preemptions=2), on_event=print)

Layers (arrows point down only): cli/ (Typer, rich tables, --json) -> sdk/ (this package)
-> backends skypilot/ and local/, beside storage/, data/, costs/, pricing, ledger.
"""

from vicuna_cloud.errors import (
    BackendError, ConfigError, CredentialsError, DataError, RunConflict, RunNotFound,
    StorageUnavailable, VicunaError,
)
from vicuna_cloud.sdk.cloud import launch, plan, render, render_task, write_dry_run
from vicuna_cloud.sdk.costs import (
    EstimateReport, EstimateRequest, SimulationReport, cost_overview, cost_report, estimate,
    simulate,
)
from vicuna_cloud.sdk.delta import DeltaResult, WrongBase, apply_delta, make_delta
from vicuna_cloud.evaluation.report import EvalReport
from vicuna_cloud.sdk.evaluation import EvaluateRequest, evaluate
from vicuna_cloud.sdk.data import PrepareOptions, inspect_data, prepare_data, upload_data
from vicuna_cloud.sdk.export import ExportResult, chat_command, chat_model, export
from vicuna_cloud.sdk.local import launch_local
from vicuna_cloud.sdk.models import (
    LaunchPlan, LaunchRequest, LaunchResult, LaunchSummary, LocalEvent, LocalLaunchRequest,
    LocalLaunchResult, OptimizerChoice, RenderRequest, RunStatus, StatusReport,
)
from vicuna_cloud.sdk.presets import presets
from vicuna_cloud.sdk.runs import cancel, find_run, logs, status
from vicuna_cloud.sdk.serving import (
    ServePlan, ServeRequest, ServeResult, ServeSummary, local_server_command, plan_serve, serve,
)

__all__ = [
    # calls
    "cancel", "chat_command", "chat_model", "cost_overview", "cost_report", "estimate",
    "export", "find_run", "inspect_data", "launch", "launch_local", "logs", "plan",
    "prepare_data", "presets", "render", "render_task", "simulate", "status", "upload_data", "write_dry_run",
    "apply_delta", "evaluate", "local_server_command", "make_delta", "plan_serve", "serve",
    # requests, plans, results
    "EstimateReport", "EstimateRequest", "EvalReport", "ExportResult", "SimulationReport",
    "ServeSummary", "LaunchPlan", "LaunchRequest", "LaunchResult", "LaunchSummary",
    "LocalEvent", "LocalLaunchRequest", "LocalLaunchResult", "OptimizerChoice",
    "PrepareOptions", "RenderRequest", "RunStatus", "StatusReport",
    "DeltaResult", "EvaluateRequest", "ServePlan", "ServeRequest", "ServeResult", "WrongBase",
    # errors
    "BackendError", "ConfigError", "CredentialsError", "DataError", "RunConflict",
    "RunNotFound", "StorageUnavailable", "VicunaError",
]
