"""Delta weights: publish a fine-tune as "target minus base", as Vicuna v0 was published.

How the round trip is exact: a delta tensor holds, element by element, the difference of
the raw bit patterns of target and base, as unsigned integers of the stored width
(bf16/fp16 -> U16, fp32 -> U32, ...) modulo 2**bits. Applying adds the delta back modulo
2**bits, which gives the target's bit patterns exactly, for every value, NaN and
infinity included: no float arithmetic, no rounding. The delta reveals nothing about the
target without the base (every base value shifts every delta value).

Apply writes the target's original header bytes (kept in the manifest: names, dtypes,
shapes, offsets, no weights) and the tensors at their original offsets, so each rebuilt
file is byte-identical to the target's; the manifest's sha256 of every file and tensor
proves it, and apply checks them all.

Streaming: every tensor is processed in fixed chunks (``CHUNK_BYTES``) read into reused
buffers, so peak memory is a few chunks, less than one tensor, whatever the model size
(bench/delta_memory.py measures it).

Tensors the base lacks, or has with another shape or dtype (e.g. an embedding resized for
added tokens), are stored whole in the delta and listed as ``full`` in the manifest.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from vicuna_cloud.errors import ConfigError

from vicuna_cloud.delta.safetensors_io import (
    CHUNK_BYTES, UINT_OF_WIDTH, SafetensorsError, SafetensorsFile, TensorInfo, build_header,
    iter_chunks, parse_header, read_header, write_prefix,
)

MANIFEST = "delta_manifest.json"
FORMAT = "vicuna-cloud-delta"
FORMAT_VERSION = 1
METHOD = "bitwise-modular-difference"


class DeltaError(ConfigError):
    """Bad input for make/apply; the message says what is wrong and how to fix it."""


class WrongBase(DeltaError):
    """The base given to apply is not the one the delta was made from."""


@dataclass
class DeltaResult:
    out: str
    files: list[str]
    tensors: int
    delta_tensors: int
    full_tensors: list[str]
    weight_bytes: int
    seconds: float
    base_fingerprint: str
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"out": self.out, "files": self.files, "tensors": self.tensors,
                "delta_tensors": self.delta_tensors, "full_tensors": self.full_tensors,
                "weight_bytes": self.weight_bytes, "seconds": round(self.seconds, 3),
                "base_fingerprint": self.base_fingerprint, **self.extra}


# --- model directories ---------------------------------------------------------------------
def _weight_files(model_dir: str, flag: str) -> list[SafetensorsFile]:
    if not os.path.isdir(model_dir):
        raise DeltaError(f"{flag} {model_dir}: no such directory; give a Hugging Face model "
                         "directory with *.safetensors weights")
    paths = sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))
    if not paths:
        raise DeltaError(f"{flag} {model_dir} holds no *.safetensors files; save the model "
                         "with safe_serialization (the vicuna-cloud export does)")
    try:
        return [read_header(p) for p in paths]
    except SafetensorsError as e:
        raise DeltaError(f"{flag}: {e}") from None


def _index(files: list[SafetensorsFile], flag: str) -> dict[str, tuple[str, TensorInfo]]:
    out: dict[str, tuple[str, TensorInfo]] = {}
    for f in files:
        for t in f.tensors:
            if t.name in out:
                raise DeltaError(f"{flag}: tensor {t.name!r} is in both {out[t.name][0]} and "
                                 f"{f.path}; remove the stray file")
            out[t.name] = (f.path, t)
    return out


def _fingerprint(tensors: dict[str, dict]) -> str:
    """One hash naming a base: over its used tensors' names, dtypes, shapes and hashes."""
    rows = [[n, t["dtype"], list(t["shape"]), t["sha256"]] for n, t in sorted(tensors.items())]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fresh_out(out_dir: str) -> str:
    """A temp directory beside --out; renamed onto it only when everything checked out."""
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise DeltaError(f"--out {out_dir} already exists and is not an empty directory; "
                         "choose a new one")
    parent = os.path.dirname(os.path.abspath(out_dir))
    try:
        os.makedirs(parent, exist_ok=True)
        return tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.partial-", dir=parent)
    except OSError as e:
        raise DeltaError(f"--out {out_dir}: cannot write there ({e.strerror}); give a "
                         "writable directory") from None


