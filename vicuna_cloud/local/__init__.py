"""The local backend: `vicuna-cloud launch tiny --local` on this machine's CPU.

A supervisor that behaves like SkyPilot managed jobs (restarts, simulated preemptions),
a live progress view, the shipped sample corpus and the export lookup used by `chat`.
"""

from vicuna_cloud.local.launch import launch_local

__all__ = ["launch_local"]
