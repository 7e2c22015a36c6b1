"""Child process for test_ledger: trains a fake loop with a real LedgerRecorder (real clock,
background heartbeat thread, LocalBucket) until its parent SIGKILLs it.

argv: bucket_uri run_id checkpoint_every (the heartbeat interval comes from run.json)
Prints "step N" lines so the parent knows how far it got.
"""

import sys
import time

from vicuna_cloud.ledger import LedgerRecorder
from vicuna_cloud.runspec import RunSpec
from vicuna_cloud.storage import open_bucket

bucket_uri, run_id, every = sys.argv[1], sys.argv[2], int(sys.argv[3])
bucket = open_bucket(bucket_uri)
spec = RunSpec.from_json(bucket.get_bytes(f"runs/{run_id}/run.json"))
rec = LedgerRecorder(bucket, spec)
rec.begin(first_step=0, total_steps=1000)
ckpt = None
step = 0
while True:
    time.sleep(0.05)
    step += 1
    if step % every == 0:
        rec.note_checkpoint(0.01, step=step)
        ckpt = step
    rec.update(step=step, tokens=step * 100, last_checkpoint_step=ckpt)
    print(f"step {step}", flush=True)
