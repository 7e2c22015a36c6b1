"""`vicuna-cloud status RUN`: the detail view, its --json twin, agreement with `cost RUN`,
and the list view at 80 columns."""

from __future__ import annotations

import json

import pytest

from helpers.cli import run_cli
from helpers.fake_run import write_fake_run
from vicuna_cloud import run_index
from vicuna_cloud.sdk.run_detail import run_detail


@pytest.fixture
def no_api(monkeypatch):
    """No SkyPilot API server: status must still answer from the bucket."""
    from helpers.cloud_servers import free_port

    monkeypatch.setenv("SKYPILOT_API_SERVER_ENDPOINT", f"http://127.0.0.1:{free_port()}")


def test_status_json_and_cost_json_agree_on_steps_recoveries_and_spend(
        local_bucket_uri, capsys, monkeypatch, no_api):
    write_fake_run(local_bucket_uri, "vicuna-agree-run")
    args = ("vicuna-agree-run", "--bucket", local_bucket_uri, "--json")
    st = run_cli(capsys, monkeypatch, "status", *args)
    co = run_cli(capsys, monkeypatch, "cost", *args)
    assert st.code == 0 and co.code == 0, (st.err, co.err)
    s, c = json.loads(st.out), json.loads(co.out)
    assert (s["step"], s["total_steps"]) == (c["step"], c["total_steps"]) == (20, 20)
    assert s["recoveries"] == c["recoveries"] == 1
    assert s["spend_usd"] == c["spend_usd"] and s["spend_usd"] > 0
    assert s["projected_total_usd"] == c["projected_total_usd"]
    # As cost RUN and the trainer's log count them: steps trained, attempt numbers.
    assert [g["steps"] for g in s["segments"]] == ["1-12", "11-20"]
    assert [g["index"] for g in s["segments"]] == [seg["attempt"] for seg in c["segments"]]
    assert [g["end"] for g in s["segments"]] == ["preempted", "completed"]
    assert s["phase"] == "completed" and s["eta_seconds"] is None
    assert s["eval_loss"] == pytest.approx(3.2 * 2.718281828 ** (-20 / 9) + 0.7, rel=1e-6)


def test_status_of_a_running_run_has_eta_heartbeat_and_projection(local_bucket_uri, no_api):
    spec, clock = write_fake_run(local_bucket_uri, "vicuna-live-run", finish=False)
    d = run_detail("vicuna-live-run", local_bucket_uri, now=clock() + 2)
    assert d.phase == "training" and d.step == 20 - 0  # all 20 steps logged, no end yet
    assert d.recoveries == 1 and d.heartbeat_age_seconds == pytest.approx(2.0, abs=0.01)
    assert d.projected_total_usd is not None and d.budget_usd == 5.0


def test_status_detail_table_shows_every_field(local_bucket_uri, capsys, monkeypatch, no_api):
    write_fake_run(local_bucket_uri, "vicuna-table-run")
    r = run_cli(capsys, monkeypatch, "status", "vicuna-table-run", "--bucket", local_bucket_uri)
    assert r.code == 0, r.err
    for label in ("phase", "step", "loss", "eval loss", "tokens/s", "ETA", "spend", "budget",
                  "recoveries", "segments", "last heartbeat"):
        assert f" {label} " in " " + r.out.replace("\n", " ").replace("│", " "), label
    assert "20 / 20 (100%)" in r.out and "projected" in r.out


def test_status_list_fits_80_columns(local_bucket_uri, tmp_path, capsys, monkeypatch, no_api):
    monkeypatch.setenv("VICUNA_CLOUD_HOME", str(tmp_path / "home"))  # only these runs listed
    for i in range(3):
        rid = f"vicuna-a-very-long-run-identifier-20261201-1015{i:02d}"
        write_fake_run(local_bucket_uri, rid)
        run_index.record(run_index.RunRecord(run_id=rid, bucket_uri=local_bucket_uri,
                                             backend="local"))
    r = run_cli(capsys, monkeypatch, "status", width=320)  # piped: the wide list has the bucket
    assert r.code == 0, r.err
    assert local_bucket_uri in r.out and "vicuna-a-very-long-run-identifier-20261201-101502" in r.out
    r = run_cli(capsys, monkeypatch, "status", width=80)  # an 80-column terminal
    lines = [ln for ln in r.out.splitlines() if "vicuna-a-very" in ln]
    assert len(lines) == 3, r.out  # one line per run: ids ellipsized, never folded
    assert all(len(ln) <= 80 for ln in r.out.splitlines()), r.out
    assert all("step 20/20" in ln for ln in lines), r.out
