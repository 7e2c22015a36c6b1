"""Wall time of the README's main command, `vicuna-cloud launch small --local` (what
`make demo` runs), from a cold home.

Prints: total wall and CPU time (target: under 4 minutes on a 2-core machine, model fetch
included with --cold-model), the load average (other work on the machine stretches the
wall time; the CPU seconds do not depend on it), the part spent before training (model
fetch and conversion, data prep, upload, torchrun and model start-up), training steps and
their mean time, eval and before/after figures when present.

    python bench/local_run.py [--preset small|tiny] [--preemptions N] [--cold-model] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small", choices=["small", "tiny"])
    ap.add_argument("--cold-model", action="store_true",
                    help="empty model cache: include the PyPI fetch and the conversion")
    ap.add_argument("--preemptions", type=int, default=0)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--keep", default=None, help="use (and keep) this VICUNA_CLOUD_HOME")
    a = ap.parse_args()
    home = a.keep or tempfile.mkdtemp(prefix="vicuna-bench-home-")
    if a.keep:
        shutil.rmtree(home, ignore_errors=True)
    env = dict(os.environ, VICUNA_CLOUD_HOME=home, COLUMNS="160")
    if a.cold_model:
        env["VICUNA_MODEL_CACHE"] = os.path.join(home, "models")
    cmd = [sys.executable, "-m", "vicuna_cloud", "launch", a.preset, "--local", "--run-id",
           "bench-local", "--seed", str(a.seed), "--preemptions", str(a.preemptions)]
    t0 = time.time()
    c0 = os.times()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    c1 = os.times()
    cpu = (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system)
    if r.returncode != 0:
        print(r.stdout[-4000:], r.stderr[-4000:], sep="\n")
        print(f"launch failed with exit {r.returncode} after {wall:.1f} s")
        return 1
    run = os.path.join(home, "bucket", "runs", "bench-local")
    events, steps = [], []
    with open(os.path.join(run, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            (events if "event" in rec else steps).append(rec)
    starts = [e["time"] for e in events if e["event"] == "start"]
    step_s = [s["step_seconds"] for s in steps]
    print(f"launch {a.preset} --local --preemptions {a.preemptions}: {wall:.1f} s wall "
          f"({'under' if wall < 240 else 'OVER'} the 4-minute target), {cpu:.1f} s CPU, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"  before the first training start event: {starts[0] - t0:.1f} s "
          "(data prep, upload, torchrun + model start-up)")
    print(f"  attempts: {len(starts)}; training steps logged: {len(steps)}, "
          f"mean {sum(step_s) / max(len(step_s), 1):.2f} s/step, "
          f"mean {sum(s['tokens_per_s'] for s in steps) / max(len(steps), 1):.0f} tokens/s")
    evals = [e for e in events if e["event"] == "eval"]
    if evals:
        print(f"  eval loss {evals[0]['eval_loss']:.4f} (step {evals[0]['step']}) -> "
              f"{evals[-1]['eval_loss']:.4f} (step {evals[-1]['step']})")
    for line in r.stdout.splitlines():
        if "Replies ending with EOS" in line or line.startswith("Final weights"):
            print("  " + line.strip())
    if not a.keep:
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
