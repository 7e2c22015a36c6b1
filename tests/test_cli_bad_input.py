"""Bad input: a one-line error that says what is wrong and how to fix it, exit code 2,
nothing submitted (sky.jobs.launch is a sentinel) and nothing written to the bucket."""

from __future__ import annotations

import pytest

from helpers.cli import keys, run_cli, upload_dataset


def _assert_one_line_error(r, *words):
    assert r.code == 2, (r.code, r.out, r.err)
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in r.err + r.out
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.fixture
def s3_with_data(s3_bucket_uri):
    data, _ = upload_dataset(s3_bucket_uri)
    return s3_bucket_uri, data, keys(s3_bucket_uri)


CASES = {
    "unknown preset": (["launch", "70b"], ["unknown preset '70b'", "vicuna-cloud presets"]),
    "unknown version": (["launch", "7b", "--version", "v2"], ["unknown version 'v2'", "v1.5"]),
    "version without that size": (["launch", "33b", "--version", "v1.5"],
                                  ["no 33b model", "v1.5 sizes"]),
    "nodes 0": (["launch", "7b", "--nodes", "0"], ["--nodes must be at least 1"]),
    "bad gpus": (["launch", "7b", "--gpus", "A100;reboot"], ["--gpus", "NAME:COUNT"]),
    "unknown gpu": (["launch", "7b", "--gpus", "TPU9:8"], ["unknown accelerator 'TPU9'"]),
    "shell name": (["launch", "7b", "--name", "x; rm -rf ~"], ["--name", "letters, digits"]),
    "shell name subst": (["launch", "7b", "--name", "$(reboot)"], ["--name"]),
    "bad run id": (["launch", "7b", "--run-id", "Run_1`id`"], ["--run-id", "lowercase"]),
    "run id with newline": (["launch", "7b", "--run-id", "run-1\n"], ["--run-id"]),
    "bad cloud": (["launch", "7b", "--cloud", "azure"], ["unknown --cloud 'azure'"]),
    "negative max cost": (["launch", "7b", "--max-cost", "-5"], ["--max-cost must be a positive number"]),
    "malformed bucket": (["launch", "7b", "--bucket", "s3://Bad_Bucket!"],
                         ["malformed bucket URI", "s3://my-bucket"]),
    "unsupported scheme": (["launch", "7b", "--bucket", "ftp://host/x"],
                           ["unsupported bucket URI scheme 'ftp'"]),
    "local dir for cloud": (["launch", "7b", "--bucket", "/tmp/somewhere"],
                            ["local directory", "--local"]),
    "no bucket": (["launch", "7b"], ["--bucket is required"]),
    "bad base model": (["launch", "7b", "--base-model", "a b;c"], ["--base-model"]),
    "base model with newline": (["launch", "7b", "--base-model", "org/name\n"], ["--base-model"]),
    "render bad preset": (["render", "7x"], ["unknown preset '7x'"]),
    "render shell name": (["render", "7b", "--name", "a|b"], ["--name"]),
    "render nodes 0": (["render", "7b", "--nodes", "0"], ["--nodes must be at least 1"]),
    "status unknown run": (["status", "never-launched"], ["unknown run", "--bucket"]),
    "status not a run id": (["status", "../../etc"], ["is not a run id"]),
    "cancel unknown run": (["cancel", "never-launched"], ["unknown run"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_without_bucket(case, capsys, monkeypatch, no_submit):
    args, words = CASES[case]
    _assert_one_line_error(run_cli(capsys, monkeypatch, *args), *words)
    assert no_submit == []


def test_bad_inputs_leave_the_bucket_untouched(s3_with_data, capsys, monkeypatch, no_submit):
    bucket, data, before = s3_with_data
    cases = [
        (["--nodes", "0"], ["--nodes"]),
        (["--name", "x`id`"], ["--name"]),
        (["--version", "v9"], ["unknown version"]),
        (["--max-cost", "0"], ["--max-cost"]),
    ]
    for extra, words in cases:
        r = run_cli(capsys, monkeypatch, "launch", "7b", "--bucket", bucket, "--data", data,
                    *extra)
        _assert_one_line_error(r, *words)
    assert keys(bucket) == before and no_submit == []


def test_missing_data(s3_with_data, capsys, monkeypatch, no_submit):
    bucket, data, before = s3_with_data
    r = run_cli(capsys, monkeypatch, "launch", "7b", "--bucket", bucket)
    _assert_one_line_error(r, "--data is required", "vicuna-cloud data upload")
    r = run_cli(capsys, monkeypatch, "launch", "7b", "--bucket", bucket,
                "--data", f"{bucket}/datasets/nothing-here")
    _assert_one_line_error(r, "holds no train.jsonl", "data prepare")
    from vicuna_cloud.storage import open_bucket

    b = open_bucket(bucket)
    b.put_bytes("datasets/damaged/train.jsonl", b"{}\n")
    b.put_bytes("datasets/damaged/manifest.json", b'{"output": {"sha256": "not-a-sha"}}')
    before = keys(bucket)
    r = run_cli(capsys, monkeypatch, "launch", "7b", "--bucket", bucket,
                "--data", f"{bucket}/datasets/damaged")
    _assert_one_line_error(r, "is not 64 hex characters")
    assert keys(bucket) == before and no_submit == []


def test_damaged_run_spec_of_the_run_id(s3_with_data, capsys, monkeypatch, no_submit):
    bucket, data, _ = s3_with_data
    from vicuna_cloud.storage import open_bucket

    b = open_bucket(bucket)
    b.put_bytes("runs/damaged-run/run.json", b'{"run_id": "damaged-run", "torn')
    before = keys(bucket)
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_test")  # past the gated-model check
    r = run_cli(capsys, monkeypatch, "launch", "7b", "--bucket", bucket, "--data", data,
                "--run-id", "damaged-run", "--allow-dirty")
    _assert_one_line_error(r, "runs/damaged-run/run.json", "no readable run spec", "--run-id")
    assert keys(bucket) == before and no_submit == []
    assert b.get_bytes("runs/damaged-run/run.json") == b'{"run_id": "damaged-run", "torn'


def test_unreachable_bucket(s3_server, capsys, monkeypatch, no_submit):
    r = run_cli(capsys, monkeypatch, "launch", "7b", "--bucket", "s3://no-such-bucket-vc/x",
                "--data", "s3://no-such-bucket-vc/datasets/x")
    _assert_one_line_error(r, "--bucket s3://no-such-bucket-vc/x")
    assert no_submit == []


def test_missing_cloud_credentials(s3_with_data, tmp_path, capsys, monkeypatch, no_submit):
    bucket, data, before = s3_with_data
    with monkeypatch.context() as m:
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                    "AWS_PROFILE", "GOOGLE_APPLICATION_CREDENTIALS"):
            m.delenv(var, raising=False)
        empty = tmp_path / "empty"
        empty.write_text("")
        m.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
        m.setenv("AWS_CONFIG_FILE", str(empty))
        m.setenv("AWS_EC2_METADATA_DISABLED", "true")
        m.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
        m.setenv("HOME", str(tmp_path))
        m.setenv("NO_GCE_CHECK", "True")  # this machine is no GCE VM: skip the probe
        r = run_cli(capsys, m, "launch", "7b", "--cloud", "any", "--bucket", bucket,
                    "--data", data)
        _assert_one_line_error(r, "no AWS or GCP credentials", "aws configure", "gcloud auth")
        r = run_cli(capsys, m, "launch", "7b", "--bucket", bucket, "--data", data)
        _assert_one_line_error(r, "no AWS credentials", "aws configure")  # the bucket's cloud
        r = run_cli(capsys, m, "launch", "7b", "--cloud", "gcp", "--bucket", bucket,
                    "--data", data)
        _assert_one_line_error(r, "no GCP credentials", "gcloud auth application-default login")
    assert keys(bucket) == before and no_submit == []


def test_export_finds_a_cloud_run_by_id_through_the_index(s3_bucket_uri, tmp_path, capsys,
                                                          monkeypatch):
    """README step 4: `export <run-id>` after a cloud launch looks in that run's bucket."""
    from vicuna_cloud.recipes import get_preset
    from vicuna_cloud.run_store import spec_from_preset, write_run_spec
    from vicuna_cloud import run_index as index
    from vicuna_cloud.storage import open_bucket

    spec = spec_from_preset(get_preset("7b"), run_id="export-index-1",
                            dataset_uri=f"{s3_bucket_uri}/datasets/x", dataset_sha256=None,
                            bucket_uri=s3_bucket_uri)
    write_run_spec(open_bucket(s3_bucket_uri), spec)
    index.record(index.RunRecord(run_id="export-index-1", bucket_uri=s3_bucket_uri,
                                 backend="skypilot", job_id=3))
    r = run_cli(capsys, monkeypatch, "export", "export-index-1", "--out", str(tmp_path / "m"))
    _assert_one_line_error(r, "run export-index-1 has no committed checkpoint yet")
