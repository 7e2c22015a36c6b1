"""``python -m train.export_cli --run-uri URI [--step N] --out DIR``: checkpoint -> HF directory.

Any committed checkpoint (default: the newest) becomes a Hugging Face model directory
(safetensors, config, tokenizer with the Vicuna chat template), in one process, no GPU and
no process group: the DCP shards are downloaded, verified against COMMIT.json, and merged
into full tensors. `vicuna-cloud export` runs this in a subprocess (the control plane
never imports torch). Exit codes: 0 done, 2 bad input (message on stderr, one line).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from typing import Optional


class ExportError(Exception):
    """Bad input: printed as one line, exit code 2."""


def load_model_state(ckpt_dir: str) -> dict:
    """Full model tensors from a DCP checkpoint directory (FQNs of the HF model)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    # dcp.load fills a shallow copy of its argument, so the empty-dict planner needs the
    # inner loader (what torch's own dcp_to_torch_save uses). Only the model is read.
    state: dict = {}
    _load_state_dict(state, storage_reader=dcp.FileSystemReader(ckpt_dir),
                     planner=_EmptyStateDictLoadPlanner(keys={"model"}), no_dist=True)
    return state["model"]


def export(run_uri: str, out_dir: str, step: Optional[int] = None,
           work_dir: Optional[str] = None) -> dict:
    """Write the HF directory for ``step`` (None = newest committed); returns a summary."""
    from vicuna_cloud.run_store import read_run_spec
    from vicuna_cloud.storage import NotFoundError, StorageError, open_bucket
    from vicuna_cloud.tokenizer import load_tokenizer

    from train.checkpoint import CheckpointError, committed_steps, download_checkpoint
    from train.export import save_hf_dir
    from train import model as model_lib

    try:
        spec = read_run_spec(run_uri)
    except NotFoundError:
        raise ExportError(f"no run spec at {run_uri}; give the run.json URI printed by "
                          "`vicuna-cloud launch` (or RUN with --bucket)") from None
    bucket = open_bucket(spec.bucket_uri)
    steps = committed_steps(bucket, spec.run_id)
    if not steps:
        raise ExportError(f"run {spec.run_id} has no committed checkpoint yet in "
                          f"{spec.bucket_uri}; wait for the first one (see checkpoints/README.md)")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise ExportError(f"run {spec.run_id} has no committed checkpoint at step {step}; "
                          f"committed steps: {', '.join(map(str, steps))}")
    if os.path.exists(out_dir) and os.listdir(out_dir):
        raise ExportError(f"output directory {out_dir} is not empty; choose a new --out")
    tmp = tempfile.mkdtemp(prefix="vicuna-export-ckpt-", dir=work_dir)
    staging = out_dir.rstrip("/") + ".partial"
    try:
        try:
            commit = download_checkpoint(bucket, spec.run_id, step, tmp)
        except (CheckpointError, StorageError) as e:
            raise ExportError(f"{e}; export an older step with --step") from None
        state = load_model_state(tmp)
        model_dir = None
        if not spec.model.base_model.startswith("config:"):
            model_dir = model_lib.resolve_model_dir(spec.model.base_model, download=True)
        config = model_lib.build_config(spec, model_dir)
        tokenizer = load_tokenizer(spec.model.tokenizer)
        shutil.rmtree(staging, ignore_errors=True)
        files = save_hf_dir(state, config, tokenizer, spec.template, staging,
                            dtype=spec.hyper.dtype)
        # Never leave a half-written model at --out: build aside, then rename.
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
    return {"run_id": spec.run_id, "step": step, "out": os.path.abspath(out_dir),
            "files": files, "tokens_trained": commit["progress"].get("tokens_trained"),
            "committed_steps": steps}


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.export_cli",
                                description=__doc__.splitlines()[0])
    p.add_argument("--run-uri", "--run", dest="run", required=True, metavar="URI",
                   help="URI of runs/<id>/run.json")
    p.add_argument("--step", type=int, default=None, help="committed step (default: newest)")
    p.add_argument("--out", required=True, help="new directory for the Hugging Face model")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    a = p.parse_args(argv)
    try:
        summary = export(a.run, a.out, a.step)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"exported {summary['run_id']} step {summary['step']} to {summary['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
