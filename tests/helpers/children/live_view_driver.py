"""`launch --local`'s screen on a small real supervised run: the LiveView over a Supervisor
running supervised_worker.py with one simulated preemption, then a final report line.
Run by tests/test_live_view_tty.py in a pseudo-terminal and through a pipe.

    python live_view_driver.py WORKDIR
"""

import os
import sys
from pathlib import Path

from vicuna_cloud.cli.common import console
from vicuna_cloud.local.live_view import LiveView, MetricsTail, ViewState
from vicuna_cloud.local.supervisor import Supervisor, SupervisorConfig
from vicuna_cloud.storage import open_bucket

work = Path(sys.argv[1])
worker = Path(__file__).parent / "supervised_worker.py"
env = dict(os.environ, METRICS=str(work / "metrics.jsonl"), STATE=str(work / "state"),
           TOTAL="30", DT="0.1", MODE="ok", CANCELLED=str(work / "cancelled"),
           PIDS=str(work / "pids"), CKPT_EVERY="4", START_EVENTS="1")
probe = MetricsTail(open_bucket(str(work)), "metrics.jsonl")
state = ViewState(run_id="vicuna-tty-run", planned_preemptions=1, price_per_hour=3.6)
view = LiveView(state, probe, console=console)
sup = Supervisor([sys.executable, str(worker)],
                 config=SupervisorConfig(preemptions=1, seed=3, restart_delay_s=0.5),
                 probe=probe, env=env, log_path=str(work / "train.log"), on_event=view.on_event)
console.print(f"Run vicuna-tty-run: torchrun -m train (log: {work / 'train.log'})",
              highlight=False, soft_wrap=True)
with view:
    result = sup.run()
console.print(f"final report: {result.outcome}, {state.preemptions} preemption(s)",
              highlight=False)
