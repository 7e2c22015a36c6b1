"""`launch --dry-run` against S3 (moto server) and GCS (fake-gcs-server) with the catalog
snapshot; a real launch whose only replaced part is SkyPilot's submit call; status, logs
and cancel when the SkyPilot API server cannot be reached."""

from __future__ import annotations

import json

import yaml

from helpers.cloud_servers import free_port
from helpers.cli import keys, run_cli, upload_dataset
from vicuna_cloud.runspec import RunSpec

KNOWN_INSTANCES = {"AWS": {"p4de.24xlarge"}, "GCP": {"a2-ultragpu-8g"}}


def _dry_run(capsys, monkeypatch, bucket, data, *extra):
    return run_cli(capsys, monkeypatch, "launch", "7b", "--spot", "--bucket", bucket,
                   "--data", data, "--dry-run", *extra)


def test_dry_run_s3(s3_bucket_uri, tmp_path, capsys, monkeypatch, no_submit):
    monkeypatch.setenv("VICUNA_CLOUD_HOME", str(tmp_path / "home"))  # an empty run index
    data, sha = upload_dataset(s3_bucket_uri)
    before = keys(s3_bucket_uri)
    r = _dry_run(capsys, monkeypatch, s3_bucket_uri, data, "--json", "--max-cost", "140")
    assert r.code == 0, r.err
    s = json.loads(r.out)
    assert s["dry_run"] is True and s["version"] == "v1.5"
    assert s["dataset_sha256"] == sha and s["dataset"] == data
    opt = s["optimizer"]
    assert opt["use_spot"] is True and opt["nodes"] == 1
    assert opt["instance_type"] in KNOWN_INSTANCES[opt["cloud"]]
    assert opt["accelerators"] == "A100-80GB:8"
    assert 1.0 < opt["price_per_hour"] < 40.0  # spot 8xA100-80GB, catalog snapshot
    assert s["run_uri"] == f"{s3_bucket_uri}/runs/{s['run_id']}/run.json"
    # Nothing submitted, nothing written to the bucket, nothing recorded locally.
    assert no_submit == []
    assert keys(s3_bucket_uri) == before
    r = run_cli(capsys, monkeypatch, "status", "--json")
    assert json.loads(r.out) == []


def test_dry_run_gcs_on_gcp(gcs_bucket_uri, capsys, monkeypatch, no_submit, fake_gcp_adc):
    data, sha = upload_dataset(gcs_bucket_uri)
    before = keys(gcs_bucket_uri)
    r = _dry_run(capsys, monkeypatch, gcs_bucket_uri, data, "--cloud", "gcp", "--json")
    assert r.code == 0, r.err
    opt = json.loads(r.out)["optimizer"]
    assert opt["cloud"] == "GCP" and opt["instance_type"] == "a2-ultragpu-8g"
    assert opt["region"] and opt["price_per_hour"] > 0
    assert keys(gcs_bucket_uri) == before and no_submit == []


def test_dry_run_table_and_out_dir(s3_bucket_uri, tmp_path, capsys, monkeypatch, no_submit):
    import sky

    data, sha = upload_dataset(s3_bucket_uri)
    out = tmp_path / "dry"
    r = run_cli(capsys, monkeypatch, "launch", "33b", "--bucket", s3_bucket_uri, "--data", data,
                "--dry-run", "--out", str(out), "--name", "my-33b", "--run-id", "run-33b-test")
    assert r.code == 0, r.err
    for word in ("Dry run", "nothing submitted", "$/hour", "run-33b-test", "2 x A100-80GB:8"):
        assert word in r.out
    spec = RunSpec.from_json((out / "run.json").read_text())
    assert spec.run_id == "run-33b-test" and spec.dataset.sha256 == sha
    assert spec.resources.nodes == 2 and spec.hyper.learning_rate == 2e-5
    cfg = yaml.safe_load((out / "task.yaml").read_text())
    task = sky.Task.from_yaml_config(cfg)
    assert task.name == "my-33b" and task.num_nodes == 2
    assert not any(k.startswith("runs/") for k in keys(s3_bucket_uri))


