"""Helpers for the control-plane tests: run the real CLI entry point in-process, and a
tiny uploaded dataset. (The ``no_submit`` and ``fake_gcp_adc`` fixtures are in conftest.)"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass



@dataclass
class CliResult:
    code: int
    out: str
    err: str


def run_cli(capsys, monkeypatch, *args: str, width: int = 400) -> CliResult:
    """``vicuna-cloud ARGS`` through vicuna_cloud.cli.main (UserError -> exit 2 included),
    on consoles ``width`` columns wide."""
    from vicuna_cloud.cli import common, main

    monkeypatch.setenv("COLUMNS", "400")  # rich must not wrap the one-line error
    # ... and the CLI's consoles, which read COLUMNS once, when vicuna_cloud.cli is first
    # imported: by whichever test came first (another order under pytest-xdist).
    for c in (common.console, common.err_console):
        monkeypatch.setattr(c, "_width", width)
    monkeypatch.setattr(sys, "argv", ["vicuna-cloud", *args])
    capsys.readouterr()
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    cap = capsys.readouterr()
    return CliResult(code, cap.out, cap.err)


def upload_dataset(bucket_uri: str, n: int = 3) -> str:
    """A tiny train.jsonl + manifest.json under datasets/<sha256>/, as `data upload` lays out."""
    from vicuna_cloud.storage import open_bucket

    lines = [json.dumps({"id": str(i), "conversations": [
        {"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]})
        for i in range(n)]
    body = ("\n".join(lines) + "\n").encode()
    sha = hashlib.sha256(body).hexdigest()
    b = open_bucket(bucket_uri)
    b.put_bytes(f"datasets/{sha}/train.jsonl", body)
    manifest = {"output": {"sha256": sha, "bytes": len(body), "conversations": n}}
    b.put_bytes(f"datasets/{sha}/manifest.json", json.dumps(manifest).encode())
    return b.child_uri(f"datasets/{sha}"), sha


def keys(bucket_uri: str) -> list[str]:
    from vicuna_cloud.storage import open_bucket

    return [o.key for o in open_bucket(bucket_uri).list("")]
