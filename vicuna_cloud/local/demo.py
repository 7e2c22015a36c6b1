"""The end of a local run of a real pretrained base: what fine-tuning changed, and the
preemption proof.

1. Eval loss on the held-out split at the start and at the end (metrics.jsonl).
2. Before/after on the held-out prompts: the base and the tuned model, same template,
   greedy, ``MAX_NEW_TOKENS``; the fraction whose reply ended with EOS before the limit
   (``python -m train.compare``, one subprocess per model: this module stays torch-free).
3. Whether the final weights equal an uninterrupted run's: every run that completed in
   one segment records its weights' sha256 (train/export.py writes it to EXPORT.json)
   under a key of everything that determines them (base, data, template,
   hyperparameters, world size, torch version) in ``<home>/references.json``; a later run
   with the same key is compared with it. Nothing is assumed: without a reference the
   line says so and how to make one.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from typing import Optional

from vicuna_cloud import paths

MAX_NEW_TOKENS = 64
MAX_PROMPTS = 12
#: Shown after the held-out prompts (not counted in the fractions): the identity the
#: sample data teaches, and a fact the base already knew.
SHOWCASE = ("Who are you?", "What is the capital of France?")
REFERENCES = "references.json"


@dataclass
class Comparison:
    prompts: list[str]
    base_ended: float
    tuned_ended: float
    raw: dict


def eval_losses(bucket, run_id: str) -> tuple[Optional[dict], Optional[dict]]:
    """The first and the last eval record of the run (None, None without any)."""
    from vicuna_cloud.run_progress import jsonl_records
    from vicuna_cloud.storage import NotFoundError

    try:
        data = bucket.get_bytes(f"runs/{run_id}/metrics.jsonl")
    except NotFoundError:
        return None, None
    evals = [r for r in jsonl_records(data) if "eval_loss" in r]
    return (evals[0], evals[-1]) if evals else (None, None)


def held_out_prompts(bucket, spec, limit: int = MAX_PROMPTS) -> list[str]:
    """First user turns of the run's eval.jsonl (the split no step trained on)."""
    from vicuna_cloud.storage import NotFoundError, open_bucket

    if not spec.dataset.eval_sha256:
        return []
    try:
        data = open_bucket(spec.dataset.uri).get_bytes("eval.jsonl")
    except (NotFoundError, ValueError):
        return []
    if hashlib.sha256(data).hexdigest() != spec.dataset.eval_sha256:
        return []
    out = []
    for line in data.decode("utf-8").splitlines():
        if line.strip():
            turns = json.loads(line)["conversations"]
            if turns and turns[0]["value"] not in out:
                out.append(turns[0]["value"])
    return out[:limit]