def _publish(tmp: str, out_dir: str) -> None:
    if os.path.isdir(out_dir):
        os.rmdir(out_dir)  # empty (checked by _fresh_out)
    os.replace(tmp, out_dir)


@contextlib.contextmanager
def _staged(out_dir: str, chunk_bytes: int):
    """(temp dir, file handles, buffers) for writing ``out_dir``: the temp dir becomes
    ``out_dir`` only if the body finishes, and is removed on any error, so a failed make
    or apply leaves nothing behind."""
    tmp = _fresh_out(out_dir)
    handles = _Handles()
    try:
        yield tmp, handles, _Buffers(chunk_bytes)
        _publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        handles.close()


class _Handles:
    """Open files by path, closed together (a base may be sharded over many files)."""

    def __init__(self):
        self._open: dict = {}

    def get(self, path: str):
        if path not in self._open:
            self._open[path] = open(path, "rb")
        return self._open[path]

    def close(self):
        for f in self._open.values():
            f.close()


class _Buffers:
    """The only large allocations: two read buffers and one result array."""

    def __init__(self, chunk_bytes: int):
        if chunk_bytes < 8 or chunk_bytes % 8:
            raise ValueError("chunk_bytes must be a positive multiple of 8 (whole elements)")
        self.a = bytearray(chunk_bytes)
        self.b = bytearray(chunk_bytes)
        self.out = np.empty(chunk_bytes, dtype=np.uint8)

    def result(self, width: int, n_bytes: int) -> np.ndarray:
        return self.out[:n_bytes].view(f"<u{width}")


# --- make ----------------------------------------------------------------------------------
def make_delta(base_dir: str, target_dir: str, out_dir: str, *,
               chunk_bytes: int = CHUNK_BYTES) -> DeltaResult:
    """Write ``out_dir``: delta safetensors (one per target file), the target's other files
    (config, tokenizer) and the manifest of hashes."""
    t0 = time.perf_counter()
    base = _index(_weight_files(base_dir, "--base"), "--base")
    targets = _weight_files(target_dir, "--target")
    _index(targets, "--target")  # duplicate names are an error here too
    manifest_files, tensors_meta, base_meta, full = {}, {}, {}, []
    weight_bytes = 0
    with _staged(out_dir, chunk_bytes) as (tmp, handles, bufs):
        for tf in targets:
            name = os.path.basename(tf.path)
            kinds = {}
            entries = []
            for t in tf.tensors:
                b = base.get(t.name)
                same = b is not None and b[1].dtype == t.dtype and b[1].shape == t.shape
                kinds[t.name] = "delta" if same else "full"
                entries.append((t.name, UINT_OF_WIDTH[t.width] if same else t.dtype,
                                t.shape, t.nbytes))
            header = build_header(entries, {"format": FORMAT, "target_file": name})
            with open(os.path.join(tmp, name), "wb") as out:
                write_prefix(out, header)
                for t in tf.tensors:
                    src = base[t.name] if kinds[t.name] == "delta" else None
                    th, bh = _make_tensor(out, handles.get(tf.path), t, src, handles, bufs)
                    tensors_meta[t.name] = {"file": name, "dtype": t.dtype, "shape": list(t.shape),
                                            "sha256": th, "kind": kinds[t.name]}
                    if src is not None:
                        base_meta[t.name] = {"dtype": t.dtype, "shape": list(t.shape),
                                             "sha256": bh}
                    else:
                        full.append(t.name)
                    weight_bytes += t.nbytes
            manifest_files[name] = {"sha256": _sha256_file(tf.path),
                                    "size": os.path.getsize(tf.path),
                                    "header": tf.header_bytes.decode("utf-8"),
                                    "delta_sha256": _sha256_file(os.path.join(tmp, name))}
        copied = _copy_others(target_dir, tmp)
        fingerprint = _fingerprint(base_meta)
        manifest = {
            "format": FORMAT, "version": FORMAT_VERSION, "method": METHOD,
            "explain": "delta = (target bits - base bits) mod 2**bits per element, as unsigned "
                       "integers of the stored width; apply adds it back modulo 2**bits",
            "base": {"source": os.path.basename(os.path.abspath(base_dir)),
                     "fingerprint": fingerprint, "tensors": base_meta},
            "target": {"source": os.path.basename(os.path.abspath(target_dir)),
                       "files": manifest_files, "tensors": tensors_meta},
            "other_files": copied,
        }
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
    return DeltaResult(out_dir, sorted(os.listdir(out_dir)), len(tensors_meta), len(base_meta),
                       full, weight_bytes, time.perf_counter() - t0, fingerprint)


