"""Exit codes of `python -m train`, shared by the task YAML, the trainer and the local supervisor.

SkyPilot 0.14.1 managed jobs (sky/jobs/recovery_strategy.py, ``should_restart_on_failure``):
an exit code listed in ``recover_on_exit_codes`` restarts the job without counting; any
other non-zero exit counts against ``max_restarts_on_errors``, which our tasks set to 0, so
it ends the job at once. A preemption (the cluster is no longer UP) recovers whatever the
exit code. So every code says whether trying again on a new VM can help:
- a budget stop exits 0: SkyPilot must not start (and bill) another VM; the ledger's end
  reason "budget" is what `status` and `cost` report;
- a clean exit after a preemption notice or SIGTERM exits EXIT_PREEMPTED (recovered);
- a fault of the place, not of the input (a storage outage, an NCCL/CUDA error, a peer
  node that vanished) exits EXIT_TRANSIENT (recovered, on a new cluster);
- a GPU that vanished (fell off the bus, CUDA fails to start) or fewer visible GPUs than
  processes is a fault of the VM: EXIT_GPU_UNAVAILABLE is EXIT_TRANSIENT, recovered on a
  new cluster; a driver/wheel mismatch (a CPU wheel, a driver older than the wheel's CUDA)
  will fail the same way again and stays EXIT_CONFIG;
- a bad run spec, dataset or setup (will fail the same way again) exits EXIT_CONFIG, which
  neither SkyPilot (not listed) nor the local supervisor restarts;
- anything else (a bug) exits EXIT_FAILED: not listed, so not retried either.
- another live writer holds the run's lease (vicuna_cloud/lease.py) exits EXIT_LEASE_HELD:
  restarting beside it would corrupt the run; not listed, and the local supervisor stops.
"""

EXIT_COMPLETED = 0
EXIT_BUDGET = 0
EXIT_FAILED = 1
EXIT_TRANSIENT = 69   # EX_UNAVAILABLE: the service/place failed, a new node may succeed
EXIT_CONFIG = 78      # EX_CONFIG: fix the input, restarting will not help
EXIT_PREEMPTED = 75   # EX_TEMPFAIL: try again on a new node
EXIT_LEASE_HELD = 77  # EX_NOPERM: another writer holds the run (see vicuna_cloud/lease.py)
#: A GPU that vanished or fewer visible GPUs than processes: the VM's fault, so transient.
EXIT_GPU_UNAVAILABLE = EXIT_TRANSIENT

#: What the task's job_recovery lists in recover_on_exit_codes (restarts, not counted).
RECOVERABLE_EXIT_CODES = (EXIT_PREEMPTED, EXIT_TRANSIENT)
