"""The node's first act: open this VM's ledger segment, and stop at once over budget.

The task's ``setup`` runs ``python3 -m vicuna_cloud.nodeside open`` before it installs
anything, with the image's system Python (3.10 on SkyPilot's default images) and no
third-party package: hence the standard library only, here and in vicuna_cloud.billing.
It reads run.json and the ledger through the task's MOUNT of the run prefix
(``$VICUNA_RUN_DIR``), and writes ``ledger/<segment_id>.json`` there, so a VM preempted
during setup, or a setup that fails and is retried, is still on the bill from its boot.

- ``open``  (setup, head node): write the segment (boot time from /proc/uptime, cloud,
  region, zone and, on AWS, the zone id from the instance metadata; the fail-closed
  fallback price, disk and bucket from run.json), note it in ``$VICUNA_NODE_STATE`` for
  the trainer to adopt, start a heartbeat until the trainer takes over, and check the
  budget: spend so far plus this VM's setup would pass ``--max-cost`` -> the segment ends
  as "budget" and the command exits 10 (setup then skips the install and exits 0).
- ``gate``  (run, every node): exit 10 when this cluster's segment ended "budget", so
  ``run`` exits 0 and SkyPilot marks the job SUCCEEDED: nothing restarts, nothing more
  is billed.
- ``beat``  (started by ``open``): heartbeat the segment until the trainer adopts it.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from typing import Callable, Dict, List, Mapping, Optional, Tuple

from vicuna_cloud import billing

EXIT_STOP = 10
STATE_ENV = "VICUNA_NODE_STATE"
IMDS_ENV = "VICUNA_IMDS_URL"  # tests point it at a loopback server
IMDS_URL = "http://169.254.169.254"
CLUSTER_INFO_ENV = "SKYPILOT_CLUSTER_INFO"
#: Billed time a recovery spends before its first step (boot, install, data, weights).
SETUP_RESERVE_S = 600.0
BEAT_MAX_S = 6 * 3600.0


def state_path(env: Mapping[str, str]) -> str:
    return env.get(STATE_ENV) or os.path.join(os.path.expanduser("~"), ".vicuna-cloud",
                                              "segment.json")


def new_segment_id(now: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)) + f"-{secrets.token_hex(3)}"


def read_boot_time(now: float, uptime_path: str = "/proc/uptime") -> Optional[float]:
    """VM boot time = now - seconds since boot (Linux). None where /proc is absent."""
    try:
        with open(uptime_path) as f:
            return now - float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def parse_cluster_info(env: Mapping[str, str]) -> dict:
    """SkyPilot 0.14's SKYPILOT_CLUSTER_INFO: JSON with cluster_name, cloud, region, zone."""
    raw = env.get(CLUSTER_INFO_ENV)
    if not raw:
        return {}
    try:
        info = json.loads(raw)
    except ValueError:
        return {}
    if not isinstance(info, dict):
        return {}
    out = {k: info.get(k) for k in ("cluster_name", "cloud", "region", "zone")}
    if out.get("cloud"):
        out["cloud"] = str(out["cloud"]).lower()
    return out


def aws_zone_id(env: Mapping[str, str], timeout: float = 1.0) -> Optional[str]:
    """This VM's zone id (use1-az4) from the instance metadata service, IMDSv2.

    Why: the catalog keys AWS zones by id; a zone name (us-east-1a) maps to a different
    id in every account, and mapping it needs credentials the node may lack."""
    base = (env.get(IMDS_ENV) or IMDS_URL).rstrip("/")
    try:
        req = urllib.request.Request(f"{base}/latest/api/token", method="PUT",
                                     headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            token = r.read().decode()
        req = urllib.request.Request(f"{base}/latest/meta-data/placement/availability-zone-id",
                                     headers={"X-aws-ec2-metadata-token": token})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            zid = r.read().decode().strip()
    except (OSError, ValueError):
        return None
    return zid or None


def dir_bytes(path: Optional[str]) -> int:
    total = 0
    if not path or not os.path.isdir(path):
        return 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def read_segments(run_dir: str) -> List[dict]:
    d = os.path.join(run_dir, "ledger")
    try:
        names = sorted(n for n in os.listdir(d) if n.endswith(".json"))
    except OSError:
        return []
    return [s for s in (_read_json(os.path.join(d, n)) for n in names) if s]


def write_segment(run_dir: str, seg: Mapping) -> str:
    """One whole-file write (the mount uploads it on close)."""
    d = os.path.join(run_dir, "ledger")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, f"{seg['segment_id']}.json")
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(seg, indent=1, sort_keys=True))
    return path


