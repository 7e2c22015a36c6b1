"""Hourly node prices from SkyPilot's own price catalog: no price table lives in this code.

Why the catalog API and not our own CSV parsing: SkyPilot is what provisions the node, so
its catalog (and its AWS zone-id mapping, its GCP "VM row + GPU row" split) is the price
the optimizer saw when it picked the node. We only add what SkyPilot does not give: every
zone's on-demand *and* spot price side by side, the cheapest spot across clouds, and a
source string (catalog schema version, file fingerprint, row) that a ledger segment keeps
so that a cost report months later can say where a dollar figure came from.

Rules of the catalog (schema v8):
- AWS: one row per (instance type, zone); ``Price`` is on-demand, ``SpotPrice`` is spot.
- GCP: the host VM row (e.g. ``a2-ultragpu-8g``) and the GPU row (``A100-80GB`` x 8, empty
  instance type) of the same zone are billed separately; a node costs their sum.
- Some GCP GPU rows list a spot price above on-demand. We report what the catalog says and
  flag it (``NodePrice.flags``); we do not "fix" prices.

``import sky`` (about 2 s) happens inside the functions, never at module import.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import math
import os
import statistics
from dataclasses import asdict, dataclass, field
from typing import Iterable, Iterator, Optional

from vicuna_cloud.errors import ConfigError
from vicuna_cloud.runspec import Cloud

CLOUDS = Cloud.priced()
FLAG_SPOT_ABOVE_ON_DEMAND = "spot price above on-demand in the catalog"
FLAG_NO_SPOT = "no spot price in the catalog"
_EPS = 1e-3  # catalog rows carry rounding noise (32.9365 spot vs 32.93646 on-demand)


class PricingError(ConfigError):
    """No price can be found (unknown accelerator, cloud without such nodes, no catalog)."""


class CatalogUnavailable(PricingError):
    """SkyPilot's price catalog is not on this machine and cannot be downloaded."""


#: How to get past a missing catalog; callers with a price flag add it (sky_catalog(fix=)).
CATALOG_FIX = "connect to the internet once (SkyPilot then keeps it in {dir})"


def _offline_reason(e: BaseException) -> str:
    """'cannot resolve raw.githubusercontent.com' rather than urllib3's three nested reprs."""
    import socket
    from urllib.parse import urlsplit

    import requests

    req = getattr(e, "request", None)
    url = getattr(req, "url", None) or ""
    host = urlsplit(url).hostname or "the catalog server"
    chain, seen = [], e
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    names = {type(x).__name__ for x in chain}
    if any(isinstance(x, socket.gaierror) for x in chain) or "NameResolutionError" in names:
        why = f"cannot resolve {host}"
    elif isinstance(e, requests.exceptions.Timeout):
        why = f"{host} did not answer in time"
    elif isinstance(e, requests.exceptions.HTTPError) and e.response is not None:
        why = f"HTTP {e.response.status_code} from {host}"
    elif isinstance(e, requests.exceptions.ConnectionError):
        why = f"cannot connect to {host}"
    else:
        why = f"{type(e).__name__} from {host}"
    name = url.rsplit("/catalogs/", 1)[-1] if "/catalogs/" in url else ""
    return why + (f" (fetching {name})" if name else "")


_FIX: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("catalog_fix",
                                                                     default=None)


@contextlib.contextmanager
def sky_catalog(fix: Optional[str] = None) -> Iterator[None]:
    """Around every call that may read SkyPilot's catalog: SkyPilot's own output (its
    spinner payloads, "Failed to fetch ... catalog" log lines) never reaches the user,
    and a catalog that is missing and cannot be downloaded is one CatalogUnavailable
    line saying what to do (``fix``: another way out, e.g. a price flag, for every
    catalog read inside this block)."""
    import logging

    import requests
    from sky import sky_logging

    token = _FIX.set(fix) if fix else None
    try:
        with sky_logging.silent(), sky_logging.set_sky_logging_levels(logging.CRITICAL + 1):
            yield
    except requests.exceptions.RequestException as e:
        raise CatalogUnavailable(_catalog_message(_offline_reason(e))) from None
    finally:
        if token is not None:
            _FIX.reset(token)