def test_launch_writes_spec_then_submits(s3_bucket_uri, capsys, monkeypatch):
    """The submit call is replaced: a real sky.jobs.launch needs a SkyPilot API server with
    cloud credentials, which cannot run here. Everything before it is real."""
    import sky

    data, _ = upload_dataset(s3_bucket_uri)
    seen = {}

    def fake_launch(task, name=None, **kw):
        seen["task"], seen["name"] = task, name
        seen["spec_in_bucket"] = any(k.endswith("/run.json") for k in keys(s3_bucket_uri))
        return "request-1"

    def fake_stream_and_get(request_id, *a, **kw):
        assert request_id == "request-1"
        return [42], None

    monkeypatch.setattr(sky.jobs, "launch", fake_launch)
    monkeypatch.setattr(sky, "stream_and_get", fake_stream_and_get)
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_test")
    r = run_cli(capsys, monkeypatch, "launch", "7b", "--bucket", s3_bucket_uri, "--data", data,
                "--run-id", "launch-test-1", "--json", "--allow-dirty")
    assert r.code == 0, r.err
    s = json.loads(r.out)
    assert s["job_id"] == 42 and s["run_id"] == "launch-test-1"
    assert seen["spec_in_bucket"], "run.json must be in the bucket before the job is submitted"
    task = seen["task"]
    assert seen["name"] == "launch-test-1"
    assert task.envs["VICUNA_RUN_URI"] == f"{s3_bucket_uri}/runs/launch-test-1/run.json"
    assert task.secrets["HF_TOKEN"].get_secret_value() == "hf_fake_token_for_test"
    from pathlib import Path

    assert Path(task.workdir, "pyproject.toml").is_file()  # this tree is what setup installs
    assert Path(task.workdir, "train").is_dir()
    from vicuna_cloud.storage import open_bucket

    b = open_bucket(s3_bucket_uri)
    spec = RunSpec.from_json(b.get_bytes("runs/launch-test-1/run.json"))
    assert spec.code_version == task.envs["VICUNA_CODE_VERSION"]
    for k in keys(s3_bucket_uri):
        assert b"hf_fake_token_for_test" not in b.get_bytes(k)
    assert "hf_fake_token_for_test" not in r.out + r.err
    # The local index now knows the run: status finds it by id.
    from vicuna_cloud import run_index as index

    rec = index.lookup("launch-test-1")
    assert rec.job_id == 42 and rec.bucket_uri == s3_bucket_uri
    # Launching the same run id with a different spec is refused; nothing is overwritten.
    r = run_cli(capsys, monkeypatch, "launch", "7b", "--bucket", s3_bucket_uri, "--data", data,
                "--run-id", "launch-test-1", "--no-spot", "--nodes", "2", "--allow-dirty")
    assert r.code == 2 and "already holds a different run spec" in r.err