def _make_tensor(out, tfile, t: TensorInfo, src: Optional[tuple[str, TensorInfo]],
                 handles: _Handles, bufs: _Buffers) -> tuple[str, str]:
    """Stream one tensor's delta (or the whole tensor) into ``out``; (target, base) sha256."""
    th, bh = hashlib.sha256(), hashlib.sha256()
    if src is None:
        for chunk in iter_chunks(tfile, t, bufs.a):
            th.update(chunk)
            out.write(chunk)
        return th.hexdigest(), ""
    bpath, binfo = src
    w = t.width
    for tc, bc in zip(iter_chunks(tfile, t, bufs.a), iter_chunks(handles.get(bpath), binfo, bufs.b)):
        th.update(tc)
        bh.update(bc)
        res = bufs.result(w, len(tc))
        np.subtract(np.frombuffer(tc, dtype=f"<u{w}"), np.frombuffer(bc, dtype=f"<u{w}"), out=res)
        out.write(memoryview(res).cast("B"))
    return th.hexdigest(), bh.hexdigest()


def _copy_others(src_dir: str, dst_dir: str) -> dict[str, str]:
    """Non-weight files (config, tokenizer, index) travel as they are; name -> sha256."""
    out = {}
    for name in sorted(os.listdir(src_dir)):
        path = os.path.join(src_dir, name)
        if name.endswith(".safetensors") or not os.path.isfile(path):
            continue
        if name == MANIFEST:
            raise DeltaError(f"{src_dir} already holds a {MANIFEST}: it is a delta, not a model")
        shutil.copyfile(path, os.path.join(dst_dir, name))
        out[name] = _sha256_file(path)
    return out


# --- apply ---------------------------------------------------------------------------------
def load_manifest(delta_dir: str) -> dict:
    path = os.path.join(delta_dir, MANIFEST)
    try:
        with open(path) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise DeltaError(f"--delta {delta_dir} has no {MANIFEST}: give a directory written by "
                         "`vicuna-cloud delta make`") from None
    except (OSError, json.JSONDecodeError) as e:
        raise DeltaError(f"--delta {path} is unreadable or not JSON ({e}); re-download the "
                         "delta") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
        raise DeltaError(f"--delta {delta_dir}: format {manifest.get('format')!r} version "
                         f"{manifest.get('version')!r} is not {FORMAT} v{FORMAT_VERSION}; "
                         "make it with this vicuna-cloud version")
    return manifest


def check_base(manifest: dict, base: dict[str, tuple[str, TensorInfo]], base_dir: str) -> None:
    """Names, dtypes and shapes of the base against the manifest (cheap: headers only)."""
    want = manifest["base"]["tensors"]
    hint = (f"apply the delta to the base it was made from (fingerprint "
            f"{manifest['base']['fingerprint'][:16]}, made from "
            f"{manifest['base'].get('source')!r})")
    missing = sorted(set(want) - set(base))
    if missing:
        raise WrongBase(f"--base {base_dir} is not the base of this delta: it lacks "
                        f"{len(missing)} tensor(s) (e.g. {missing[0]!r}); {hint}")
    for name, w in sorted(want.items()):
        have = base[name][1]
        if have.dtype != w["dtype"] or list(have.shape) != list(w["shape"]):
            raise WrongBase(f"--base {base_dir} is not the base of this delta: tensor {name!r} "
                            f"is {have.dtype}{list(have.shape)} there, the delta expects "
                            f"{w['dtype']}{list(w['shape'])}; {hint}")