def bill_fields(spec: Mapping, cloud: str) -> dict:
    """The segment fields run.json's billing section gives a node on ``cloud``."""
    b = spec.get("billing") or {}
    disk = (b.get("disks") or {}).get(cloud) or {}
    return {
        "price_fallback_per_hour": b.get("fallback_price_per_hour"),
        "price_fallback_source": b.get("fallback_price_source") or "",
        "disk_type": disk.get("disk_type"), "disk_size_gb": b.get("disk_size_gb"),
        "disk_iops": disk.get("iops"), "disk_price_per_hour": disk.get("price_per_hour") or 0.0,
        "disk_source": disk.get("source") or "",
        "bucket_cloud": b.get("bucket_cloud"), "bucket_region": b.get("bucket_region"),
    }


def budget_state(spec: Mapping, segments: List[Mapping], current: Optional[str],
                 at: float) -> Tuple[Optional[float], Optional[float]]:
    """(cap, spend by ``at``), every line, unpriced segments at their fallback."""
    cap = (spec.get("budget") or {}).get("max_cost_usd")
    b = spec.get("billing") or {}
    spent, _ = billing.spend_for_budget(list(segments), at=at, current_id=current, billing=b,
                                        launched_at=b.get("launched_at"))
    return cap, spent


def open_segment(env: Mapping[str, str], *, clock: Callable[[], float] = time.time,
                 uptime_path: str = "/proc/uptime", reserve_s: float = SETUP_RESERVE_S,
                 ) -> Tuple[dict, bool, str]:
    """Write this VM's segment; returns (segment, stop for budget?, message)."""
    run_dir = env.get("VICUNA_RUN_DIR")
    if not run_dir:
        raise RuntimeError("VICUNA_RUN_DIR is not set (the task mounts the run prefix there)")
    spec = _read_json(os.path.join(run_dir, "run.json"))
    if spec is None:
        raise RuntimeError(f"no readable run.json under {run_dir}")
    now = clock()
    info = parse_cluster_info(env)
    res = spec.get("resources") or {}
    cloud = info.get("cloud") or res.get("cloud") or "?"
    boot = read_boot_time(now, uptime_path)
    prior = read_segments(run_dir)
    seg = {
        "segment_id": new_segment_id(now), "run_id": spec.get("run_id"), "cloud": cloud,
        "region": info.get("region"), "zone": info.get("zone"),
        "zone_id": aws_zone_id(env) if cloud == "aws" else None,
        "cluster_name": info.get("cluster_name"),
        "instance_type": env.get("VICUNA_INSTANCE_TYPE"),
        "accelerators": res.get("accelerators") or "?", "nodes": int(res.get("nodes") or 1),
        "use_spot": bool(res.get("use_spot", True)), "price_per_hour": None,
        "price_source": "pending (node opened the segment in setup)",
        "vm_boot_time": boot if boot is not None and boot <= now else now,
        "start_time": now, "last_heartbeat": now, "opened_by": "setup",
        "attempt": len(prior), "bytes_copied": dir_bytes(env.get("VICUNA_DATA_DIR")),
        "host": os.uname().nodename, "pid": os.getpid(), "schema": 1,
        **bill_fields(spec, cloud),
    }
    cap, spent = budget_state(spec, prior + [seg], seg["segment_id"], now + reserve_s)
    stop, msg = False, "no budget set" if cap is None else f"${spent or 0:,.2f} of ${cap:,.2f}"
    if cap is not None and (spent is None or spent >= cap):
        stop = True
        seg.update(end_time=now, end_reason="budget")
        msg = (f"budget: ${spent or 0:,.2f} spent or committed by the end of setup, cap "
               f"${cap:,.2f}; this VM stops before setup" if spent is not None else
               "budget: an earlier segment has no price and no fallback; stopping (fail closed)")
    write_segment(run_dir, seg)
    return seg, stop, msg


