"""Monte Carlo of spot runs: exact without preemptions, close to the closed form with them."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from vicuna_cloud.cli import app
from vicuna_cloud.cli.common import UserError, console
from vicuna_cloud.costs import simulate as sim

BASE = dict(work_hours=4.0, restart_hours=10 / 60, stall_hours=40 / 3600, price_per_hour=8.0)


def test_no_preemptions_is_exact():
    r = sim.simulate(interval_hours=0.5, rate_per_hour=0.0, trials=50, **BASE)
    hours = 10 / 60 + 4.0 + math.floor(4.0 / 0.5) * 40 / 3600
    assert r.hours_p50 == pytest.approx(hours) and r.hours_p90 == pytest.approx(hours)
    assert r.cost_p50 == pytest.approx(hours * 8.0)
    assert r.preemptions_mean == 0


def test_mean_tracks_the_closed_form_and_spread_grows_with_interval():
    rate, interval = 0.5, 0.5
    r = sim.simulate(interval_hours=interval, rate_per_hour=rate, trials=4000, seed=1,
                     budget=40.0, **BASE)
    base = BASE["restart_hours"] + 4.0 + math.floor(4.0 / interval) * BASE["stall_hours"]
    closed = base / (1 - rate * (BASE["restart_hours"] + interval / 2))
    # The closed form is a first-order mean; the median sits near it (within 15%).
    assert r.hours_p50 == pytest.approx(closed, rel=0.15)
    assert r.hours_p90 > r.hours_p50 > 4.0
    assert 0.0 < r.p_over_budget < 1.0
    assert r.preemptions_mean == pytest.approx(rate * r.hours_p50, rel=0.3)
    again = sim.simulate(interval_hours=interval, rate_per_hour=rate, trials=4000, seed=1,
                         budget=40.0, **BASE)
    assert again == r  # seeded: reproducible
    table = sim.interval_table(intervals_minutes=(10, 240), rate_per_hour=rate, trials=2000,
                               seed=2, **BASE)
    assert table[1].hours_p90 > table[0].hours_p90  # rare checkpoints lose more work


def test_hopeless_rate_is_refused():
    with pytest.raises(sim.SimulationError, match="did not finish"):
        sim.simulate(interval_hours=5.0, rate_per_hour=50.0, trials=10, **BASE)


def test_cli_simulate_json(monkeypatch):
    monkeypatch.setattr(console, "width", 250)
    runner = CliRunner()
    res = runner.invoke(app, ["cost", "--simulate", "7b", "--version", "v1.1", "--trials", "500",
                              "--preemptions-per-hour", "0.5", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    # node + its disk_tier high disk (gp3, 256 GB, 7,000 IOPS of which 3,000 free) + the
    # controller (m6i.2xlarge, 50 GB gp3)
    disk = (256 * 0.08 + (7000 - 3000) * 0.005) / 730
    assert d["price_per_hour_all_nodes"] == pytest.approx(8.0274 + disk + 0.384 + 50 * 0.08 / 730)
    assert d["chosen"]["cost_p90"] >= d["chosen"]["cost_p50"] > 0
    minutes = [r["interval_minutes"] for r in d["intervals"]]
    assert minutes == sorted(minutes) and 60.0 in minutes
    assert any(r["interval_minutes"] == d["chosen"]["interval_minutes"] for r in d["intervals"])
    table = runner.invoke(app, ["cost", "--simulate", "7b", "--version", "v1.1", "--trials",
                                "500", "--preemptions-per-hour", "0.5"])
    assert table.exit_code == 0
    assert f"${d['chosen']['cost_p90']:,.2f}" in table.output
    bad = runner.invoke(app, ["cost", "--simulate", "7b", "--trials", "0"])
    assert isinstance(bad.exception, UserError) and "--trials" in str(bad.exception)
