"""Dry-run optimizer: which cloud, region and instance SkyPilot would pick, and its price.

SkyPilot's optimizer runs locally from the price catalog, but first asks which clouds are
*enabled* (``sky.check.get_cached_enabled_clouds_or_refresh``), which needs real cloud
credentials and a state DB refresh. For a dry run we want the catalog's answer for the
clouds the task allows, whether or not this machine holds credentials, so that single
function is replaced, only for the duration of the optimize call, by one returning the
task's candidate clouds (AWS and GCP). Nothing else in SkyPilot is touched.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Optional


class OptimizerError(RuntimeError):
    """No catalog entry satisfies the task."""


@dataclass(frozen=True)
class OptimizerChoice:
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

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["price_per_hour"] = round(self.price_per_hour, 4)
        return d


@contextlib.contextmanager
def catalog_clouds_enabled(clouds: tuple[str, ...] = ("aws", "gcp")) -> Iterator[None]:
    """Pretend exactly ``clouds`` are enabled (the narrow patch described above)."""
    from unittest import mock

    from sky import check as sky_check
    from sky.utils import registry

    enabled = [registry.CLOUD_REGISTRY.from_str(c) for c in clouds]

    def _enabled(capability, raise_if_no_cloud_access: bool = False):  # noqa: ARG001
        return list(enabled)

    with mock.patch.object(sky_check, "get_cached_enabled_clouds_or_refresh", _enabled):
        yield


def choose(task, clouds: tuple[str, ...] = ("aws", "gcp")) -> OptimizerChoice:
    """Cheapest placement for a parsed ``sky.Task`` according to the local catalog.

    ``clouds``: those to consider (launch passes the ones with credentials here, which
    are the ones SkyPilot itself would use).
    """
    import sky
    from sky import exceptions, sky_logging
    from sky.optimizer import Optimizer

    dag = sky.Dag()
    dag.add(task)
    try:
        with catalog_clouds_enabled(clouds), sky_logging.silent():
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
