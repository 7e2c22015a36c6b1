"""The one sha256-of-a-file helper: datasets (the run spec pins train.jsonl's hash),
checkpoint files (COMMIT.json lists them), the shipped sample corpus. Torch-free, so the
trainer uses it too."""

from __future__ import annotations

import hashlib

CHUNK = 8 << 20


def sha256_file(path: str) -> str:
    """Hex sha256 of a file's bytes, read in 8 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()
