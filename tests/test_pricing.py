"""Prices through SkyPilot's catalog API, checked against the snapshot CSV rows read here."""

from __future__ import annotations

import csv
from collections import defaultdict

import pytest

from conftest import CATALOG_SNAPSHOT
from vicuna_cloud import pricing


def _rows(cloud: str) -> list[dict]:
    with open(CATALOG_SNAPSHOT / cloud / "vms.csv", newline="") as f:
        return list(csv.DictReader(f))


def _f(x: str):
    return float(x) if x not in ("", None) else None


def test_aws_cheapest_spot_is_the_csv_minimum_row():
    rows = [r for r in _rows("aws") if r["InstanceType"] == "p4de.24xlarge" and r["SpotPrice"]]
    best = min(rows, key=lambda r: float(r["SpotPrice"]))
    p = pricing.cheapest("A100-80GB:8", "aws", use_spot=True)
    assert p.instance_type == "p4de.24xlarge"
    assert p.spot == pytest.approx(float(best["SpotPrice"]))
    assert round(p.spot, 2) == 8.03  # SOURCE.md: eu-central-1
    assert (p.region, p.zone) == (best["Region"], best["AvailabilityZone"])
    assert p.on_demand == pytest.approx(float(best["Price"]))
    assert "aws/vms.csv" in p.source and "p4de.24xlarge" in p.source
    assert best["AvailabilityZone"] in p.source


def test_gcp_node_price_is_vm_row_plus_gpu_row_of_the_same_zone():
    rows = _rows("gcp")
    vm = {r["AvailabilityZone"]: r for r in rows if r["InstanceType"] == "a2-ultragpu-8g"}
    gpu = {r["AvailabilityZone"]: r for r in rows
           if not r["InstanceType"] and r["AcceleratorName"] == "A100-80GB"
           and r["AcceleratorCount"] in ("8", "8.0")}
    zones = sorted(set(vm) & set(gpu))
    prices = {p.zone: p for p in pricing.zone_prices("A100-80GB:8", "gcp")}
    assert sorted(prices) == zones
    for z in zones:
        p = prices[z]
        assert p.instance_type == "a2-ultragpu-8g"
        assert p.on_demand == pytest.approx(float(vm[z]["Price"]) + float(gpu[z]["Price"]))
        assert p.spot == pytest.approx(float(vm[z]["SpotPrice"]) + float(gpu[z]["SpotPrice"]))
        assert "a2-ultragpu-8g" in p.source and "A100-80GB:8" in p.source
        flagged = float(gpu[z]["SpotPrice"]) > float(gpu[z]["Price"]) + 1e-3
        assert (pricing.FLAG_SPOT_ABOVE_ON_DEMAND in p.flags) == flagged
    # The snapshot has such rows (us-central1): reported as-is, flagged.
    assert any(pricing.FLAG_SPOT_ABOVE_ON_DEMAND in p.flags for p in prices.values())
    best = pricing.cheapest("A100-80GB:8", "gcp")
    assert round(best.spot, 2) == 13.18
    assert best.spot == min(p.spot for p in prices.values())


def test_any_cloud_picks_the_cheapest_of_both_and_summary_spreads():
    s = pricing.summarize("A100-80GB:8", "any")
    assert s.cheapest_spot.cloud == "aws" and round(s.cheapest_spot.spot, 2) == 8.03
    aws_od = min(float(r["Price"]) for r in _rows("aws") if r["InstanceType"] == "p4de.24xlarge")
    assert s.cheapest_on_demand.on_demand <= aws_od
    assert s.cheapest_spot.spot <= s.spot_median <= s.spot_max


def test_price_at_zone_and_region_fallback():
    rows = [r for r in _rows("aws") if r["InstanceType"] == "p4de.24xlarge"
            and r["Region"] == "us-east-1"]
    z = rows[0]
    p = pricing.price_at("aws", "us-east-1", z["AvailabilityZone"], "A100-80GB:8")
    assert p.spot == pytest.approx(float(z["SpotPrice"]))
    # Issue 13.6: a zone name the catalog does not know (AWS zone ids vs names) was
    # charged the region's cheapest zone (58% low in ap-southeast-1); now its highest.
    q = pricing.price_at("aws", "us-east-1", "us-east-1x", "A100-80GB:8")
    assert q.spot == pytest.approx(max(float(r["SpotPrice"]) for r in rows))
    assert "not in catalog" in q.source and "highest" in q.source
    # The zone id from the instance metadata is tried first and prices the exact row.
    zid = rows[-1]["AvailabilityZone"]
    r = pricing.price_at("aws", "us-east-1", "us-east-1x", "A100-80GB:8", zone_id=zid)
    assert r.spot == pytest.approx(float(rows[-1]["SpotPrice"]))


def test_ap_southeast_1_unknown_zone_is_not_charged_the_cheapest():
    rows = [r for r in _rows("aws") if r["InstanceType"] == "p4de.24xlarge"
            and r["Region"] == "ap-southeast-1" and r["SpotPrice"]]
    if len(rows) < 2:
        pytest.skip("snapshot has fewer than 2 ap-southeast-1 p4de zones")
    q = pricing.price_at("aws", "ap-southeast-1", "ap-southeast-1a", "A100-80GB:8")
    assert q.spot == pytest.approx(max(float(r["SpotPrice"]) for r in rows))


def test_headline_minima_skip_flagged_rows_and_source_shows_snapshot_date():
    s = pricing.summarize("A100-80GB:8", "gcp")
    assert not s.cheapest_on_demand.flags and not s.cheapest_spot.flags
    flagged = [p for p in pricing.zone_prices("A100-80GB:8", "gcp") if p.flags]
    assert flagged, "the snapshot has GCP rows with spot above on-demand"
    # The snapshot's own date (SOURCE.md, copied beside it by conftest), not the file's mtime.
    assert "(snapshot 2026-11-27)" in s.cheapest_spot.source


def test_highest_price_is_the_priciest_zone_under_a_ceiling():
    allp = [p.spot for p in pricing.zone_prices("A100-80GB:8", "aws") if p.spot is not None]
    assert pricing.highest_price("A100-80GB:8", "aws", True).spot == pytest.approx(max(allp))
    mid = sorted(allp)[len(allp) // 2]
    capped = pricing.highest_price("A100-80GB:8", "aws", True, ceiling=mid)
    assert capped.spot == pytest.approx(max(p for p in allp if p <= mid + 1e-3))


def test_aws_rows_without_spot_price_are_flagged_not_invented():
    by_zone = defaultdict(dict)
    for r in _rows("aws"):
        if r["InstanceType"] == "p5.48xlarge":
            by_zone[r["AvailabilityZone"]] = r
    empty = [z for z, r in by_zone.items() if not r["SpotPrice"]]
    assert empty, "snapshot should contain p5 rows without spot price"
    prices = {p.zone: p for p in pricing.zone_prices("H100:8", "aws")}
    for z in empty:
        assert prices[z].spot is None and pricing.FLAG_NO_SPOT in prices[z].flags
        with pytest.raises(pricing.PricingError, match="no spot price"):
            prices[z].price(use_spot=True)


def test_bad_inputs_say_what_is_wrong():
    with pytest.raises(pricing.PricingError, match="NAME:COUNT"):
        pricing.parse_accelerators("A100-80GB:eight")
    with pytest.raises(pricing.PricingError, match="choose aws, gcp or any"):
        pricing.zone_prices("A100-80GB:8", "azure")
    with pytest.raises(pricing.PricingError, match="no"):
        pricing.zone_prices("NOPE-GPU:8", "aws")
