"""The Rust tokenizer the pipeline counts with, without importing transformers.

``load_backend(name)`` returns the ``tokenizers.Tokenizer`` inside
``vicuna_cloud.tokenizer.load_tokenizer(name)``: the same ids, offsets and BOS handling
the trainer gets. Building it goes through transformers (import ~1 s, SentencePiece to
BPE conversion ~2 s, ~250 MB); the result is cached on disk, keyed by the sha256 of the
tokenizer directory's files and the transformers version, so later runs and every
worker process load it in ~0.1 s and a few tens of MB. Hub ids (not directories) are
not cached.
"""

from __future__ import annotations

import hashlib
import os
from importlib import metadata

from platformdirs import user_cache_dir

from vicuna_cloud.tokenizer import TokenizerNotFound, load_tokenizer, resolve_tokenizer_path


def _dir_key(path: str) -> str:
    h = hashlib.sha256()
    try:
        h.update(metadata.version("transformers").encode())
    except metadata.PackageNotFoundError:
        pass
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if os.path.isfile(full):
            h.update(name.encode() + b"\0")
            with open(full, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
    return h.hexdigest()[:32]


def cache_path(name: str) -> str | None:
    path = resolve_tokenizer_path(name)
    if not os.path.isdir(path):
        return None
    return os.path.join(user_cache_dir("vicuna-cloud"), "tokenizers", "backend",
                        f"{_dir_key(path)}.json")


def backend_json(name: str) -> str:
    """Serialized backend tokenizer for ``name`` (cached when ``name`` is a directory)."""
    try:
        cached = cache_path(name)
    except OSError as e:
        raise TokenizerNotFound(f"cannot read tokenizer {name!r}: {e.strerror}") from None
    if cached and os.path.isfile(cached):
        with open(cached, encoding="utf-8") as f:
            return f.read()
    text = load_tokenizer(name).backend_tokenizer.to_str()
    if cached:
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        tmp = f"{cached}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, cached)
    return text


def load_backend(name: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_str(backend_json(name))
