"""Monte Carlo of a spot run: preemptions, restarts, lost work and checkpoint stalls.

Why simulate when estimate.py has a closed form: the closed form gives the mean; a user
picking a checkpoint interval against a budget needs the spread (p90), and the chance of
passing the budget. Model, per trial (vectorised over trials with numpy):
- a segment starts with ``restart`` hours of billed setup, then trains; every
  ``interval`` hours of work it stalls ``stall`` hours to commit a checkpoint;
- the segment is cut at an exponential time (rate P per billed hour, a Poisson process);
  work since the last committed checkpoint is lost, and a new segment starts;
- the run ends when all ``work`` hours are committed. Billed hours = sum of segment
  lengths; the time SkyPilot waits for capacity between segments is not billed and not
  modelled.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from pydantic import BaseModel, ConfigDict

from vicuna_cloud.errors import ConfigError

MAX_SEGMENTS = 20_000


class SimulationError(ConfigError):
    pass


class SimResult(BaseModel):
    """Spread of one checkpoint interval's simulated runs (p50/p90 of cost and hours)."""

    model_config = ConfigDict(frozen=True)

    interval_minutes: float
    trials: int
    cost_p50: float
    cost_p90: float
    hours_p50: float
    hours_p90: float
    preemptions_mean: float
    p_over_budget: Optional[float]

    def to_dict(self) -> dict:
        return self.model_dump()


def simulate(*, work_hours: float, restart_hours: float, interval_hours: float,
             stall_hours: float, rate_per_hour: float, price_per_hour: float,
             trials: int = 2000, seed: int = 0, budget: Optional[float] = None) -> SimResult:
    """Billed hours and dollars of ``trials`` independent runs (price covers all nodes)."""
    if work_hours <= 0 or interval_hours <= 0 or trials <= 0:
        raise SimulationError("work, interval and trials must be positive")
    if rate_per_hour < 0 or restart_hours < 0 or stall_hours < 0:
        raise SimulationError("rate, restart and stall must be >= 0")
    rng = np.random.default_rng(seed)
    remaining = np.full(trials, float(work_hours))
    billed = np.zeros(trials)
    preemptions = np.zeros(trials, dtype=np.int64)
    active = np.ones(trials, dtype=bool)
    for _ in range(MAX_SEGMENTS):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        rem = remaining[idx]
        need = restart_hours + rem + np.floor(rem / interval_hours) * stall_hours
        if rate_per_hour > 0:
            cut = rng.exponential(1.0 / rate_per_hour, size=idx.size)
        else:
            cut = np.full(idx.size, np.inf)
        done = cut >= need
        billed[idx] += np.where(done, need, cut)
        trained = np.maximum(cut - restart_hours, 0.0)
        saved = np.floor(trained / (interval_hours + stall_hours)) * interval_hours
        remaining[idx] = np.where(done, 0.0, np.maximum(rem - saved, 0.0))
        preemptions[idx] += ~done
        active[idx] = ~done
    else:
        raise SimulationError(
            f"runs did not finish within {MAX_SEGMENTS:,} preemptions: at {rate_per_hour:g}/h "
            "the restart plus one interval rarely fits between preemptions; shorten the "
            "checkpoint interval or the restart time"
        )
    cost = billed * price_per_hour
    return SimResult(
        interval_minutes=interval_hours * 60.0, trials=trials,
        cost_p50=float(np.percentile(cost, 50)), cost_p90=float(np.percentile(cost, 90)),
        hours_p50=float(np.percentile(billed, 50)), hours_p90=float(np.percentile(billed, 90)),
        preemptions_mean=float(preemptions.mean()),
        p_over_budget=None if budget is None else float((cost > budget).mean()),
    )


DEFAULT_INTERVALS_MIN = (5.0, 10.0, 20.0, 30.0, 60.0, 120.0)


def interval_table(*, intervals_minutes, **kwargs) -> list[SimResult]:
    """One SimResult per checkpoint interval, same seed (common random numbers)."""
    return [simulate(interval_hours=m / 60.0, **kwargs) for m in intervals_minutes]
