"""The local backend: `vicuna-cloud launch tiny --local` on this machine's CPU.

    launch.py      the task's torchrun line, the supervised run, the cancelled segment
    supervisor.py  behaves like SkyPilot managed jobs: restarts, simulated preemptions
    live_view.py   progress probes (stdout, metrics.jsonl) and the rich live panel
    proctree.py    process-group bookkeeping for clean kills
    sample.py      the shipped sample corpus and its prepared dataset

``vicuna_cloud.sdk.launch_local`` puts them together.
"""
