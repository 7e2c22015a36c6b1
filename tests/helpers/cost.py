"""Shared helpers for the cost tests: run specs and a simulated clock."""

from __future__ import annotations

from vicuna_cloud.recipes import get_preset
from vicuna_cloud.run_store import spec_from_preset, write_run_spec
from vicuna_cloud.runspec import Budget, RunSpec
from vicuna_cloud.storage import open_bucket


class FakeClock:
    def __init__(self, t: float = 1_800_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> float:
        self.t += s
        return self.t


def make_spec(bucket_uri: str, *, run_id: str = "vicuna-test-run", cloud: str = "local",
              price: float = 36.0, max_cost: float | None = None, heartbeat: float = 60.0,
              preset: str = "tiny", write: bool = True) -> RunSpec:
    spec = spec_from_preset(
        get_preset(preset), run_id=run_id, dataset_uri=bucket_uri + "/datasets/x",
        dataset_sha256=None, bucket_uri=bucket_uri, cloud=cloud,
        local_price_per_hour=price if cloud == "local" else 0.0,
    )
    spec = spec.model_copy(update={"budget": Budget(
        max_cost_usd=max_cost, heartbeat_seconds=heartbeat,
        local_price_per_hour=price if cloud == "local" else 0.0)})
    if write:
        write_run_spec(open_bucket(bucket_uri), spec)
    return spec
