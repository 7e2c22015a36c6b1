"""The node path's rules, each small: what the node installs, which exit codes SkyPilot
retries, where the nodes run relative to the bucket, what launch refuses before paying,
and how a node without skypilot prices its ledger segment."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from helpers.cli import keys, run_cli, upload_dataset

REPO = Path(__file__).resolve().parents[1]


# --- what the node installs ---------------------------------------------------------------
def _third_party_imports() -> set[str]:
    """Top-level modules that `python -m train` (train/__main__.py) reaches, through train/
    and vicuna_cloud, imports inside functions included (serving and export tools that
    live in train/ but are not the training entry point are not followed)."""
    seen, todo, third = set(), ["train", "train.__main__"], set()
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        base = REPO.joinpath(*mod.split("."))
        path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        if not path.is_file():
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for n in names:
                top = n.split(".")[0]
                if top in ("train", "vicuna_cloud"):
                    parts = n.split(".")
                    todo += [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
                    if isinstance(node, ast.ImportFrom):
                        todo += [f"{n}.{a.name}" for a in node.names]
                elif top not in sys.stdlib_module_names:
                    third.add(top)
    return third


def _requirements() -> dict[str, str]:
    out = {}
    for line in (REPO / "train" / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[name.lower().replace("_", "-")] = version
    return out


def test_node_requirements_cover_the_trainers_imports_and_nothing_of_the_control_plane():
    reqs = _requirements()
    dists = metadata.packages_distributions()
    # sky: imported lazily by vicuna_cloud.pricing only, which a node replaces with the
    # price table in run.json; wandb: installed by setup when WANDB_API_KEY is given.
    optional = {"sky", "wandb"}
    for mod in sorted(_third_party_imports() - optional):
        names = {d.lower().replace("_", "-") for d in dists.get(mod, [mod])}
        assert names & set(reqs), f"train imports {mod} ({names}); add it to train/requirements.txt"
    assert not {"skypilot", "awscli", "google-cloud-sdk"} & set(reqs)
    # The pins are what this test suite runs with (torch's local +cpu label aside).
    for name, version in reqs.items():
        assert metadata.version(name).split("+")[0] == version, name


# --- exit codes ---------------------------------------------------------------------------
def test_transient_faults_exit_69_and_bugs_exit_1():
    import torch.distributed as dist

    from train.__main__ import exit_code_for
    from vicuna_cloud.storage import BucketAccessError, StorageError

    assert exit_code_for(StorageError("503 after retries")) == 69
    assert exit_code_for(ConnectionResetError("peer")) == 69
    assert exit_code_for(dist.DistNetworkError("Connection reset by peer")) == 69
    assert exit_code_for(RuntimeError("NCCL error: unhandled system error")) == 69
    assert exit_code_for(BucketAccessError("AccessDenied")) == 1  # credentials: not by retrying
    assert exit_code_for(RuntimeError("CUDA out of memory")) == 1
    assert exit_code_for(KeyError("bug")) == 1


@pytest.mark.slow  # torchrun starts the trainer
def test_the_trainer_exits_69_through_torchrun_on_a_storage_outage(tmp_path):
    """A run spec on an S3 endpoint where nothing listens: storage errors after retries,
    exit 69 from the run script (a transient fault: recover_on_exit_codes)."""
    import os

    from vicuna_cloud.skypilot.run_script import run_script
    from helpers.cloud_servers import free_port

    venv_bin = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{venv_bin}:/usr/bin:/bin", "HOME": str(tmp_path),
           "TMPDIR": str(tmp_path), "SKYPILOT_NODE_IPS": "127.0.0.1",
           "SKYPILOT_NODE_RANK": "0", "SKYPILOT_NUM_GPUS_PER_NODE": "1",
           "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{free_port()}",
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "VICUNA_STORAGE_RETRY_DEADLINE_S": "2", "VICUNA_RUN_URI": "s3://nobody/r/run.json",
           "PYTHONPATH": str(REPO)}
    proc = subprocess.run(["bash", "-c", run_script()], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=180)
    # load_spec turns an unreadable spec into a config error today (issue 14 makes storage
    # errors at start transient): either way, never 1 and never retried as an error.
    assert proc.returncode in (69, 78), proc.stderr[-2000:]


# --- locality ------------------------------------------------------------------------------
def test_the_nodes_follow_the_bucket_and_crossing_is_explicit(tmp_path, monkeypatch):
    from vicuna_cloud.skypilot.locality import LocalityError, resolve

    p = resolve("s3://b/x", None, None, look_up_region=False)
    assert (p.cloud, p.region, p.warnings) == ("aws", None, [])
    assert resolve("gs://b", None, None, look_up_region=False).cloud == "gcp"
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    with pytest.raises(LocalityError, match="ships only credential files"):
        resolve("s3://b", "gcp", None, look_up_region=False)
    creds = tmp_path / "credentials"
    creds.write_text("[default]\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    p = resolve("s3://b", "any", None, look_up_region=False)
    assert p.cloud == "any" and "crosses clouds" in p.warnings[0]
    with pytest.raises(LocalityError, match="needs one cloud"):
        resolve("s3://b", "any", "us-east-1", look_up_region=False)


def test_launch_pins_the_region_of_the_bucket(s3_server, capsys, monkeypatch, no_submit):
    bucket = "vc-west-" + __import__("uuid").uuid4().hex[:8]
    s3_server.client().create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
    uri = f"s3://{bucket}"
    data, _ = upload_dataset(uri)
    r = run_cli(capsys, monkeypatch, "launch", "7b", "--bucket", uri, "--data", data,
                "--dry-run", "--json")
    assert r.code == 0, r.err
    s = json.loads(r.out)
    assert s["placement"] == {"cloud": "aws", "region": "us-west-2", "bucket_cloud": "aws",
                              "bucket_region": "us-west-2", "notes": []}
    assert s["optimizer"]["region"] == "us-west-2"
    r = run_cli(capsys, monkeypatch, "launch", "7b", "--bucket", uri, "--data", data,
                "--dry-run", "--json", "--region", "any")
    assert json.loads(r.out)["placement"]["region"] is None
    assert "outside the bucket's region us-west-2" in r.err


def test_multi_node_asks_for_efa_on_aws_and_gcp_candidates_survive():
    from vicuna_cloud.sdk import render_task
    from vicuna_cloud.skypilot.optimizer import choose
    from vicuna_cloud.skypilot.task import validate_task_config

    cfg = yaml.safe_load(render_task("33b", cloud="any"))
    assert cfg["resources"]["any_of"] == [{"cloud": "aws", "network_tier": "best"},
                                          {"cloud": "gcp"}]
    task = validate_task_config(cfg)
    assert {str(r.network_tier) for r in task.resources} == {"NetworkTier.BEST", "None"}
    assert choose(validate_task_config(cfg), clouds=("gcp",)).instance_type == "a2-ultragpu-8g"
    assert choose(validate_task_config(cfg), clouds=("aws",)).instance_type == "p4de.24xlarge"
    one = yaml.safe_load(render_task("7b"))
    assert "network_tier" not in one["resources"]


# --- what launch refuses before paying ------------------------------------------------------
def test_a_gated_base_without_hf_token_is_refused_before_anything_is_written(
        s3_bucket_uri, capsys, monkeypatch, no_submit):
    data, _ = upload_dataset(s3_bucket_uri)
    before = keys(s3_bucket_uri)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    r = run_cli(capsys, monkeypatch, "launch", "7b", "--bucket", s3_bucket_uri, "--data", data,
                "--allow-dirty")
    assert r.code == 2 and "meta-llama/Llama-2-7b-hf is gated" in r.err and "HF_TOKEN" in r.err
    assert len(r.err.strip().splitlines()) == 1
    assert keys(s3_bucket_uri) == before and no_submit == []
    r = run_cli(capsys, monkeypatch, "launch", "7b", "--bucket", s3_bucket_uri, "--data", data,
                "--dry-run", "--json")
    assert r.code == 0 and any("gated" in w for w in json.loads(r.out)["warnings"])


def test_a_dirty_tree_is_recorded_and_refused_without_allow_dirty(tmp_path, s3_bucket_uri,
                                                                  capsys, monkeypatch,
                                                                  no_submit):
    from vicuna_cloud import run_store as runs

    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "a.txt").write_text("1")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    clean = runs.git_state(str(repo))
    assert not clean.dirty and runs.code_version(str(repo)).endswith(f"+g{clean.commit}")
    (repo / "a.txt").write_text("2")
    (repo / "new.txt").write_text("n")
    dirty = runs.git_state(str(repo))
    assert dirty.dirty and dirty.summary == "1 modified, 1 untracked"
    v = runs.code_version(str(repo))
    assert v == f"0.1.0+g{clean.commit}.dirty.{dirty.fingerprint}"
    (repo / "a.txt").write_text("3")
    assert runs.git_state(str(repo)).fingerprint != dirty.fingerprint  # other changes
    # launch on a dirty tree: refused (one line), unless --allow-dirty.
    monkeypatch.setattr(runs, "git_state", lambda root=None: dirty)  # this checkout's state
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_test")
    data, _ = upload_dataset(s3_bucket_uri)
    r = run_cli(capsys, monkeypatch, "launch", "7b", "--bucket", s3_bucket_uri, "--data", data)
    assert r.code == 2 and "--allow-dirty" in r.err and "1 modified, 1 untracked" in r.err
    assert no_submit == []


# --- a node without skypilot prices its segment from run.json ---------------------------------
def test_a_segment_is_priced_from_the_launch_time_table(tmp_path):
    from vicuna_cloud.ledger import LedgerRecorder
    from vicuna_cloud.pricing import table_rows
    from vicuna_cloud.runspec import NodePriceRow
    from vicuna_cloud.storage import open_bucket
    from helpers.train import tiny_spec

    rows = table_rows("A100-80GB:8", "aws")
    assert rows and all(r["instance_type"] == "p4de.24xlarge" for r in rows)
    spec, _ = tiny_spec(tmp_path)
    spec = spec.model_copy(update={
        "resources": spec.resources.model_copy(update={"cloud": "aws", "use_spot": True,
                                                       "accelerators": "A100-80GB:8"}),
        "budget": spec.budget.model_copy(update={"node_prices": [NodePriceRow(**r)
                                                                 for r in rows]})})
    region = rows[0]["region"]
    env = {"SKYPILOT_CLUSTER_INFO": json.dumps({"cloud": "AWS", "region": region,
                                                "zone": "nowhere-1z", "cluster_name": "c"})}
    rec = LedgerRecorder(open_bucket(spec.bucket_uri), spec, env=env, background=False)
    rec.begin(0, total_steps=4)
    seg = rec.segment
    cheapest = min(r["spot"] for r in rows if r["region"] == region)
    assert seg.price_per_hour == cheapest and "run.json launch-time" in seg.price_source
    rec.end("completed", step=4, tokens=0, last_checkpoint_step=4)
