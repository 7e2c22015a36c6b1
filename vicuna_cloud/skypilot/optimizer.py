"""Dry-run optimizer: which cloud, region and instance SkyPilot would pick, and its price.

SkyPilot's optimizer runs locally from the price catalog, but around it sit two calls that
need real cloud accounts and the network. For a dry run we want the catalog's answer, so
for the duration of the optimize call only (unittest.mock.patch.object, undone on exit):
1. ``sky.check.get_cached_enabled_clouds_or_refresh`` returns the clouds we name (those
   with credentials on this machine) instead of probing every cloud's credentials and
   refreshing SkyPilot's state DB;
2. ``sky.clouds.AWS.get_active_user_identity`` reports "no identity", so the AWS catalog
   keeps its account-independent zone ids (use1-az1) instead of calling STS and EC2
   DescribeAvailabilityZones in every region to map them to this account's zone names
   (tens of seconds, and a network call that a dry run should not make).
Nothing else in SkyPilot is touched; real launches go through the API server unpatched.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

from pydantic import BaseModel, ConfigDict, JsonValue

from vicuna_cloud.errors import BackendError
from vicuna_cloud.runspec import Cloud


class OptimizerError(BackendError, RuntimeError):
    """No catalog entry satisfies the task."""


class OptimizerChoice(BaseModel):
    """SkyPilot's optimizer choice for a task, from the local catalog (the SDK's plan
    carries it as ``LaunchPlan.optimizer``)."""

    model_config = ConfigDict(frozen=True)

    cloud: str
    region: Optional[str]
    zone: Optional[str]
    instance_type: str
    accelerators: str
    use_spot: bool
    nodes: int
    price_per_node_hour: float

    @property
    def price_per_hour(self) -> float:
        return self.price_per_node_hour * self.nodes

    def as_dict(self) -> dict[str, JsonValue]:
        d = self.model_dump()
        d["price_per_hour"] = round(self.price_per_hour, 4)
        return d


@contextlib.contextmanager
def catalog_only(clouds: tuple[str, ...] = Cloud.priced()) -> Iterator[None]:
    """Pretend exactly ``clouds`` are enabled and AWS has no identity (see above)."""
    from unittest import mock

    from sky import check as sky_check
    from sky import exceptions
    from sky.clouds import aws as sky_aws
    from sky.utils import registry

    enabled = [registry.CLOUD_REGISTRY.from_str(c) for c in clouds]

    def _enabled(capability, raise_if_no_cloud_access: bool = False):  # noqa: ARG001
        return list(enabled)

    def _no_identity(*args, **kwargs):
        raise exceptions.CloudUserIdentityError("dry run: catalog zone ids, no STS call")

    with mock.patch.object(sky_check, "get_cached_enabled_clouds_or_refresh", _enabled), \
            mock.patch.object(sky_aws.AWS, "get_active_user_identity", _no_identity):
        yield


def choose(task, clouds: tuple[str, ...] = Cloud.priced()) -> OptimizerChoice:
    """Cheapest placement for a parsed ``sky.Task`` according to the local catalog.

    ``clouds``: those to consider (launch passes the ones with credentials here, which
    are the ones SkyPilot itself would use).
    """
    import sky
    from sky import exceptions
    from sky.optimizer import Optimizer

    from vicuna_cloud.pricing import sky_catalog

    dag = sky.Dag()
    dag.add(task)
    try:  # sky_catalog: SkyPilot's output silenced; a catalog it cannot fetch is one line
        with catalog_only(clouds), sky_catalog():
            Optimizer.optimize(dag, minimize=sky.OptimizeTarget.COST, quiet=True)
    except exceptions.ResourcesUnavailableError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "no candidates"
        raise OptimizerError(
            f"no instance in the catalog satisfies the task ({first}); try other --gpus, "
            "--cloud any, or --no-spot"
        ) from None
    best = task.best_resources
    accs = best.accelerators or {}
    acc = ",".join(f"{k}:{v:g}" for k, v in accs.items())
    return OptimizerChoice(
        cloud=str(best.cloud),
        region=best.region,
        zone=best.zone,
        instance_type=best.instance_type,
        accelerators=acc,
        use_spot=bool(best.use_spot),
        nodes=task.num_nodes,
        price_per_node_hour=float(best.get_cost(3600)),
    )
