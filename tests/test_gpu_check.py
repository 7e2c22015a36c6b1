"""bench/gpu_check.py's CPU smoke (what CI can run of it) and `cost --estimate --mfu-from`
reading its JSON or a run's metrics.jsonl."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from vicuna_cloud.cli import app
from vicuna_cloud.cli.common import UserError
from vicuna_cloud.costs import estimate as est

from helpers.train import REPO


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_check_on_cpu(tmp_path):
    out = tmp_path / "check.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--smoke",
                           "--tokens", "128", "--steps", "1", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["kind"] == est.GPU_CHECK_KIND and res["device"] == "cpu" and res["smoke"]
    kernels = {r["kernel"] for r in res["throughput"]}
    assert kernels == {"varlen", "dense"}                     # ours and the dense-mask path
    assert all(r["tokens_per_s"] > 0 and r["mfu"] is None for r in res["throughput"])
    assert res["packed_vs_padded"]["ok"] and res["packed_vs_padded"]["grad_max_rel_diff"] < 1e-4
    c = res["checkpoint_stall"]
    assert 0 < c["stall_s"] <= c["committed_after_s"] and c["sync_save_s"] > 0
    assert res["resume"]["restored_step"] == 3 and res["resume"]["bit_exact"]
    assert res["mfu"] is None and res["attention_kernel"] == "varlen"
    assert "(a) tokens/mb" in proc.stdout and "bit-exact" in proc.stdout
    # A CPU check measured no MFU: the estimate says so instead of inventing one.
    r = CliRunner().invoke(app, ["cost", "--estimate", "7b", "--mfu-from", str(out)])
    assert isinstance(r.exception, UserError) and "no 'mfu' values" in str(r.exception)


def _estimate(*args):
    r = CliRunner().invoke(app, ["cost", "--estimate", "7b", "--version", "v1.1", "--json", *args])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


@pytest.mark.slow  # three estimates from the price catalog: seconds
def test_mfu_from_a_gpu_check_and_from_metrics(tmp_path):
    check = tmp_path / "check.json"
    check.write_text(json.dumps({"kind": est.GPU_CHECK_KIND, "device": "cuda:0",
                                 "gpu": "NVIDIA H100 80GB HBM3", "mfu": 0.5}))
    d = _estimate("--mfu-from", str(check))
    assert d["assumptions"]["mfu"] == 0.5
    same = _estimate("--mfu", "0.5")["ours"]
    assert d["ours"]["cost_usd"] == pytest.approx(same["cost_usd"])
    assert d["ours"]["compute_hours"] == pytest.approx(same["compute_hours"])
    assert d["ours"]["compute_hours"] < _estimate()["ours"]["compute_hours"]  # 0.5 > 0.4

    lines = [{"event": "start", "step": 0}, {"step": 1, "mfu": 0.30}, {"step": 2, "mfu": 0.42},
             {"step": 3, "mfu": 0.44}, {"step": 4, "mfu": None}, "not json"]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines))
    assert est.mfu_from_file(str(metrics))[0] == pytest.approx(0.42)   # median of 3 steps
    assert _estimate("--mfu-from", str(metrics))["assumptions"]["mfu"] == pytest.approx(0.42)


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ('{"step": 1, "mfu": null}\n', "no 'mfu' values"),
    ('{"kind": "vicuna-cloud/gpu_check", "device": "cpu", "mfu": null}', "no 'mfu' values"),
])
def test_mfu_from_bad_files_are_one_line_errors(tmp_path, content, message):
    f = tmp_path / "m.json"
    if content is not None:
        f.write_text(content)
    r = CliRunner().invoke(app, ["cost", "--estimate", "7b", "--mfu-from", str(f)])
    assert isinstance(r.exception, UserError) and message in str(r.exception)
    assert "\n" not in str(r.exception)
    both = CliRunner().invoke(app, ["cost", "--estimate", "7b", "--mfu", "0.4", "--mfu-from", str(f)])
    assert isinstance(both.exception, UserError) and "not both" in str(both.exception)
