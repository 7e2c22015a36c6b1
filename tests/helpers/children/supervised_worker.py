"""A tiny stand-in for `torchrun -m train` used by the supervisor tests.

It "trains" TOTAL steps, one every DT seconds, appending a metrics record per step to
METRICS and "checkpointing" its step to STATE every CKPT_EVERY steps (default 1), so a restart resumes.
MODE changes the exit policy: ok | fail | config | config-via-launcher | notice-once (exit 75 once) |
spawn (start a grandchild in its own session, as torchrun does with its workers) |
stubborn (ignores SIGTERM).
On SIGINT or SIGTERM it writes its pid to CANCELLED and exits 130.
"""

import json
import os
import signal
import subprocess
import sys
import time

metrics, state = os.environ["METRICS"], os.environ["STATE"]
total = int(os.environ.get("TOTAL", "20"))
dt = float(os.environ.get("DT", "0.05"))
mode = os.environ.get("MODE", "ok")


def on_int(signum, frame):
    with open(os.environ["CANCELLED"], "a") as f:
        f.write(f"{os.getpid()}\n")
    sys.exit(130)


signal.signal(signal.SIGINT, on_int)
signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "stubborn" else on_int)
if mode == "config":
    sys.exit(78)
if mode == "config-via-launcher":  # what torchrun does: the trainer wrote 78, torchrun exits 1
    with open(os.environ["VICUNA_EXIT_CODE_FILE"], "w") as f:
        f.write("78")
    sys.exit(1)
if mode == "fail":
    print("boom", flush=True)
    sys.exit(3)
if mode == "notice-once" and not os.path.exists(state + ".noticed"):
    open(state + ".noticed", "w").close()
    sys.exit(75)
if mode == "spawn" and os.environ.get("GRANDCHILD") != "1":
    env = dict(os.environ, GRANDCHILD="1")
    child = subprocess.Popen([sys.executable, __file__], env=env, start_new_session=True)
    with open(os.environ["PIDS"], "a") as f:
        f.write(f"{os.getpid()}\n{child.pid}\n")
    sys.exit(child.wait())

step = int(open(state).read()) if os.path.exists(state) else 0
if os.environ.get("START_EVENTS") == "1":  # as the trainer does: where this attempt starts
    with open(metrics, "a") as f:
        f.write(json.dumps({"event": "start", "step": step, "total_steps": total}) + "\n")
while step < total:
    time.sleep(dt)
    step += 1
    with open(metrics, "a") as f:
        f.write(json.dumps({"step": step, "total_steps": total, "loss": 1.0 / step}) + "\n")
    if step % int(os.environ.get("CKPT_EVERY", "1")) == 0:
        tmp = state + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(step))
        os.replace(tmp, state)
    print(f"step {step}", flush=True)
sys.exit(0)
