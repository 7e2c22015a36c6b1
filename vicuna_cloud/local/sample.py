"""The sample corpus shipped with the package, and how it was made.

``vicuna_cloud/sample_data/raw_sharegpt_sample.json`` holds raw ShareGPT-style HTML
conversations written by this project's own generator (vicuna_cloud.data.synthetic), so
the local demo's data pipeline has real work to do (HTML to markdown, filters, language
ID, splitting) without shipping anyone's data. The file is committed; ``build`` remakes it
byte for byte (``python -m vicuna_cloud.local.sample``).
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import resources

SAMPLE_NAME = "raw_sharegpt_sample.json"
SEED = 2023
N_SHORT = 190        # conversations up to SHORT_BYTES of raw JSON each
N_LONG = 10          # multi-turn ones, so that splitting at pair boundaries happens
SHORT_BYTES = 2600
LONG_BYTES = 9000


def sample_path() -> str:
    """Filesystem path of the shipped corpus."""
    return str(resources.files("vicuna_cloud").joinpath("sample_data", SAMPLE_NAME))


def prepare_sample_dataset(max_length: int, template: str, tokenizer: str):
    """(directory, Manifest): the shipped corpus through the data pipeline, once; later
    launches with the same options reuse it (checked against the manifest's sha256)."""
    from vicuna_cloud import paths
    from vicuna_cloud.data.manifest import ManifestError, load_manifest, parse_manifest
    from vicuna_cloud.data.pipeline import PrepareOptions, prepare
    from vicuna_cloud.data.reader import DataError
    from vicuna_cloud.hashing import sha256_file

    src = sample_path()
    opts = PrepareOptions(tokenizer=tokenizer, template=template, max_length=max_length)
    key = hashlib.sha256((sha256_file(src) + json.dumps(opts.for_manifest(), sort_keys=True))
                         .encode()).hexdigest()[:16]
    out = os.path.join(paths.home(), "datasets", f"sample-{key}")
    train = os.path.join(out, "train.jsonl")
    if os.path.isfile(os.path.join(out, "manifest.json")) and os.path.isfile(train):
        try:
            manifest, _ = load_manifest(out)
            if manifest.sha256 == sha256_file(train):
                return out, manifest
        except ManifestError:
            pass  # damaged: prepare it again
    try:
        result = prepare([src], out, opts, force=True)
    except DataError as e:
        raise DataError(f"preparing the sample corpus failed: {e}") from None
    return out, parse_manifest(json.dumps(result.manifest), out)


def select() -> list[dict]:
    """A few hundred KB: mostly short conversations, some long multi-turn ones."""
    from vicuna_cloud.data import synthetic

    short: list[dict] = []
    long: list[dict] = []
    for conv in synthetic.iter_generate(20_000, seed=SEED):
        size = len(json.dumps(conv, ensure_ascii=False))
        pairs = len(conv.get("conversations", [])) // 2
        if size <= SHORT_BYTES and len(short) < N_SHORT:
            short.append(conv)
        elif pairs >= 3 and size <= LONG_BYTES and len(long) < N_LONG:
            long.append(conv)
        if len(short) >= N_SHORT and len(long) >= N_LONG:
            break
    # Interleave so the long ones are spread through the file, as in a real dump.
    out, step = [], max(1, len(short) // max(len(long), 1))
    for i, conv in enumerate(short):
        out.append(conv)
        if long and i % step == step - 1:
            out.append(long.pop(0))
    return out + long


def build(path: str | None = None) -> str:
    path = path or sample_path()
    text = "[\n" + ",\n".join(json.dumps(c, ensure_ascii=False) for c in select()) + "\n]\n"
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


if __name__ == "__main__":
    print(build())
