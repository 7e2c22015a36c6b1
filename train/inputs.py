"""Inputs of a run: the validated run spec, the dataset (checked against its sha256), the
tokenizer, and the tokenized examples. Every bad input becomes a one-line ConfigError."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Callable, Optional, TypeVar

from pydantic import ValidationError

from vicuna_cloud import bucket_keys
from vicuna_cloud.hashing import sha256_file
from vicuna_cloud.run_store import read_run_spec
from vicuna_cloud.runspec import RunSpec
from vicuna_cloud.storage import NotFoundError, StorageError, open_bucket
from vicuna_cloud.templates import TemplateError, get_template
from vicuna_cloud.tokenizer import TokenizerNotFound

from train import parallel
from train.masking import Example, TokenStore, tokenize_batch

MASKING_VERSION = 2  # bump when masking changes, to invalidate token caches

DATASET_FILE = bucket_keys.TRAIN_FILE
T = TypeVar("T")
EVAL_FILE = "eval.jsonl"  # beside it: the held-out split, when the spec names its sha256


class ConfigError(ValueError):
    """Bad run spec or dataset: restarting will not help (exit EXIT_CONFIG)."""


# A missing tokenizer is a bad input too.
CONFIG_ERRORS: tuple[type[Exception], ...] = (ConfigError, TokenizerNotFound,
                                               parallel.GPUConfigError)


def _collective_ok(d: parallel.Dist, error: Optional[BaseException]) -> None:
    """Raise on every rank if any rank failed, so no rank waits forever in a collective.
    A config error anywhere is a config error everywhere (exit 78: do not restart);
    anything else (a storage outage) is transient (exit 69 from train/__main__: recovered on a new cluster)."""
    config = isinstance(error, CONFIG_ERRORS)
    config_bad, other_bad = parallel.all_reduce_sum(
        [1.0 if config else 0.0, 1.0 if error is not None and not config else 0.0], d.device)
    if error is not None:
        raise error
    if config_bad:
        raise ConfigError("another rank found a bad input (see rank 0's error)")
    if other_bad:
        raise RuntimeError("another rank failed while preparing inputs (see its log)")


def once_per_node(d: parallel.Dist, fn: Callable[..., T]) -> T:
    """Run ``fn(download=True)`` on each node's first rank, then ``fn(download=False)``
    on the others once it is done (downloads and caches happen once per node)."""
    result, err = None, None
    if d.is_local_main:
        try:
            result = fn(download=True)
        except Exception as e:  # noqa: BLE001 - re-raised below, after telling the others
            err = e
    _collective_ok(d, err)
    if not d.is_local_main:
        try:
            result = fn(download=False)
        except Exception as e:  # noqa: BLE001
            err = e
    _collective_ok(d, err)
    return result


def load_spec(uri: str) -> RunSpec:
    try:
        return read_run_spec(uri)
    except NotFoundError:
        raise ConfigError(f"run spec {uri} does not exist; pass the run.json URI that "
                          "`vicuna-cloud launch` printed") from None
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"run spec {uri} is invalid: {loc}: {first['msg']}") from None
    except StorageError:
        raise  # an outage or a permission blip is not bad input: exit 69, recovered on a new cluster
    except ValueError as e:  # a malformed URI: wrong on its face
        raise ConfigError(f"cannot read run spec {uri}: {str(e).splitlines()[0]}") from None


file_sha256 = sha256_file  # the one helper (vicuna_cloud.hashing)


def fetch_dataset(spec: RunSpec, cache_dir: str, *, download: bool = True,
                  held_out: bool = False) -> str:
    """Local path of train.jsonl (``held_out``: eval.jsonl), downloaded into ``cache_dir``
    when the URI is remote.

    Only one process per node should pass ``download=True``; the others wait on a barrier
    and call again with ``download=False``. The sha256 in the spec is checked either way.
    """
    uri = spec.dataset.uri.rstrip("/")
    if uri.endswith(".jsonl"):
        uri, _, name = uri.rpartition("/")
    else:
        name = DATASET_FILE
    if held_out:
        name = EVAL_FILE
        spec = spec.model_copy(update={"dataset": spec.dataset.model_copy(
            update={"sha256": spec.dataset.eval_sha256})})
    try:
        bucket = open_bucket(uri)
    except ValueError as e:
        raise ConfigError(f"dataset URI {spec.dataset.uri!r}: {e}") from None
    if bucket.location.scheme == "file":
        path = os.path.join(bucket.location.bucket, name)
        if not os.path.isfile(path):
            raise ConfigError(f"dataset {path} does not exist; run `vicuna-cloud data prepare` "
                              "and point the run at its output directory")
    else:
        key = hashlib.sha256(uri.encode()).hexdigest()[:16]
        path = os.path.join(cache_dir, "datasets", spec.dataset.sha256 or key, name)
        if download and not (os.path.isfile(path) and _sha_ok(spec, path)):
            try:
                bucket.get_file(name, path)
            except NotFoundError:
                raise ConfigError(f"dataset {bucket.child_uri(name)} does not exist; upload it "
                                  "with `vicuna-cloud data upload`") from None
    if spec.dataset.sha256 and not _sha_ok(spec, path):
        raise ConfigError(
            f"dataset {spec.dataset.uri} has sha256 {file_sha256(path)}, but the run spec "
            f"expects {spec.dataset.sha256}; the data changed since launch: re-launch with "
            "the current data or restore the original file")
    return path


def _sha_ok(spec: RunSpec, path: str) -> bool:
    return spec.dataset.sha256 is None or file_sha256(path) == spec.dataset.sha256


def read_conversations(path: str) -> list[list[dict]]:
    """train.jsonl: one {"id", "conversations": [{"from", "value"}, ...]} per line."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                conv = rec["conversations"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ConfigError(f"{path}:{n}: not a JSON object with 'conversations'; "
                                  "prepare the data with `vicuna-cloud data prepare`") from None
            out.append(conv)
    if not out:
        raise ConfigError(f"dataset {path} holds no conversations")
    return out


