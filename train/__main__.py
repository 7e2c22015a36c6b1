"""``python -m train --run-uri URI``: what torchrun starts on every GPU.

Exit codes (vicuna_cloud/exit_codes.py): 0 completed or budget stop, 75 preempted and 69
a fault of the place (storage or Hugging Face hub outage, NCCL/CUDA or network error, a GPU that vanished or
fewer usable GPUs than processes: the managed job recovers on a new cluster), 78 bad run
spec or data, or CUDA that cannot work with this torch build (restarting will not help),
77 another live writer holds the run's lease, 1 anything else (a bug: not retried).

torchrun does not pass its workers' exit codes on: any failing worker makes it exit 1.
So when ``$VICUNA_EXIT_CODE_FILE`` is set, each node's local rank 0 also writes its exit
code there; the wrapper removes the file before torchrun and exits with its content after:
    rm -f "$F"; torchrun ... -m train --run-uri "$VICUNA_RUN_URI"; rc=$?; [ -s "$F" ] && rc=$(cat "$F"); exit $rc

``--run-uri URI`` is the one documented form (the task, the local backend, the docs).
torchrun's argparse rejects ``--run`` after ``-m train`` (an abbreviation of its own
``--run-path``); the positional URI, ``--run`` and ``$VICUNA_RUN_URI`` are still accepted.
"""

from __future__ import annotations

import argparse
import os
import sys

from vicuna_cloud.exit_codes import (EXIT_CONFIG, EXIT_FAILED, EXIT_GPU_UNAVAILABLE,
                                     EXIT_LEASE_HELD, EXIT_TRANSIENT)