def gate(env: Mapping[str, str]) -> bool:
    """True when this cluster's newest segment ended for the budget (stop, exit 0)."""
    run_dir = env.get("VICUNA_RUN_DIR")
    name = parse_cluster_info(env).get("cluster_name")
    if not run_dir or not name:
        return False
    mine = [s for s in read_segments(run_dir) if s.get("cluster_name") == name]
    return bool(mine) and mine[-1].get("end_reason") == "budget"


def _write_state(path: str, state: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state, f)
    os.replace(tmp, path)


def beat_once(env: Mapping[str, str], seg_path: str, now: float) -> bool:
    """One setup heartbeat; False once the trainer owns the segment (or it has ended)."""
    st = _read_json(state_path(env)) or {}
    seg = _read_json(seg_path)
    if st.get("owner") != "setup" or seg is None or seg.get("end_time") is not None:
        return False
    seg["last_heartbeat"] = max(float(seg.get("last_heartbeat") or 0.0), now)
    with open(seg_path, "w", encoding="utf-8") as f:
        f.write(json.dumps(seg, indent=1, sort_keys=True))
    return True


def beat(env: Mapping[str, str], seg_path: str, interval: float) -> None:
    """Heartbeat the segment file until the trainer adopts it (state owner changes)."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    t0 = time.time()
    while not stop and time.time() - t0 < BEAT_MAX_S:
        for _ in range(int(max(interval, 1.0))):
            if stop:
                return
            time.sleep(1.0)
        if stop or not beat_once(env, seg_path, time.time()):
            return


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd = argv[0] if argv else ""
    env: Dict[str, str] = dict(os.environ)
    if cmd == "gate":
        if gate(env):
            print("vicuna-cloud: this run's budget is spent; nothing to do (exit 0)")
            return EXIT_STOP
        return 0
    if cmd == "beat" and len(argv) >= 3:
        beat(env, argv[1], float(argv[2]))
        return 0
    if cmd != "open":
        print("usage: python3 -m vicuna_cloud.nodeside open|gate", file=sys.stderr)
        return 2
    try:
        seg, stop, msg = open_segment(env)
    except Exception as e:  # noqa: BLE001 - never block setup: the trainer checks too
        print(f"vicuna-cloud: could not open the ledger segment in setup ({e}); the "
              "trainer opens it", file=sys.stderr)
        return 0
    run_dir = env["VICUNA_RUN_DIR"]
    seg_path = os.path.join(run_dir, "ledger", f"{seg['segment_id']}.json")
    state = {"run_id": seg["run_id"], "segment_id": seg["segment_id"], "owner": "setup",
             "beat_pid": None}
    if not stop and env.get("VICUNA_NODE_BEAT", "1") != "0":
        spec = _read_json(os.path.join(run_dir, "run.json")) or {}
        hb = float((spec.get("budget") or {}).get("heartbeat_seconds") or 60.0)
        proc = subprocess.Popen([sys.executable, "-m", "vicuna_cloud.nodeside", "beat",
                                 seg_path, str(hb)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        state["beat_pid"] = proc.pid
    _write_state(state_path(env), state)
    print(f"vicuna-cloud: ledger segment {seg['segment_id']} opened (attempt "
          f"{seg['attempt']}); {msg}")
    return EXIT_STOP if stop else 0


if __name__ == "__main__":
    sys.exit(main())