def test_status_without_api_server_shows_the_bucket(s3_bucket_uri, capsys, monkeypatch):
    from vicuna_cloud.ledger import Segment
    from vicuna_cloud import run_index as index
    from vicuna_cloud.storage import open_bucket

    monkeypatch.setenv("SKYPILOT_API_SERVER_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    b = open_bucket(s3_bucket_uri)
    rid = "status-test-1"
    b.put_bytes(f"runs/{rid}/run.json", b"{}")
    b.put_bytes(f"runs/{rid}/metrics.jsonl",
                b'{"step": 9, "loss": 1.5}\n{"step": 10, "loss": 1.25, "total_steps": 30}\n{"st')
    seg = Segment(segment_id="0001", run_id=rid, cloud="aws", region="us-east-1", zone=None,
                  cluster_name=None, instance_type="p4de.24xlarge", accelerators="A100-80GB:8",
                  nodes=1, use_spot=True, price_per_hour=8.0, price_source="catalog",
                  start_time=1.0, end_time=2.0, end_reason="budget", last_step=10,
                  last_checkpoint_step=10)
    b.put_bytes(f"runs/{rid}/ledger/0001.json", seg.to_json().encode())
    b.put_bytes(f"runs/{rid}/checkpoints/step-00000010/COMMIT.json", b"{}")
    index.record(index.RunRecord(run_id=rid, bucket_uri=s3_bucket_uri, backend="skypilot",
                                 job_id=7))
    r = run_cli(capsys, monkeypatch, "status", rid, "--json")
    assert r.code == 0, r.err
    row = json.loads(r.out)
    assert "Could not connect" in row["api_error"]
    assert row["state"] == "unknown (API server unreachable); stopped: budget"
    assert row["phase"] == "stopped: budget" and row["checkpoints"] == 1
    assert row["step"] == 10 and row["loss"] == 1.25
    r = run_cli(capsys, monkeypatch, "status", rid)
    assert r.code == 0 and "unreachable" in r.err and "stopped: budget" in r.out
    # logs and cancel need the server: one-line error, exit 2.
    for cmd in ("logs", "cancel"):
        r = run_cli(capsys, monkeypatch, cmd, rid)
        assert r.code == 2 and r.err.startswith("error: SkyPilot API server unreachable")
        assert len(r.err.strip().splitlines()) == 1


def test_status_reads_progress_from_a_bucket_given_by_flag(s3_bucket_uri, capsys, monkeypatch):
    from vicuna_cloud.storage import open_bucket

    monkeypatch.setenv("SKYPILOT_API_SERVER_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    b = open_bucket(s3_bucket_uri)
    b.put_bytes("runs/elsewhere-1/run.json", b"{}")
    b.put_bytes("runs/elsewhere-1/metrics.jsonl", b'{"step": 3, "loss": 2.0}\n')
    r = run_cli(capsys, monkeypatch, "status", "elsewhere-1", "--bucket", s3_bucket_uri,
                "--json")
    assert r.code == 0, r.err
    row = json.loads(r.out)
    assert row["step"] == 3 and row["loss"] == 2.0 and row["spend_usd"] == 0.0
    # No job id here, so status asks the server for a job named like the run: unreachable.
    assert row["state"] == "unknown (API server unreachable)"


def test_status_progress_when_metrics_turn_unreadable(tmp_path):
    """A read that fails after the listing (a storage outage mid-status) is reported in the
    progress column, not raised. Edge fault injection: an outage cannot be caused on demand."""
    from vicuna_cloud.run_progress import read_progress
    from vicuna_cloud.storage import StorageError
    from vicuna_cloud.storage.local import LocalBucket
    from vicuna_cloud.storage.uri import parse_bucket_uri

    class OutageOnGet(LocalBucket):
        def get_bytes(self, key):
            raise StorageError("simulated outage\nsecond line")

    b = OutageOnGet(parse_bucket_uri(str(tmp_path)))
    b.put_bytes("runs/r1/run.json", b"{}")
    b.put_bytes("runs/r1/metrics.jsonl", b'{"step": 3}\n')
    prog = read_progress(b, "r1")
    assert prog.summary == "bucket unreadable: simulated outage"


def test_dry_run_with_no_matching_instance_is_a_clear_error(s3_bucket_uri, capsys, monkeypatch,
                                                            no_submit):
    data, _ = upload_dataset(s3_bucket_uri)
    before = keys(s3_bucket_uri)
    r = run_cli(capsys, monkeypatch, "launch", "7b", "--gpus", "A100-80GB:3", "--bucket",
                s3_bucket_uri, "--data", data, "--dry-run")
    assert r.code == 2, r.err
    assert r.err.startswith("error: ") and len(r.err.strip().splitlines()) == 1
    assert "--gpus" in r.err
    assert keys(s3_bucket_uri) == before and no_submit == []


def test_dry_run_on_a_fresh_machine(tmp_path, capsys, monkeypatch, no_submit):
    """No bucket, no dataset, no credentials: the dry run still renders, checks the task and
    asks the optimizer, and says what it could not check (README quickstart)."""
    with monkeypatch.context() as m:
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                    "AWS_PROFILE", "GOOGLE_APPLICATION_CREDENTIALS"):
            m.delenv(var, raising=False)
        m.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        m.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
        m.setenv("AWS_EC2_METADATA_DISABLED", "true")
        m.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
        m.setenv("NO_GCE_CHECK", "True")
        r = run_cli(capsys, m, "launch", "7b", "--spot", "--dry-run", "--json")
    assert r.code == 0, r.err
    s = json.loads(r.out)
    assert set(s["not_checked"]) == {"bucket", "dataset", "credentials"}
    assert s["optimizer"]["cloud"] in KNOWN_INSTANCES and s["optimizer"]["price_per_hour"] > 0
    assert no_submit == []


def test_dry_run_out_that_is_a_file_is_a_one_line_error(tmp_path, capsys, monkeypatch, no_submit):
    target = tmp_path / "not-a-dir"
    target.write_text("keep me")
    r = run_cli(capsys, monkeypatch, "launch", "7b", "--dry-run", "--out", str(target))
    assert r.code == 2, (r.code, r.err)
    assert r.err.startswith("error: --out") and len(r.err.strip().splitlines()) == 1
    assert target.read_text() == "keep me" and no_submit == []


def test_submitted_job_is_reported_even_when_the_local_index_cannot_be_written(
        s3_bucket_uri, tmp_path, capsys, monkeypatch):
    """sky.jobs.launch is replaced (a real submit needs an API server with cloud
    credentials); the index home is a file, so recording the run fails after the submit."""
    import sky

    data, _ = upload_dataset(s3_bucket_uri)
    monkeypatch.setattr(sky.jobs, "launch", lambda task, name=None, **kw: "request-2")
    monkeypatch.setattr(sky, "stream_and_get", lambda request_id, *a, **kw: ([43], None))
    home = tmp_path / "home-is-a-file"
    home.write_text("")
    monkeypatch.setenv("VICUNA_CLOUD_HOME", str(home))
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_test")  # 7b's base is gated
    r = run_cli(capsys, monkeypatch, "launch", "7b", "--bucket", s3_bucket_uri, "--data", data,
                "--run-id", "launch-noindex-1", "--json", "--allow-dirty")
    assert r.code == 0, r.err
    assert json.loads(r.out)["job_id"] == 43
    assert "cannot record the run" in r.err and "Traceback" not in r.err
