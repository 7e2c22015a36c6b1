"""Exit codes of `python -m train`, shared by the task YAML, the trainer and the local supervisor.

SkyPilot managed jobs restart a job whose run exits non-zero (up to
``max_restarts_on_errors``) and always recover on ``recover_on_exit_codes``. So:
- a budget stop exits 0: SkyPilot must not start (and bill) another VM; the ledger's end
  reason "budget" is what `status` and `cost` report;
- a clean exit after a preemption notice or SIGTERM exits EXIT_PREEMPTED, listed in
  ``recover_on_exit_codes`` so the job recovers without spending an error restart;
- a bad run spec or dataset (will fail the same way again) exits EXIT_CONFIG, which the
  local supervisor never restarts; so does a GPU node whose CUDA cannot work with this
  torch build (a CPU wheel, a driver older than the wheel's CUDA);
- a GPU node that shows fewer GPUs than it runs processes, or whose CUDA fails to start
  otherwise (a GPU fell off the bus), exits EXIT_GPU_UNAVAILABLE before training: not in
  ``recover_on_exit_codes``, so it spends one of ``max_restarts_on_errors`` on a new VM
  (which may well have working GPUs) instead of looping for ever.
- another live writer holds the run's lease (vicuna_cloud/lease.py) exits EXIT_LEASE_HELD:
  restarting beside it would corrupt the run; the local supervisor stops.
"""

EXIT_COMPLETED = 0
EXIT_BUDGET = 0
EXIT_FAILED = 1
EXIT_CONFIG = 78      # EX_CONFIG: fix the input, restarting will not help
EXIT_PREEMPTED = 75   # EX_TEMPFAIL: try again on a new node
EXIT_GPU_UNAVAILABLE = 69  # EX_UNAVAILABLE: this VM's GPUs are not all usable
EXIT_LEASE_HELD = 77  # EX_NOPERM: another writer holds the run (see vicuna_cloud/lease.py)