def apply_delta(base_dir: str, delta_dir: str, out_dir: str, *,
                chunk_bytes: int = CHUNK_BYTES) -> DeltaResult:
    """Rebuild the target in ``out_dir``; refuses a wrong base and leaves nothing behind."""
    t0 = time.perf_counter()
    manifest = load_manifest(delta_dir)
    base = _index(_weight_files(base_dir, "--base"), "--base")
    check_base(manifest, base, base_dir)
    tensors_meta = manifest["target"]["tensors"]
    weight_bytes = 0
    with _staged(out_dir, chunk_bytes) as (tmp, handles, bufs):
        for name, finfo in sorted(manifest["target"]["files"].items()):
            dpath = os.path.join(delta_dir, name)
            try:
                dfile = read_header(dpath).by_name()
            except SafetensorsError as e:
                raise DeltaError(f"--delta: {e}; re-download the delta") from None
            header = finfo["header"].encode("utf-8")
            layout = parse_header(header, name)
            fh = hashlib.sha256()
            with open(os.path.join(tmp, name), "wb") as out:
                write_prefix(_Tee(out, fh), header)
                for t in layout.tensors:
                    if t.name not in dfile:
                        raise DeltaError(f"--delta {dpath} lacks tensor {t.name!r}; re-download "
                                         "the delta")
                    meta = tensors_meta[t.name]
                    src = base[t.name] if meta["kind"] == "delta" else None
                    _apply_tensor(_Tee(out, fh), handles.get(dpath), dfile[t.name], t, meta,
                                  src, manifest, base_dir, handles, bufs)
                    weight_bytes += t.nbytes
            if fh.hexdigest() != finfo["sha256"]:
                raise DeltaError(f"rebuilt {name} does not hash to the target's sha256; the "
                                 "delta is damaged: re-download it")
        for name, sha in manifest.get("other_files", {}).items():
            src_path = os.path.join(delta_dir, name)
            if not os.path.isfile(src_path) or _sha256_file(src_path) != sha:
                raise DeltaError(f"--delta {src_path} is missing or damaged (sha256 differs); "
                                 "re-download the delta")
            shutil.copyfile(src_path, os.path.join(tmp, name))
    n_delta = sum(1 for m in tensors_meta.values() if m["kind"] == "delta")
    full = sorted(n for n, m in tensors_meta.items() if m["kind"] == "full")
    return DeltaResult(out_dir, sorted(os.listdir(out_dir)), len(tensors_meta), n_delta, full,
                       weight_bytes, time.perf_counter() - t0, manifest["base"]["fingerprint"],
                       extra={"verified": "every file's sha256 equals the target's"})


class _Tee:
    """Write to a file and a running hash at once."""

    def __init__(self, f, h):
        self.f, self.h = f, h

    def write(self, data) -> None:
        self.h.update(data)
        self.f.write(data)


def _apply_tensor(out: _Tee, dfh, dinfo: TensorInfo, t: TensorInfo, meta: dict,
                  src: Optional[tuple[str, TensorInfo]], manifest: dict, base_dir: str,
                  handles: _Handles, bufs: _Buffers) -> None:
    if dinfo.nbytes != t.nbytes:
        raise DeltaError(f"delta tensor {t.name!r} has {dinfo.nbytes} bytes, the target "
                         f"{t.nbytes}; the delta is damaged: re-download it")
    th = hashlib.sha256()
    if src is None:
        for chunk in iter_chunks(dfh, dinfo, bufs.a):
            th.update(chunk)
            out.write(chunk)
    else:
        bh = hashlib.sha256()
        bpath, binfo = src
        w = t.width
        for dc, bc in zip(iter_chunks(dfh, dinfo, bufs.a),
                          iter_chunks(handles.get(bpath), binfo, bufs.b)):
            bh.update(bc)
            res = bufs.result(w, len(dc))
            np.add(np.frombuffer(bc, dtype=f"<u{w}"), np.frombuffer(dc, dtype=f"<u{w}"), out=res)
            view = memoryview(res).cast("B")
            th.update(view)
            out.write(view)
        want = manifest["base"]["tensors"][t.name]["sha256"]
        if bh.hexdigest() != want:
            raise WrongBase(
                f"--base {base_dir} is not the base of this delta: tensor {t.name!r} holds other "
                f"values (sha256 {bh.hexdigest()[:12]}..., expected {want[:12]}...); apply it "
                f"to the base it was made from (fingerprint "
                f"{manifest['base']['fingerprint'][:16]}, made from "
                f"{manifest['base'].get('source')!r}). Nothing was written.")
    if th.hexdigest() != meta["sha256"]:
        raise DeltaError(f"rebuilt tensor {t.name!r} does not match the target's sha256; the "
                         "delta is damaged: re-download it")
