"""The trainer's side of the run lease (vicuna_cloud/lease.py): rank 0 takes the next
generation before anything is written, every rank learns it (or the refusal), and the
node-local staging of older generations is removed (they are dead or fenced off)."""

from __future__ import annotations

import os
import shutil
from typing import Optional

from vicuna_cloud.lease import (
    TAKE_OVER_ENV, LeaseHeld, LeaseKeeper, acquire, holder_description, owner_from_env,
)

from train import parallel


def take(d: parallel.Dist, bucket, spec, local_root: str, *,
         take_over: Optional[bool] = None) -> tuple[Optional[LeaseKeeper], int]:
    """Collective. Returns (rank 0's keeper, None on other ranks; the generation, on every
    rank); raises LeaseHeld on every rank when another live writer holds the run. Staging
    goes to ``staging_root(local_root, generation)``."""
    keeper, refusal, generation = None, None, -1
    if take_over is None:
        take_over = os.environ.get(TAKE_OVER_ENV, "") in ("1", "true", "yes")
    if d.is_main:
        try:
            rec = acquire(bucket, spec.run_id, owner=owner_from_env(),
                          holder=holder_description("trainer rank 0"),
                          heartbeat_s=spec.budget.heartbeat_seconds, take_over=take_over,
                          flag=f"{TAKE_OVER_ENV}=1")
            keeper = LeaseKeeper(bucket, spec.run_id, rec).start()
            generation = rec.generation
        except LeaseHeld as e:
            refusal = str(e)
        except Exception as e:  # noqa: BLE001 - told to the other ranks, then re-raised
            refusal = e
    refusal, generation = _broadcast((refusal, generation))
    if isinstance(refusal, BaseException):
        raise refusal
    if refusal is not None:
        raise LeaseHeld(refusal)
    if d.is_local_main and os.path.isdir(local_root):
        for name in os.listdir(local_root):  # staging of killed or superseded generations
            if name in ("save", "restore") or (name.startswith("gen-")
                                               and name != f"gen-{generation}"):
                shutil.rmtree(os.path.join(local_root, name), ignore_errors=True)
    return keeper, generation


def _broadcast(obj):
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def staging_root(local_root: str, generation: int) -> str:
    return os.path.join(local_root, f"gen-{generation}")