def compare(base_dir: str, tuned_dir: str, template: str, prompts: list[str],
            max_new_tokens: int = MAX_NEW_TOKENS) -> Comparison:
    """Both models' greedy replies, generated side by side in two processes with half the
    usable cores each (unless OMP_NUM_THREADS says otherwise): decoding a 135M model is
    bound by memory bandwidth, not by the cores, so two at once took 20 s where one after
    the other took 39 (2 cores, 11 prompts)."""
    from concurrent.futures import ThreadPoolExecutor

    from vicuna_cloud.data.pipeline import usable_cores

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(prompts + list(SHOWCASE), f)
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, usable_cores() // 2))
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=threads,
               MKL_NUM_THREADS=threads)
    procs: dict[str, subprocess.Popen] = {}
    try:
        for who, path in (("base", base_dir), ("tuned", tuned_dir)):
            procs[who] = subprocess.Popen(
                [sys.executable, "-m", "train.compare", "--model", path, "--prompts", f.name,
                 "--template", template, "--max-new-tokens", str(max_new_tokens)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        with ThreadPoolExecutor(len(procs)) as pool:  # each child's pipes drained at once
            talks = {who: pool.submit(p.communicate) for who, p in procs.items()}
            outs = {who: (*t.result(), procs[who].returncode) for who, t in talks.items()}
    finally:
        for p in procs.values():  # interrupted (Ctrl-C): no generation outlives the demo
            if p.poll() is None:
                p.kill()
            p.wait()
        os.unlink(f.name)
    raw: dict = {"prompts": prompts + list(SHOWCASE), "max_new_tokens": max_new_tokens}
    for who, (out, err, rc) in outs.items():
        lines = out.strip().splitlines()
        if rc or not lines:
            raise RuntimeError(f"{who} model: "
                               f"{(err.strip().splitlines() or ['no output'])[-1]}")
        raw[who] = json.loads(lines[-1])
    n = len(prompts)
    frac = lambda who: sum(r["ended"] for r in raw[who]["replies"][:n]) / max(n, 1)  # noqa: E731
    return Comparison(prompts, frac("base"), frac("tuned"), raw)


# ---- the preemption proof --------------------------------------------------------------
def reference_key(spec) -> str:
    """Everything that determines the final weights, and nothing that does not (run id,
    bucket, budget, checkpoint cadence, preemptions)."""
    payload = spec.model_dump(include={"model", "hyper", "dataset", "template"}, mode="json")
    payload["world"] = [spec.resources.accelerators, spec.resources.nodes]
    try:
        payload["torch"] = metadata.version("torch")
    except metadata.PackageNotFoundError:
        payload["torch"] = None
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def _read_refs() -> dict:
    try:
        with open(os.path.join(paths.home(), REFERENCES), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _write_ref(key: str, entry: dict) -> None:
    refs = _read_refs()
    refs[key] = entry
    path = os.path.join(paths.home(), REFERENCES)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(refs, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def final_weights_sha256(bucket, run_id: str) -> Optional[str]:
    from vicuna_cloud.storage import NotFoundError

    try:
        marker = json.loads(bucket.get_bytes(f"runs/{run_id}/final/EXPORT.json"))
    except (NotFoundError, ValueError):
        return None
    return marker.get("weights_sha256")


def weights_verdict(bucket, spec, preemptions: int, segments: int) -> str:
    """The demo's last line: equal to an uninterrupted run's weights, or not, or unknown."""
    sha = final_weights_sha256(bucket, spec.run_id)
    if sha is None:
        return "Final weights: no weights hash in the export (EXPORT.json), nothing to compare."
    key = reference_key(spec)
    ref = _read_refs().get(key)
    interrupted = segments > 1
    if ref and ref.get("run_id") != spec.run_id:
        same = ref["weights_sha256"] == sha
        return (f"Final weights after {segments - 1} interruption(s) "
                f"{'EQUAL' if same else 'DIFFER FROM'} those of the uninterrupted run "
                f"{ref['run_id']} with the same data, preset and seed "
                f"(sha256 {sha[:16]} vs {ref['weights_sha256'][:16]}).")
    if not interrupted:
        _write_ref(key, {"weights_sha256": sha, "run_id": spec.run_id,
                         "code_version": spec.code_version, "time": time.time()})
        return (f"Final weights sha256 {sha[:16]}: this uninterrupted run is now the reference; "
                f"relaunch with --preemptions 2 to check that a preempted run ends with the "
                f"same weights.")
    return (f"Final weights sha256 {sha[:16]} after {segments - 1} interruption(s); no "
            f"uninterrupted run with the same data, preset and seed on this machine to compare "
            f"with yet: launch once with --preemptions 0, then again with --preemptions "
            f"{max(preemptions, 1)}.")


# ---- the small preset's base model and data ---------------------------------------------
def check_local_base(preset: str, base_model: str) -> str:
    """A --base-model for a local run: builtin:NAME or an imported directory (absolute)."""
    from vicuna_cloud.base_models import BUILTIN_PREFIX
    from vicuna_cloud.errors import ConfigError

    if preset.lower().strip() != "small":
        raise ConfigError(f"--base-model with --local works with the small preset (the tiny "
                          f"one is a randomly initialised LLaMA), not {preset!r}")
    if base_model.startswith(BUILTIN_PREFIX):
        return base_model
    if not os.path.isfile(os.path.join(base_model, "config.json")):
        raise ConfigError(f"--base-model {base_model!r}: not a model directory (no config.json); "
                          "convert a .gguf file or a checkpoint with `vicuna-cloud base import "
                          "FILE --out DIR` and pass DIR")
    return os.path.abspath(base_model)  # the trainer runs from another cwd


def resolve_base(p):
    """(preset with the imported directory for its builtin:NAME base, a line saying so)."""
    import dataclasses

    from vicuna_cloud.base_models import BaseModelError, import_base
    from vicuna_cloud.errors import ConfigError

    try:
        imp = import_base(p.base_model)
    except BaseModelError as e:
        raise ConfigError(str(e)) from None
    msg = (f"Base model: {p.base_model} "
           f"({'cached' if imp.cached else 'fetched and converted'}: {imp.path})")
    return dataclasses.replace(p, base_model=imp.path, tokenizer=imp.path), msg


def curated_for(p) -> Optional[list]:
    """Identity and fact conversations for a real pretrained base (not the random tiny)."""
    if p.base_model.startswith("config:"):
        return None
    from vicuna_cloud.base_models import read_marker
    from vicuna_cloud.local.sample import curated_conversations

    marker = read_marker(p.base_model) or {}
    src = os.path.basename(marker.get("source", "")) or os.path.basename(p.base_model.rstrip("/"))
    return curated_conversations(f"Vicuna-{p.name}", src.split(".")[0] or p.base_model)


def data_line(manifest: dict) -> str:
    """One line, one token count: the trainer's (after its cut at max_length, with how
    many pieces it cuts), as the manifest records it."""
    c, t = manifest.get("counts", {}), manifest.get("tokens", {})
    ev = manifest.get("eval") or {}
    parts = [f"Data: {c.get('input', '?')} raw conversations -> "
             f"{c.get('split_pieces', '?')} training pieces"]
    after, over = c.get("train_tokens_after_truncation"), c.get("train_over_length")
    if isinstance(after, int) and isinstance(over, int):
        parts[0] += (f" ({after:,} tokens; {over} longer than {manifest.get('max_length')} "
                     f"are cut to it)")
    elif isinstance((t or {}).get("total"), int):
        parts[0] += f" ({t['total']:,} tokens before truncation)"
    if ev:
        parts.append(f"{c.get('eval_pieces', ev.get('samples'))} held out for eval")
    return ", ".join(parts)
