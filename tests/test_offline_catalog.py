"""`cost --estimate` and `launch --dry-run` on a machine whose SkyPilot price catalog is not
cached and cannot be downloaded: one clean line that says so and what to do; SkyPilot's
own output (its `<sky-payload>` spinner frames, "Failed to fetch ... catalog") never shows.

The child gets an empty catalog directory (SKY_RUNTIME_DIR, where SkyPilot keeps
.sky/catalogs) and HTTPS_PROXY pointing at a port nothing listens on: SkyPilot's real
download is attempted and fails for real, with or without internet on the machine.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from helpers.cloud_servers import free_port

INTERNALS = ("sky-payload", "rich_init", "rich_exit", "Failed to fetch", "Traceback",
             "urllib3", "HTTPSConnectionPool")
HEADLINE = "error: the price catalog is not cached and cannot be fetched: "

# Child processes that import sky (seconds each): `make test`, not test-fast.
pytestmark = pytest.mark.slow


@pytest.fixture
def offline(tmp_path):
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "all_proxy")}
    dead = f"http://127.0.0.1:{free_port()}"
    env.update(SKY_RUNTIME_DIR=str(tmp_path / "sky"), VICUNA_CLOUD_HOME=str(tmp_path / "home"),
               HTTPS_PROXY=dead, https_proxy=dead, HTTP_PROXY=dead, http_proxy=dead,
               COLUMNS="400")
    return env


def cli(env, *args):
    return subprocess.run([sys.executable, "-m", "vicuna_cloud", *args], env=env,
                          capture_output=True, text=True, timeout=180)


def _one_clean_line(r):
    assert r.returncode == 2, r.stdout + r.stderr
    for internal in INTERNALS:
        assert internal not in r.stdout + r.stderr, internal
    assert r.stdout == "" and r.stderr.strip().count("\n") == 0, r.stderr
    assert r.stderr.startswith(HEADLINE)
    assert "connect to the internet once" in r.stderr
    return r.stderr


def test_estimate_without_catalog_is_one_line_naming_the_way_out(offline, tmp_path):
    err = _one_clean_line(cli(offline, "cost", "--estimate", "7b"))
    assert "cannot connect to raw.githubusercontent.com" in err  # the host SkyPilot asked
    assert "or pass --price-per-hour" in err and "check --cloud" not in err
    assert str(tmp_path / "sky") in err  # where SkyPilot would keep it
    # Nothing was half-written into the catalog directory.
    assert not list((tmp_path / "sky").rglob("*.csv"))


def test_estimate_with_a_given_price_needs_no_catalog(offline):
    r = cli(offline, "cost", "--estimate", "7b", "--price-per-hour", "12", "--json")
    assert r.returncode == 0, r.stderr
    import json

    est = json.loads(r.stdout)
    assert est["prices"]["cheapest_spot"]["spot"] == 12.0
    assert "--price-per-hour $12 (given" in est["price_source"]
    assert est["ours"]["cost_usd"] > 0
    # The controller VM is billed but cannot be priced without the catalog: unknown, not $0.
    assert est["ours"]["controller_usd"] is None and est["bill"]["controller"] is None
    assert est["ours"]["unpriced"] == ["the controller"]
    assert est["ours"]["verdict"].startswith(("unknown", "over"))
    for internal in INTERNALS:
        assert internal not in r.stdout + r.stderr, internal
    table = cli(offline, "cost", "--estimate", "7b", "--price-per-hour", "12").stdout
    assert "unknown (not priced)" in table and "+ unknown (the controller)" in table
    r = cli(offline, "cost", "--estimate", "7b", "--price-per-hour", "-1")
    assert r.returncode == 2 and "--price-per-hour must be a positive" in r.stderr


def test_dry_run_without_catalog_is_one_line(offline):
    err = _one_clean_line(cli(offline, "launch", "7b", "--dry-run"))
    assert "--price-per-hour" not in err  # a cloud launch has no such flag