#: Words of torch's errors that come from the place, not the program: a lost peer, a
#: collective that timed out, a GPU fault. "out of memory" is deliberately not here: the
#: same VM size runs out again.
_TRANSIENT_WORDS = ("NCCL", "Connection reset", "Connection closed", "Broken pipe",
                    "timed out", "CUDA error: uncorrectable ECC", "unspecified launch failure")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train", description=__doc__.splitlines()[0])
    p.add_argument("--run-uri", "--run", dest="run", default=None, metavar="URI",
                   help="URI of runs/<id>/run.json (default: $VICUNA_RUN_URI)")
    p.add_argument("run_uri", nargs="?", default=None, help=argparse.SUPPRESS)  # older form
    p.add_argument("--local-root", default=None,
                   help="node-local cache and checkpoint staging (default: $VICUNA_LOCAL_ROOT "
                        "or the user cache)")
    p.add_argument("--stop-after-steps", type=int, default=None,
                   help="testing: stop after N steps of this attempt as if preempted (exit 75)")
    p.add_argument("--take-over", action="store_true",
                   help="take the run's lease over from a writer whose heartbeat is stale "
                        "(same as VICUNA_TAKE_OVER=1)")
    p.add_argument("--export-shard-mb", type=int, default=5 * 1024,
                   help="max size of one exported safetensors shard")
    a = p.parse_args(argv)
    a.run = a.run_uri or a.run or os.environ.get("VICUNA_RUN_URI")
    if a.take_over:
        os.environ["VICUNA_TAKE_OVER"] = "1"
    if not a.run:
        print("error: no run spec: pass --run-uri URI or set VICUNA_RUN_URI", file=sys.stderr)
        return EXIT_CONFIG

    from train.inputs import CONFIG_ERRORS
    from train.parallel import GPUUnavailable
    from train.trainer import TrainerOptions, run
    from vicuna_cloud.hub import HubUnavailable
    from vicuna_cloud.lease import LeaseHeld
    from vicuna_cloud.storage import StorageError

    try:
        return run(a.run, TrainerOptions(local_root=a.local_root,
                                         stop_after_steps=a.stop_after_steps,
                                         export_shard_bytes=a.export_shard_mb * 1024**2))
    except CONFIG_ERRORS as e:
        rank = os.environ.get("RANK", "0")
        print(f"error (rank {rank}): {e}", file=sys.stderr)
        return EXIT_CONFIG
    except GPUUnavailable as e:
        print(f"error (rank {os.environ.get('RANK', '0')}): {e}", file=sys.stderr)
        return EXIT_GPU_UNAVAILABLE
    except LeaseHeld as e:  # another live writer: starting beside it would corrupt the run
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {e}", file=sys.stderr)
        return EXIT_LEASE_HELD
    except HubUnavailable as e:  # the hub is down, not the input wrong: 69, retried
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {e} (exit {EXIT_TRANSIENT})", file=sys.stderr)
        return EXIT_TRANSIENT
    except StorageError as e:  # an outage is the place's fault: 69, recovered (not 1)
        code = exit_code_for(e)
        rank = os.environ.get("RANK", "0")
        how = "the job recovers on a new cluster" if code == EXIT_TRANSIENT else "not retried"
        print(f"error (rank {rank}): storage: {str(e).splitlines()[0]} (exit {code}: {how})",
              file=sys.stderr)
        return code
    except KeyboardInterrupt:
        return EXIT_FAILED
    except Exception as e:  # noqa: BLE001 - classified, printed, then the traceback
        full = disk_full(e)
        if full:  # the same disk fills again on a retry: say what to change (exit 1)
            print(f"error (rank {os.environ.get('RANK', '0')}): {full}", file=sys.stderr)
            return EXIT_FAILED
        code = exit_code_for(e)
        if code == EXIT_TRANSIENT:
            rank = os.environ.get("RANK", "0")
            print(f"error (rank {rank}, transient: exit {code}, the job recovers on a new "
                  f"cluster): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                  file=sys.stderr)
            import traceback
            traceback.print_exc()
            return code
        raise


def disk_full(e: BaseException) -> str | None:
    """The one-line advice for ENOSPC on this machine's disk (checkpoint staging, the
    token cache, a directory bucket), None for any other error."""
    import errno

    if not (isinstance(e, OSError) and e.errno == errno.ENOSPC):
        return None
    where = f" writing {e.filename}" if e.filename else ""
    return (f"no space left on the device{where}: each checkpoint of this run needs its "
            f"size again while it is written; free space there, keep fewer checkpoints "
            f"(--set checkpoint.keep=1) or give the node a larger disk (disk_size)")


def exit_code_for(e: BaseException) -> int:
    """EXIT_TRANSIENT for a fault of the place (storage, network, collective, GPU fault),
    EXIT_FAILED for anything else. Config errors are caught before this."""
    from vicuna_cloud.storage import BucketAccessError, StorageError

    if isinstance(e, BucketAccessError):  # credentials or a deleted bucket: not by retrying
        return EXIT_FAILED
    if isinstance(e, (StorageError, ConnectionError, TimeoutError)):
        return EXIT_TRANSIENT
    try:
        import torch.distributed as dist
        dist_errors = tuple(getattr(dist, n) for n in ("DistError", "DistBackendError",
                                                         "DistNetworkError", "DistStoreError")
                            if hasattr(dist, n))
    except ImportError:  # pragma: no cover - torch is always there on a node
        dist_errors = ()
    if dist_errors and isinstance(e, dist_errors):
        return EXIT_TRANSIENT
    text = str(e)
    if isinstance(e, RuntimeError) and any(w in text for w in _TRANSIENT_WORDS):
        return EXIT_TRANSIENT
    return EXIT_FAILED


def write_exit_code(code: int) -> None:
    path = os.environ.get("VICUNA_EXIT_CODE_FILE")
    if not path or os.environ.get("LOCAL_RANK", "0") != "0":
        return
    try:
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(f"{code}\n")
        os.replace(tmp, path)
    except OSError as e:
        print(f"warning: cannot write exit code to {path}: {e.strerror}", file=sys.stderr)


if __name__ == "__main__":
    try:
        code = main()
    except BaseException as exc:
        write_exit_code(exit_code_for(exc) if isinstance(exc, Exception) else EXIT_FAILED)
        raise
    write_exit_code(code)
    try:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - teardown must not mask the exit code
        pass
    sys.exit(code)