def _catalog_message(reason: str) -> str:
    from sky.catalog import common as catalog_common

    where = os.path.dirname(catalog_common.get_catalog_path("x"))
    fix = _FIX.get()
    ways = CATALOG_FIX.format(dir=where) + (f" or {fix}" if fix else "")
    return f"the price catalog is not cached and cannot be fetched: {reason}; {ways}"


def given_price(accelerators: str, cloud: str, price_per_hour: float) -> "PriceSummary":
    """A price the user gave (--price-per-hour: one node, spot) in place of the catalog's:
    every zone at that price; the cloud's disk and egress rates apply (aws for 'any')."""
    if price_per_hour <= 0:
        raise PricingError(f"--price-per-hour must be a positive number of US dollars "
                           f"(got {price_per_hour})")
    c = _clouds(cloud)[0]
    row = NodePrice(c, "", None, "", accelerators, price_per_hour, price_per_hour,
                    f"--price-per-hour ${price_per_hour:g} (given; {c} disk and egress rates)")
    return PriceSummary(accelerators=accelerators, cloud=cloud, cheapest_spot=row,
                        cheapest_on_demand=row, spot_median=price_per_hour,
                        spot_max=price_per_hour, zones=1)


def _offline(fn):
    """sky_catalog() around one pricing function."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with sky_catalog():
            return fn(*args, **kwargs)
    return wrapper


def _reraise_offline(e: BaseException) -> None:
    """Inside a broad except: a download failure is not 'no such node' (sky_catalog
    turns it into CatalogUnavailable)."""
    import requests

    if isinstance(e, requests.exceptions.RequestException):
        raise e


@dataclass(frozen=True)
class NodePrice:
    """The price of one node (all its GPUs) in one zone, per hour, in US dollars."""

    cloud: str
    region: str
    zone: Optional[str]
    instance_type: str
    accelerators: str          # e.g. "A100-80GB:8"
    on_demand: float           # $/hour
    spot: Optional[float]      # $/hour; None when the catalog has no spot price
    source: str                # catalog version + file + row(s)
    flags: tuple[str, ...] = field(default=())

    def price(self, use_spot: bool) -> float:
        if use_spot:
            if self.spot is None:
                raise PricingError(
                    f"{self.instance_type} in {self.zone or self.region} has no spot price in "
                    "the catalog; use on-demand (--no-spot) or another zone"
                )
            return self.spot
        return self.on_demand

    def to_dict(self) -> dict:
        d = asdict(self)
        d["flags"] = list(self.flags)
        return d


def parse_accelerators(accelerators: str) -> tuple[str, int]:
    """'A100-80GB:8' -> ('A100-80GB', 8). A bare name means one GPU."""
    name, _, count = accelerators.partition(":")
    try:
        n = int(count) if count else 1
    except ValueError:
        raise PricingError(
            f"malformed accelerators {accelerators!r}: expected NAME:COUNT, e.g. A100-80GB:8"
        ) from None
    if not name or n <= 0:
        raise PricingError(
            f"malformed accelerators {accelerators!r}: expected NAME:COUNT, e.g. A100-80GB:8"
        )
    return name, n


def catalog_date(path: str) -> str:
    """The date a catalog file's prices are from, and how we know it.

    A snapshot shipped with a SOURCE.md (``read on YYYY-MM-DD``) next to it, or one level
    up, is dated by it; a catalog SkyPilot downloaded itself is dated by the download (the
    file's mtime; SkyPilot refreshes it from the clouds every 7 hours)."""
    import datetime as _dt
    import re

    d = os.path.dirname(path)
    for cand in (os.path.join(d, "..", "SOURCE.md"), os.path.join(d, "..", "..", "SOURCE.md"),
                 os.path.join(d, "SOURCE.md")):
        try:
            with open(cand, encoding="utf-8") as f:
                m = re.search(r"read on (\d{4}-\d{2}-\d{2})", f.read())
        except OSError:
            continue
        if m:
            return f"snapshot {m.group(1)}"
    try:
        day = _dt.datetime.fromtimestamp(os.path.getmtime(path), _dt.timezone.utc).date()
    except OSError:
        return "date unknown"
    return f"downloaded {day} (file date)"


def catalog_fingerprint(cloud: str) -> str:
    """'skypilot catalog v8 aws/vms.csv sha256:1a2b3c4d5e6f (snapshot 2026-11-27)'."""
    from sky.catalog import common as catalog_common
    from sky.skylet import constants

    rel = f"{cloud}/vms.csv"
    path = catalog_common.get_catalog_path(rel)
    try:
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()[:12]
        return (f"skypilot catalog {constants.CATALOG_SCHEMA_VERSION} {rel} sha256:{digest} "
                f"({catalog_date(path)})")
    except OSError:
        return f"skypilot catalog {constants.CATALOG_SCHEMA_VERSION} {rel}"


def _clouds(cloud: str) -> tuple[str, ...]:
    cloud = (cloud or "any").lower()
    if cloud == "any":
        return CLOUDS
    if cloud not in CLOUDS:
        raise PricingError(f"unknown cloud {cloud!r}: choose aws, gcp or any")
    return (cloud,)


@_offline
def instance_type_for(accelerators: str, cloud: str) -> str:
    """The instance type SkyPilot picks for these accelerators on this cloud."""
    import sky.catalog

    name, count = parse_accelerators(accelerators)
    try:
        types, fuzzy = sky.catalog.get_instance_type_for_accelerator(
            name, count, use_spot=False, clouds=cloud
        )
    except Exception as e:  # sky raises various types for unknown names
        _reraise_offline(e)
        raise PricingError(f"no {accelerators} node on {cloud} in the catalog: {e}") from None
    if not types:
        hint = f" (close matches: {', '.join(fuzzy[:4])})" if fuzzy else ""
        raise PricingError(f"no {accelerators} node on {cloud} in the catalog{hint}")
    return types[0]


def _safe_cost(fn, *args, **kwargs) -> Optional[float]:
    try:
        v = fn(*args, **kwargs)
    except (ValueError, KeyError, AssertionError):
        return None
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return float(v)


def _zones(regions) -> list[tuple[str, str]]:
    out = []
    for r in regions:
        for z in (r.zones or []):
            out.append((r.name, z.name))
    return out


@_offline
def zone_prices(accelerators: str, cloud: str = "any") -> list[NodePrice]:
    """Every zone's node price for these accelerators, cheapest spot first."""
    import sky.catalog

    name, count = parse_accelerators(accelerators)
    out: list[NodePrice] = []
    errors = []
    for c in _clouds(cloud):
        try:
            itype = instance_type_for(accelerators, c)
        except CatalogUnavailable:
            raise
        except PricingError as e:
            errors.append(str(e))
            continue
        fp = catalog_fingerprint(c)
        zones = _zones(sky.catalog.get_region_zones_for_instance_type(itype, False, clouds=c))
        if c == "gcp":
            gpu_zones = set(_zones(sky.catalog.get_region_zones_for_accelerators(
                name, count, use_spot=False, clouds=c)))
            zones = [z for z in zones if z in gpu_zones]
        for region, zone in zones:
            out.append(_price_row(c, region, zone, itype, accelerators, fp))
    if not out:
        raise PricingError("; ".join(errors) or f"no {accelerators} prices in the catalog")
    return sorted(out, key=lambda p: (p.spot if p.spot is not None else math.inf, p.on_demand))


def _price_row(cloud: str, region: Optional[str], zone: Optional[str], itype: str,
               accelerators: str, fingerprint: str) -> NodePrice:
    import sky.catalog

    name, count = parse_accelerators(accelerators)
    vm_od = _safe_cost(sky.catalog.get_hourly_cost, itype, False, region, zone, clouds=cloud)
    vm_spot = _safe_cost(sky.catalog.get_hourly_cost, itype, True, region, zone, clouds=cloud)
    if vm_od is None:
        raise PricingError(f"{itype} has no on-demand price in {zone or region} ({cloud})")
    where = "/".join(x for x in (region, zone) if x)
    rows = f"row {itype} {where}"
    flags: list[str] = []
    od, spot = vm_od, vm_spot
    if cloud == "gcp":
        gpu_od = _safe_cost(sky.catalog.get_accelerator_hourly_cost, name, count, False,
                            region, zone, clouds=cloud)
        gpu_spot = _safe_cost(sky.catalog.get_accelerator_hourly_cost, name, count, True,
                              region, zone, clouds=cloud)
        if gpu_od is None:
            raise PricingError(f"{name}:{count} has no price in {zone or region} (gcp)")
        od = vm_od + gpu_od
        spot = None if (vm_spot is None or gpu_spot is None) else vm_spot + gpu_spot
        rows += f" + row {name}:{count} {where}"
        if gpu_spot is not None and gpu_spot > gpu_od + _EPS:
            flags.append(FLAG_SPOT_ABOVE_ON_DEMAND)
    if spot is None:
        flags.append(FLAG_NO_SPOT)
    elif spot > od + _EPS and FLAG_SPOT_ABOVE_ON_DEMAND not in flags:
        flags.append(FLAG_SPOT_ABOVE_ON_DEMAND)
    return NodePrice(cloud, region or "", zone, itype, accelerators, round(od, 6),
                     None if spot is None else round(spot, 6), f"{fingerprint} {rows}",
                     tuple(flags))


def cheapest(accelerators: str, cloud: str = "any", use_spot: bool = True) -> NodePrice:
    """The cheapest node across all regions and zones (and clouds for 'any')."""
    prices = [p for p in zone_prices(accelerators, cloud) if not use_spot or p.spot is not None]
    if not prices:
        raise PricingError(f"no {'spot ' if use_spot else ''}price for {accelerators} on {cloud}")
    return min(prices, key=lambda p: p.price(use_spot))


@_offline
def price_at(cloud: str, region: Optional[str], zone: Optional[str], accelerators: str,
             instance_type: Optional[str] = None, zone_id: Optional[str] = None) -> NodePrice:
    """The catalog price of the node a segment runs on.

    AWS's catalog keys zones by zone id (use1-az4); the node reads its own from the
    instance metadata (``zone_id``), tried first. When neither the zone id nor the zone
    is in the catalog, the *highest* price in the region is charged, and the source says
    so: a guess may overcount, never undercount (the cheapest zone was 58% low in
    ap-southeast-1).
    """
    cloud = cloud.lower()
    if cloud not in CLOUDS:
        raise PricingError(f"cannot price cloud {cloud!r}: only aws and gcp are priced")
    itype = instance_type or instance_type_for(accelerators, cloud)
    fp = catalog_fingerprint(cloud)
    for z in (zone_id, zone):
        if z:
            try:
                return _price_row(cloud, region, z, itype, accelerators, fp)
            except (PricingError, ValueError):
                pass
    if not region:
        raise PricingError(f"no region given to price {itype} on {cloud}")
    rows = [p for p in zone_prices(accelerators, cloud)
            if p.region == region and p.instance_type == itype]
    if not rows:
        p = _price_row(cloud, region, None, itype, accelerators, fp)
        rows = [p]
    od = max(r.on_demand for r in rows)
    spots = [r.spot for r in rows if r.spot is not None]
    flags = tuple(sorted({f for r in rows for f in r.flags}))
    where = zone_id or zone
    note = (f" (zone {where} not in catalog: highest of {len(rows)} zones in {region})" if where
            else f" (no zone: highest of {len(rows)} zones in {region})")
    return NodePrice(cloud, region, zone, itype, accelerators, od,
                     max(spots) if spots else None, fp + f" rows {itype} {region}" + note, flags)


def highest_price(accelerators: str, cloud: str, use_spot: bool,
                  ceiling: Optional[float] = None) -> NodePrice:
    """The priciest zone of the instance type (at or under ``ceiling``, SkyPilot's
    max_hourly_cost): what an unpriced segment is charged, so the cap fails closed."""
    prices = [p for p in zone_prices(accelerators, cloud)
              if not use_spot or p.spot is not None]
    if ceiling is not None:
        prices = [p for p in prices if p.price(use_spot) <= ceiling + _EPS] or prices
    if not prices:
        raise PricingError(f"no {'spot ' if use_spot else ''}price for {accelerators} on {cloud}")
    return max(prices, key=lambda p: p.price(use_spot))


@_offline
def controller_price(cloud: str) -> NodePrice:
    """On-demand price of the VM SkyPilot 0.14 makes the managed-jobs controller (its
    default resources: cpus 4+, memory 4x), cheapest region; raises PricingError."""
    import sky.catalog

    try:
        itype = sky.catalog.get_default_instance_type(cpus="4+", memory="4x", clouds=cloud)
    except Exception as e:  # noqa: BLE001 - sky raises various types
        _reraise_offline(e)
        raise PricingError(f"no controller instance type on {cloud}: {e}") from None
    if not itype:
        raise PricingError(f"no controller instance type on {cloud} in the catalog")
    cost = _safe_cost(sky.catalog.get_hourly_cost, itype, False, None, None, clouds=cloud)
    if cost is None:
        raise PricingError(f"{itype} has no on-demand price on {cloud}")
    return NodePrice(cloud, "", None, itype, "", cost, None,
                     f"{catalog_fingerprint(cloud)} row {itype} (cheapest region, on-demand)")


@dataclass(frozen=True)
class PriceSummary:
    """Spot and on-demand spread for one configuration, for estimates and sensitivity."""

    accelerators: str
    cloud: str
    cheapest_spot: NodePrice
    cheapest_on_demand: NodePrice
    spot_median: float
    spot_max: float
    zones: int

    def to_dict(self) -> dict:
        return {
            "accelerators": self.accelerators, "cloud": self.cloud,
            "cheapest_spot": self.cheapest_spot.to_dict(),
            "cheapest_on_demand": self.cheapest_on_demand.to_dict(),
            "spot_median": self.spot_median, "spot_max": self.spot_max, "zones": self.zones,
        }


def summarize(accelerators: str, cloud: str = "any") -> PriceSummary:
    """Spread of prices; the headline minima never come from a flagged row."""
    prices = zone_prices(accelerators, cloud)
    spots = [p.spot for p in prices if p.spot is not None]
    if not spots:
        raise PricingError(f"no spot price for {accelerators} on {cloud} in the catalog")
    clean = [p for p in prices if not p.flags] or prices
    clean_spot = [p for p in clean if p.spot is not None] or \
        [p for p in prices if p.spot is not None]
    return PriceSummary(
        accelerators=accelerators, cloud=cloud,
        cheapest_spot=min(clean_spot, key=lambda p: p.spot),
        cheapest_on_demand=min(clean, key=lambda p: p.on_demand),
        spot_median=round(statistics.median(spots), 4), spot_max=max(spots),
        zones=len(prices),
    )


def flagged(prices: Iterable[NodePrice]) -> list[NodePrice]:
    return [p for p in prices if p.flags]


def price_from_table(rows, cloud: str, region: Optional[str], zone: Optional[str],
                     accelerators: str, instance_type: Optional[str] = None) -> NodePrice:
    """A segment's price from the rows launch copied into run.json (budget.node_prices):
    the zone's row, else the cheapest row of the region. No skypilot needed (the node has
    none). Raises PricingError when no row matches."""
    cloud = (cloud or "").lower()
    mine = [r for r in rows if r.cloud == cloud and r.accelerators == accelerators
            and (instance_type is None or r.instance_type == instance_type)]
    exact = [r for r in mine if zone and r.zone == zone]
    note = ""
    if not exact:
        exact = sorted((r for r in mine if region and r.region == region),
                       key=lambda r: (r.spot if r.spot is not None else math.inf, r.on_demand))
        note = f" (zone {zone} not in the table: cheapest in region)" if zone else " (region)"
    if not exact:
        raise PricingError(f"no launch-time price for {accelerators} in {zone or region} "
                           f"({cloud}) in run.json")
    r = exact[0]
    flags = () if r.spot is not None else (FLAG_NO_SPOT,)
    return NodePrice(r.cloud, r.region, zone or r.zone, r.instance_type, r.accelerators,
                     r.on_demand, r.spot, f"run.json launch-time {r.source}{note}", flags)


def table_rows(accelerators: str, cloud: str = "any") -> list[dict]:
    """zone_prices() as run.json rows (budget.node_prices); [] when the catalog has none."""
    try:
        prices = zone_prices(accelerators, cloud)
    except CatalogUnavailable:
        raise  # not "no rows": nothing could be priced at all
    except PricingError:
        return []
    return [{"cloud": p.cloud, "region": p.region, "zone": p.zone,
             "instance_type": p.instance_type, "accelerators": p.accelerators,
             "on_demand": p.on_demand, "spot": p.spot, "source": p.source} for p in prices]
