"""Benchmark and figures for the cost model: estimate vs Monte Carlo, and simulation speed.

    SKY_RUNTIME_DIR=<dir with .sky/catalogs/v8> python bench/cost_simulation.py [--trials N]

Prints, for 7B and 13B (v1.1 reference workload, cheapest spot in the catalog), the
closed-form estimate and the Monte Carlo p50/p90 at several preemption rates, plus the
wall time of each simulation. Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import time

from vicuna_cloud import pricing
from vicuna_cloud.costs import estimate as est
from vicuna_cloud.costs import simulate as sim
from vicuna_cloud.recipes import get_preset


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=20_000)
    ap.add_argument("--version", default="v1.1")
    args = ap.parse_args()
    print(f"{'preset':6} {'P/h':>5} {'ckpt min':>8} {'closed $':>9} {'p50 $':>8} {'p90 $':>8} "
          f"{'p50 h':>6} {'p90 h':>6} {'sim s':>6}")
    for size in ("7b", "13b"):
        preset = get_preset(size, args.version)
        price = pricing.cheapest(preset.hardware.accelerators, "any").spot
        work = est.reference_workload(preset)
        for rate in (0.0, 1 / 6, 0.5, 1.0):
            a = est.Assumptions(preemptions_per_hour=rate)
            e = est.estimate(preset, work, price, a)
            t = time.perf_counter()
            r = sim.simulate(work_hours=e.compute_hours, restart_hours=a.restart_minutes / 60,
                             interval_hours=e.checkpoint_interval_minutes / 60,
                             stall_hours=e.checkpoint_stall_seconds / 3600, rate_per_hour=rate,
                             price_per_hour=price * preset.hardware.nodes, trials=args.trials)
            dt = time.perf_counter() - t
            print(f"{size:6} {rate:5.2f} {e.checkpoint_interval_minutes:8.1f} "
                  f"{e.cost_usd:9.2f} {r.cost_p50:8.2f} {r.cost_p90:8.2f} {r.hours_p50:6.2f} "
                  f"{r.hours_p90:6.2f} {dt:6.2f}")
    print(f"({args.trials:,} trials per row; price = cheapest spot node-hour in the catalog)")


if __name__ == "__main__":
    main()
