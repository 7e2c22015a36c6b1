"""Storage speed on the three backends, and what retries cost under injected faults.

    python bench/storage.py [--small 200] [--large-mib 64] [--fault-rate 0.1] [--json]

Backends: a local directory, S3 (moto server on 127.0.0.1) and GCS (fake-gcs-server).
For each it prints small-object put+get operations per second (1 KiB objects), list time
for the objects written, and put_file/get_file throughput for one large file (multipart
on S3, resumable on GCS). Then, through the fault-injecting proxy at --fault-rate, the
small-object rate with and without faults (proxy at 0%) and the retries taken: the price
of resilience. These servers run on this machine, so the figures measure our client-side
overhead and the retry logic, not a cloud's bandwidth.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))

MiB = 1 << 20


def small_ops(bucket, n: int, seed: int = 0) -> dict:
    rng = random.Random(seed)
    blobs = [rng.randbytes(1024) for _ in range(n)]
    t0 = time.perf_counter()
    for i, data in enumerate(blobs):
        bucket.put_bytes(f"small/{i:05d}", data)
        if bucket.get_bytes(f"small/{i:05d}") != data:
            raise SystemExit(f"content mismatch at small/{i:05d}")
    t1 = time.perf_counter()
    listed = bucket.list("small/")
    t2 = time.perf_counter()
    if len(listed) != n:
        raise SystemExit(f"listed {len(listed)} of {n} objects")
    return {"ops_per_s": round(2 * n / (t1 - t0), 1), "list_ms": round((t2 - t1) * 1000, 1)}


def large_file(bucket, path: str, size: int) -> dict:
    t0 = time.perf_counter()
    bucket.put_file("large/shard.bin", path)
    t1 = time.perf_counter()
    out = path + ".back"
    bucket.get_file("large/shard.bin", out)
    t2 = time.perf_counter()
    if os.path.getsize(out) != size:
        raise SystemExit("large file size mismatch")
    os.unlink(out)
    return {"put_MiB_s": round(size / MiB / (t1 - t0), 1), "get_MiB_s": round(size / MiB / (t2 - t1), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=200, help="small objects per backend")
    ap.add_argument("--large-mib", type=int, default=64, help="size of the large file")
    ap.add_argument("--fault-rate", type=float, default=0.1)
    ap.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = ap.parse_args()

    # Short backoff, as in the tests: the servers are local, waiting only adds idle time.
    os.environ.setdefault("VICUNA_STORAGE_RETRY_BASE_S", "0.01")
    os.environ.setdefault("VICUNA_STORAGE_RETRY_MAX_BACKOFF_S", "0.2")

    import logging

    logging.getLogger("vicuna_cloud.storage").setLevel(logging.ERROR)  # one line per retry otherwise
    from helpers.cloud_servers import GCSServer, S3Server
    from helpers.fault_proxy import FaultProxy

    from vicuna_cloud.storage import open_bucket
    from vicuna_cloud.storage.retry import retry_stats

    s3, gcs = S3Server().start(), GCSServer().start()
    os.environ.update(s3.env())
    os.environ.update(gcs.env())
    tmp = tempfile.mkdtemp(prefix="bench-storage-")
    big = os.path.join(tmp, "big.bin")
    with open(big, "wb") as f:
        f.write(random.Random(1).randbytes(args.large_mib * MiB))

    results: dict = {"backends": {}, "faults": {}, "fault_rate": args.fault_rate,
                     "small_objects": args.small, "large_MiB": args.large_mib}
    try:
        uris = {
            "local": os.path.join(tmp, "bucket"),
            "s3": f"s3://{s3.create_bucket()}/bench",
            "gcs": f"gs://{gcs.create_bucket()}/bench",
        }
        for name, uri in uris.items():
            b = open_bucket(uri)
            results["backends"][name] = {**small_ops(b, args.small), **large_file(b, big, args.large_mib * MiB)}

        for name, server, var, scheme in (("s3", s3, "AWS_ENDPOINT_URL", "s3"),
                                          ("gcs", gcs, "STORAGE_EMULATOR_HOST", "gs")):
            row = {}
            for rate in (0.0, args.fault_rate):
                proxy = FaultProxy(server.url, rate=rate, seed=3).start()
                saved = os.environ[var]
                os.environ[var] = proxy.url
                try:
                    before = retry_stats()["retries"]
                    b = open_bucket(f"{scheme}://{server.create_bucket()}/bench")
                    r = small_ops(b, args.small)
                    key = "clean" if rate == 0 else "faulty"
                    row[f"{key}_ops_per_s"] = r["ops_per_s"]
                    if rate:
                        row["requests"] = proxy.stats["requests"]
                        row["faults_injected"] = proxy.faults
                        row["retries_by_us"] = retry_stats()["retries"] - before
                finally:
                    os.environ[var] = saved
                    proxy.stop()
            row["slowdown"] = round(row["clean_ops_per_s"] / row["faulty_ops_per_s"], 2)
            results["faults"][name] = row
    finally:
        s3.stop()
        gcs.stop()

    if args.json:
        print(json.dumps(results, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title=f"storage backends ({args.small} x 1 KiB put+get, one {args.large_mib} MiB file)")
    for col in ("backend", "small ops/s", "list ms", "put_file MiB/s", "get_file MiB/s"):
        t.add_column(col, justify="right")
    for name, r in results["backends"].items():
        t.add_row(name, str(r["ops_per_s"]), str(r["list_ms"]), str(r["put_MiB_s"]), str(r["get_MiB_s"]))
    console.print(t)
    t = Table(title=f"through the fault proxy at {args.fault_rate:.0%} failed requests (all calls succeeded)")
    for col in ("backend", "ops/s clean", "ops/s faulty", "slowdown", "requests", "faults", "retries (ours)"):
        t.add_column(col, justify="right")
    for name, r in results["faults"].items():
        t.add_row(name, str(r["clean_ops_per_s"]), str(r["faulty_ops_per_s"]), f"{r['slowdown']}x",
                  str(r["requests"]), str(r["faults_injected"]), str(r["retries_by_us"]))
    console.print(t)


if __name__ == "__main__":
    main()
