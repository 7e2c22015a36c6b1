"""`cost --estimate`: arithmetic checked against a hand calculation, manifest input, CLI."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from vicuna_cloud.cli import app
from vicuna_cloud.cli.common import UserError, console
from vicuna_cloud.costs import estimate as est
from vicuna_cloud.recipes import get_preset


def test_reference_7b_v11_matches_hand_calculation():
    preset = get_preset("7b", "v1.1")
    work = est.reference_workload(preset)
    price = 8.0274  # $/node-hour, any price will do for the arithmetic
    e = est.estimate(preset, work, price)  # defaults: MFU 0.40, P = 1/6 per hour, 10 min

    # Hand calculation, every number written out.
    tokens_per_conv = 3.2 * (71 + 358) + 40                      # 1,412.8
    assert tokens_per_conv == pytest.approx(1412.8)
    trained = 3 * round(70_000 * 1412.8)                         # 296,688,000
    assert e.trained_tokens == trained == 296_688_000
    assert e.compute_tokens == trained                           # packed: no padding
    seq = min(1412.8 * 1.6, 2048)                                # 2,048 (capped)
    assert e.attention_seq == seq == 2048
    # Attention as the causal varlen kernel computes it: (S + 1) / 2 keys per query.
    assert e.attention_kernel == "varlen"
    fpt = 6 * 6_738_415_616 + 12 * 32 * 4096 * (2048 + 1) / 2    # 42,041,892,864
    assert e.flops_per_token == fpt == 42_041_892_864
    compute_h = fpt * trained / (8 * 312e12 * 0.40) / 3600       # ~3.47 h
    assert e.compute_hours == pytest.approx(compute_h, rel=1e-12)
    assert compute_h == pytest.approx(3.4704, abs=1e-4)
    stall_s = 12 * 6_738_415_616 / 2e9                           # 40.43 s
    interval_h = math.sqrt(2 * (stall_s / 3600) / (1 / 6))       # Young: ~0.3671 h
    assert e.checkpoint_interval_minutes == pytest.approx(interval_h * 60)
    ckpt_h = math.floor(compute_h / interval_h) * stall_s / 3600  # 9 saves
    assert interval_h == pytest.approx(0.3671, abs=1e-4)
    assert math.floor(compute_h / interval_h) == 9
    setup_h = 10 / 60
    billed = (compute_h + ckpt_h + setup_h) / (1 - (1 / 6) * (10 / 60 + interval_h / 2))
    assert e.billed_hours == pytest.approx(billed, rel=1e-12)
    assert e.cost_usd == pytest.approx(billed * price, rel=1e-12)
    assert e.preemption_hours == pytest.approx(billed - compute_h - ckpt_h - setup_h)
    assert e.expected_preemptions == pytest.approx(billed / 6)
    assert e.budget_usd == 140.0 and e.verdict.startswith("within $140")

    # FastChat-faithful: every sample padded to 2,048 tokens of compute.
    f = est.estimate(preset, work, price, mode="padded")
    assert f.compute_tokens == 3 * 70_000 * 2048 == 430_080_000
    assert f.trained_tokens == trained
    assert f.compute_hours == pytest.approx(fpt * 430_080_000 / (8 * 312e12 * 0.4) / 3600)
    assert f.cost_usd > e.cost_usd


def test_manifest_drives_tokens_and_attention_length(tmp_path):
    preset = get_preset("13b", "v1.1")
    manifest = {"tokens": {"total": 1_000_000, "assistant": 600_000}, "conversations": 1000,
                "length_histogram": {"edges": [0, 1000, 2000], "counts": [500, 500]}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    raw, src = est.load_manifest(str(tmp_path))
    work = est.workload_from_manifest(raw, preset, src)
    # token-weighted length: (500 * 500^2 + 500 * 1500^2) / (500 * 500 + 500 * 1500) = 1250
    assert work.weighted_sample_length == pytest.approx(1250)
    e = est.estimate(preset, work, 10.0, est.Assumptions(preemptions_per_hour=0))
    assert e.compute_tokens == 3_000_000
    assert e.flops_per_token == 6 * 13_015_864_320 + 12 * 40 * 5120 * (1250 + 1) / 2
    assert e.preemption_hours == 0 and e.checkpoint_interval_minutes == 60
    p = est.estimate(preset, work, 10.0, est.Assumptions(preemptions_per_hour=0), "padded")
    assert p.compute_tokens == 3 * 1000 * 2048

    # Read defensively: a manifest without token counts is a clear error.
    with pytest.raises(est.EstimateError, match="tokens.total"):
        est.workload_from_manifest({"conversations": 5}, preset, "m.json")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(est.EstimateError, match="not valid JSON"):
        est.load_manifest(str(tmp_path / "bad.json"))
    with pytest.raises(est.EstimateError, match="no manifest"):
        est.load_manifest(str(tmp_path / "nowhere"))


def test_impossible_preemption_rate_is_refused():
    preset = get_preset("7b", "v1.1")
    with pytest.raises(est.EstimateError, match="never finishes"):
        est.estimate(preset, est.reference_workload(preset), 8.0,
                     est.Assumptions(preemptions_per_hour=10, checkpoint_interval_minutes=30))


@pytest.fixture
def wide(monkeypatch):
    monkeypatch.setattr(console, "width", 250)


def test_cli_estimate_json_and_table(wide):
    runner = CliRunner()
    res = runner.invoke(app, ["cost", "--estimate", "7b", "--version", "v1.1", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["prices"]["cheapest_spot"]["spot"] == pytest.approx(8.0274)  # snapshot
    preset = get_preset("7b", "v1.1")
    e = est.estimate(preset, est.reference_workload(preset), 8.0274)
    assert d["ours"]["node_usd"] == pytest.approx(e.node_usd)
    # Must hold (issue 13): node, disk, egress and controller lines separately.
    assert set(d["bill"]) == {"node", "disk", "egress", "controller"}
    assert all(d["bill"][k] > 0 for k in d["bill"])
    assert d["ours"]["cost_usd"] == pytest.approx(sum(
        d["ours"][f"{k}_usd"] for k in ("node", "disk", "egress", "controller")))
    assert d["padded_ablation"]["cost_usd"] > d["ours"]["cost_usd"]
    sens = d["sensitivity"]["ours"]
    row = next(r for r in sens["rows"] if r["mfu"] == 0.4)
    assert row[sens["columns"][0]] == pytest.approx(d["ours"]["cost_usd"], abs=0.01)
    assert len(sens["rows"]) == 4 and len(sens["columns"]) == 3
    table = runner.invoke(app, ["cost", "--estimate", "7b", "--version", "v1.1"])
    assert table.exit_code == 0, table.output
    cost_line = next(ln for ln in table.output.splitlines() if "│ cost" in ln)
    assert f"${d['ours']['cost_usd']:,.2f}" in cost_line
    assert f"${d['padded_ablation']['cost_usd']:,.2f}" in cost_line
    assert "within $140" in table.output
    assert "padding ablation" in table.output and "equal MFU" in table.output
    assert "LMSYS 2023 as run" in table.output


def test_like_with_like_lmsys_row_verdicts_flags_and_snapshot_date():
    """Issue 13.9: the padded column assumed our MFU for the 2023 recipe, v1.5 was judged
    against $140, the on-demand minimum was a flagged GCP row, the date was an mtime."""
    runner = CliRunner()
    d = json.loads(runner.invoke(app, ["cost", "--estimate", "7b", "--version", "v1.1",
                                       "--json"]).output)
    lm = d["lmsys_2023_as_run"]
    assert lm["published_hours"] == 12.0
    # 0.168: FLOPs count attention as the causal kernel computes it, (S+1)/2 keys per
    # query (costs/flops.py); with the full S x S square it was 0.174.
    assert lm["implied_mfu_padded"] == pytest.approx(0.168, abs=0.002)
    assert lm["node_usd"]["spot_min"] == pytest.approx(12 * 8.0274, abs=0.01)
    assert d["budget_reference"] == {"usd": 140.0, "how": "LMSYS 2023 for v1.1, same data size"}
    assert not d["prices"]["cheapest_on_demand"]["flags"]
    assert not d["prices"]["cheapest_spot"]["flags"]
    assert "(snapshot 2026-11-27)" in d["price_source"]
    v15 = json.loads(runner.invoke(app, ["cost", "--estimate", "7b", "--version", "v1.5",
                                         "--json"]).output)
    ref = v15["budget_reference"]
    assert ref["usd"] == pytest.approx(140 * 125_000 / 70_000, rel=1e-3)  # 1.79x the tokens
    assert "scaled by tokens" in ref["how"] and "scaled by tokens" in v15["ours"]["verdict"]
    d13 = json.loads(runner.invoke(app, ["cost", "--estimate", "13b", "--version", "v1.1",
                                         "--json"]).output)
    assert d13["lmsys_2023_as_run"]["published_hours"] == 24.0
    assert d13["budget_reference"]["usd"] == 300.0


def test_mfu_from_a_runs_metrics_or_the_gpu_checks_json(tmp_path):
    m = tmp_path / "metrics.jsonl"
    lines = [{"step": i, "mfu": 0.9 if i == 1 else 0.31 + 0.001 * (i % 3)} for i in range(1, 41)]
    lines.insert(5, {"event": "checkpoint", "step": 5})
    m.write_text("\n".join(json.dumps(x) for x in lines) + "\n{torn")
    mfu, src = est.mfu_from_file(str(m))
    assert mfu == pytest.approx(0.311) and "median" in src  # warm-up step dropped
    g = tmp_path / "gpu_check.json"
    g.write_text(json.dumps({"gpu": "A100-SXM4-80GB", "mfu": 0.47}))
    assert est.mfu_from_file(str(g))[0] == 0.47
    runner = CliRunner()
    r = runner.invoke(app, ["cost", "--estimate", "7b", "--version", "v1.1", "--json",
                            "--mfu-from", str(g)])
    d = json.loads(r.output)
    assert d["ours"]["mfu"] == 0.47 and "mfu field" in d["assumptions"]["mfu_source"]
    bad = tmp_path / "cpu.jsonl"
    bad.write_text(json.dumps({"step": 1, "mfu": None}) + "\n")
    r = runner.invoke(app, ["cost", "--estimate", "7b", "--mfu-from", str(bad)])
    assert isinstance(r.exception, UserError) and "no 'mfu' values" in str(r.exception)
    r = runner.invoke(app, ["cost", "--estimate", "7b", "--mfu-from", str(g), "--mfu", "0.3"])
    assert isinstance(r.exception, UserError) and "not both" in str(r.exception)


@pytest.mark.parametrize("args, message", [
    (["--estimate", "7b", "--mfu", "2"], "--mfu"),
    (["--estimate", "70b"], "unknown preset"),
    (["--estimate", "tiny"], "CPU"),
    (["--estimate", "7b", "--cloud", "azure"], "--cloud"),
    (["--estimate", "7b", "--simulate", "7b"], "not both"),
    (["--estimate", "33b", "--version", "v1.1"], "no 33b"),
])
def test_cli_bad_estimate_inputs_are_user_errors(args, message):
    res = CliRunner().invoke(app, ["cost", *args])
    assert isinstance(res.exception, UserError), res.output
    assert message in str(res.exception)