@dataclass
class DataStats:
    conversations: int = 0
    kept: int = 0
    truncated: int = 0
    misaligned: int = 0
    dropped_untrained: int = 0   # nothing left to train after truncation
    dropped_invalid: int = 0     # roles not alternating etc.
    tokens: int = 0
    trained_tokens: int = 0
    notes: list[str] = field(default_factory=list)


def tokenize_all(conversations: list[list[dict]], tokenizer, template_name: str,
                 max_length: int, chunk: int = 2048,
                 show_progress: bool = False) -> tuple[TokenStore, DataStats]:
    """Render, encode in large batches (the Rust tokenizer runs them in parallel), mask."""
    template = get_template(template_name, eos=tokenizer.eos_token)  # stop = the base's EOS
    stats = DataStats(conversations=len(conversations))
    valid = []
    for conv in conversations:
        try:
            template.render(conv)
            valid.append(conv)
        except TemplateError:
            stats.dropped_invalid += 1
    examples: list[Example] = []
    from rich.console import Console
    from rich.progress import Progress
    with Progress(console=Console(stderr=True), transient=True,
                  disable=not show_progress) as bar:
        task = bar.add_task("tokenizing", total=len(valid))
        for i in range(0, len(valid), chunk):
            batch = tokenize_batch(tokenizer, template, valid[i: i + chunk], max_length)
            bar.advance(task, len(batch))
            _collect(batch, examples, stats)
    stats.kept = len(examples)
    if not examples:
        raise ConfigError("no conversation has a trained token after masking and truncation; "
                          "check the template and --max-length")
    return TokenStore.from_examples(examples), stats


def _collect(batch: list[Example], examples: list[Example], stats: DataStats) -> None:
    for ex in batch:
        stats.truncated += ex.truncated
        stats.misaligned += ex.misaligned
        n = ex.n_trained
        if n == 0:
            stats.dropped_untrained += 1
            continue
        examples.append(ex)
        stats.tokens += len(ex)
        stats.trained_tokens += n


def tokenized_dataset(spec: RunSpec, data_path: str, tokenizer, cache_dir: str, *,
                      build: bool, held_out: bool = False) -> tuple[TokenStore, DataStats]:
    """Tokenize once per node: the first rank builds and caches, the others load.

    The cache key covers everything that changes the tokens: the data file's hash, the
    tokenizer, the template, the max length and this module's masking version."""
    sha = spec.dataset.eval_sha256 if held_out else spec.dataset.sha256
    key = hashlib.sha256(json.dumps([
        sha or file_sha256(data_path), spec.model.tokenizer, spec.template,
        spec.hyper.max_length, MASKING_VERSION]).encode()).hexdigest()[:24]
    path = os.path.join(cache_dir, "tokens", f"{key}.npz")
    meta = path[:-4] + ".json"
    if os.path.isfile(path) and os.path.isfile(meta):
        with open(meta) as f:
            stats = DataStats(**json.load(f))
        return TokenStore.load(path), stats
    if not build:
        raise ConfigError(f"tokenized cache {path} is missing on this node")
    store, stats = tokenize_all(read_conversations(data_path), tokenizer, spec.template,
                                spec.hyper.max_length, show_progress=True)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    store.save(path)
    tmp = meta + ".tmp"
    with open(tmp, "w") as f:
        json.dump(vars(stats), f)
    os.replace(tmp, meta)
    return store, stats
