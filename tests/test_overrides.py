"""Run-spec overrides (`--set KEY=VALUE`, `--config FILE.yaml`) for launch, launch --local
and render: checked by the run spec's own models, recorded in run.json, shown by status,
and a relaunch with other values refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers.cli import run_cli
from vicuna_cloud import bucket_keys
from vicuna_cloud.errors import ConfigError
from vicuna_cloud.recipes import get_preset
from vicuna_cloud.run_store import RunSpecConflict, spec_from_preset, write_run_spec
from vicuna_cloud.runspec import CheckpointPolicy, RunSpec
from vicuna_cloud.sdk import overrides
from vicuna_cloud.storage import open_bucket


def _resolve(sets=(), config=None, preset="7b"):
    return overrides.resolve(sets, config, hyper=get_preset(preset).hyper)


# --- parsing and validation ---------------------------------------------------------------
def test_values_are_coerced_by_the_model_and_later_set_wins(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("hyper:\n  learning_rate: 1e-5\n  epochs: 2\n  gradient_checkpointing: no\n"
                   "checkpoint:\n  keep: 3\n")
    ov, models = _resolve(["hyper.epochs=1.5", "hyper.global_batch_size=64",
                           "hyper.batching=padded", "hyper.global_batch_size=32"], str(cfg))
    h = models["hyper"]
    # PyYAML reads 1e-5 as a string; pydantic makes it a float, as it would in run.json.
    assert h.learning_rate == 1e-5 and isinstance(h.learning_rate, float)
    assert h.epochs == 1.5 and h.global_batch_size == 32 and h.batching == "padded"
    assert h.gradient_checkpointing is False and models["checkpoint"].keep == 3
    assert h.max_length == get_preset("7b").hyper.max_length  # untouched keys stay the preset's
    assert ov.validated == {"hyper.learning_rate": 1e-5, "hyper.epochs": 1.5,
                            "hyper.gradient_checkpointing": False, "checkpoint.keep": 3,
                            "hyper.global_batch_size": 32, "hyper.batching": "padded"}


def test_unknown_key_lists_every_valid_key_and_suggests_ours():
    with pytest.raises(ConfigError) as e:
        _resolve(["hyper.lr=1e-5"])
    msg = str(e.value)
    assert "\n" not in msg and "unknown override key 'hyper.lr'" in msg
    assert "did you mean hyper.learning_rate?" in msg
    for key in overrides.valid_keys():
        assert key in msg
    assert "hyper.learning_rate" in overrides.valid_keys()
    assert "checkpoint.interval_steps" in overrides.valid_keys()
    with pytest.raises(ConfigError, match="unknown override key 'budget.max_cost_usd'"):
        _resolve(["budget.max_cost_usd=5"])


@pytest.mark.parametrize("item, message", [
    ("hyper.learning_rate=-1e-5", "hyper.learning_rate=-1e-5: Input should be greater than 0"),
    ("hyper.epochs=abc", "hyper.epochs=abc: Input should be a valid number"),
    ("hyper.dtype=fp16", "hyper.dtype=fp16: Input should be 'bf16' or 'fp32'"),
    ("hyper.warmup_ratio=1", "hyper.warmup_ratio=1: Input should be less than 1"),
    # A combination the model's own validator refuses, in its words.
    ("hyper.micro_batch_tokens=1024", "micro_batch_tokens 1024 < max_length 4096"),
    ("checkpoint.keep=0", "checkpoint.keep=0: Input should be greater than or equal to 1"),
    ("hyper.learning_rate", "--set expects KEY=VALUE"),
    ("=3", "--set expects KEY=VALUE"),
])
def test_invalid_values_give_the_models_message_on_one_line(item, message):
    with pytest.raises(ConfigError) as e:
        _resolve([item])
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("text, message", [
    ("hyper: [1, 2", "is not valid YAML"),
    ("- hyper.epochs: 2\n", "must hold a mapping"),
    ("hyper:\n  learning_rat: 1e-5\n", "unknown override key 'hyper.learning_rat'"),
])
def test_bad_config_file_is_one_line(tmp_path, text, message):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as e:
        _resolve(config=str(cfg))
    assert message in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="cannot read it"):
        _resolve(config=str(tmp_path / "missing.yaml"))


def test_dotted_keys_in_the_file_and_an_empty_file(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("hyper.epochs: 2\n")
    assert _resolve(config=str(cfg))[1]["hyper"].epochs == 2
    cfg.write_text("")
    ov, models = _resolve(config=str(cfg))
    assert not ov and models["hyper"] == get_preset("7b").hyper


# --- the training hash and relaunches ----------------------------------------------------
def _spec(bucket_uri, sets=(), run_id="r1"):
    p = get_preset("tiny")
    ov, models = overrides.resolve(sets, hyper=p.hyper)
    return spec_from_preset(overrides.apply_to_preset(p, models), run_id=run_id,
                            dataset_uri=f"{bucket_uri}/d", dataset_sha256=None,
                            bucket_uri=bucket_uri, cloud="local",
                            checkpoint=models["checkpoint"], overrides=ov.validated)


def test_training_hash_changes_only_with_the_weights(tmp_path):
    b = str(tmp_path)
    base = _spec(b).training_hash()
    assert _spec(b, ["hyper.learning_rate=1e-3"]).training_hash() != base
    assert _spec(b, ["hyper.epochs=2"]).training_hash() != base
    # The preset's own value, logging, eval cadence and checkpointing keep the weights.
    same = [["hyper.learning_rate=2e-3"], ["hyper.log_every_steps=10"],
            ["hyper.eval_every_steps=5"], ["checkpoint.interval_steps=3", "checkpoint.keep=4"]]
    for sets in same:
        assert _spec(b, sets).training_hash() == base, sets


def test_run_json_records_the_overrides_and_old_specs_still_read(tmp_path):
    s = _spec(str(tmp_path), ["hyper.learning_rate=1e-3", "checkpoint.keep=4"])
    again = RunSpec.from_json(s.to_json())
    assert again.hyper.learning_rate == 1e-3 and again.checkpoint.keep == 4
    assert again.overrides == {"hyper.learning_rate": 1e-3, "checkpoint.keep": 4}
    old = json.loads(s.to_json())
    del old["overrides"]  # a run.json written before overrides existed
    assert RunSpec.model_validate(old).overrides == {}


def test_cloud_relaunch_with_other_overrides_is_refused_naming_the_key(tmp_path):
    b = str(tmp_path / "b")
    bucket = open_bucket(b)
    write_run_spec(bucket, _spec(b, ["hyper.learning_rate=1e-3"]))
    write_run_spec(bucket, _spec(b, ["hyper.learning_rate=1e-3"]))  # the same: accepted
    for sets, key in ((["hyper.learning_rate=5e-4"], "hyper.learning_rate"),
                      (["hyper.learning_rate=1e-3", "hyper.log_every_steps=5"],
                       "hyper.log_every_steps"),
                      ([], "hyper.learning_rate")):
        with pytest.raises(RunSpecConflict) as e:
            write_run_spec(bucket, _spec(b, sets))
        assert f"{key}: run.json has" in str(e.value) and "--set/--config" in str(e.value)


# --- the commands --------------------------------------------------------------------------
def cli(*args, home):
    env = dict(os.environ, VICUNA_CLOUD_HOME=str(home), COLUMNS="400")
    return subprocess.run([sys.executable, "-m", "vicuna_cloud", *args], capture_output=True,
                          text=True, timeout=120, env=env)


def test_render_takes_the_same_overrides_and_reproduces_them(capsys, monkeypatch, tmp_path):
    r = run_cli(capsys, monkeypatch, "render", "7b", "--set", "hyper.learning_rate=1e-5",
                "--set", "hyper.epochs=2")
    assert r.code == 0, r.err
    header = r.out.splitlines()[1]
    assert "--set hyper.learning_rate=1e-05 --set hyper.epochs=2.0" in header
    r = run_cli(capsys, monkeypatch, "render", "7b", "--set", "hyper.nope=1")
    assert r.code == 2 and "unknown override key 'hyper.nope'" in r.err
    assert r.err.strip().count("\n") == 0 and r.out == ""


def test_dry_run_writes_the_overridden_spec(capsys, monkeypatch, tmp_path, no_submit):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("hyper:\n  learning_rate: 1e-5\n  epochs: 2\ncheckpoint:\n  keep: 3\n")
    out = tmp_path / "dry"
    r = run_cli(capsys, monkeypatch, "launch", "7b", "--dry-run", "--config", str(cfg),
                "--set", "hyper.epochs=1", "--out", str(out), "--json")
    assert r.code == 0, r.err
    spec = RunSpec.from_json((out / "run.json").read_text())
    assert (spec.hyper.learning_rate, spec.hyper.epochs, spec.checkpoint.keep) == (1e-5, 1, 3)
    assert spec.overrides == {"hyper.learning_rate": 1e-5, "hyper.epochs": 1.0,
                              "checkpoint.keep": 3}
    assert no_submit == []
    r = run_cli(capsys, monkeypatch, "launch", "7b", "--dry-run", "--set",
                "hyper.learning_rate=0")
    assert r.code == 2 and "hyper.learning_rate=0: Input should be greater than 0" in r.err


def test_local_bad_override_writes_nothing(tmp_path):
    b = tmp_path / "bucket"
    r = cli("launch", "tiny", "--local", "--bucket", str(b), "--set", "hyper.epochz=2",
            home=tmp_path)
    assert r.returncode == 2 and "unknown override key 'hyper.epochz'" in r.stderr
    assert r.stderr.strip().count("\n") == 0 and not (b / "runs").exists()


def test_local_relaunch_with_other_overrides_is_refused(tmp_path):
    b = str(tmp_path / "b")
    write_run_spec(open_bucket(b), _spec(b, ["hyper.epochs=0.5"]).model_copy(
        update={"checkpoint": CheckpointPolicy(interval_steps=4, keep=2)}))
    r = cli("launch", "tiny", "--local", "--bucket", b, "--run-id", "r1", "--set",
            "hyper.epochs=2", home=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "hyper.epochs: run.json has 0.5, asked 2.0" in r.stderr
    assert r.stderr.strip().count("\n") == 0


def test_status_shows_the_overrides(local_bucket_uri, capsys, monkeypatch):
    from helpers.cloud_servers import free_port
    from helpers.fake_run import write_fake_run

    monkeypatch.setenv("SKYPILOT_API_SERVER_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    spec, _ = write_fake_run(local_bucket_uri, "vicuna-ov-run")
    bucket = open_bucket(local_bucket_uri)
    bucket.put_bytes(bucket_keys.run_spec(spec.run_id), spec.model_copy(
        update={"overrides": {"hyper.learning_rate": 1e-5}}).to_json().encode())
    r = run_cli(capsys, monkeypatch, "status", spec.run_id, "--bucket", local_bucket_uri,
                "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["overrides"] == {"hyper.learning_rate": 1e-5}
    r = run_cli(capsys, monkeypatch, "status", spec.run_id, "--bucket", local_bucket_uri)
    assert "hyper.learning_rate=1e-05" in r.out


@pytest.mark.slow
def test_local_run_trains_with_the_overrides(tmp_path):
    """The real local launch: run.json carries --set, the trainer follows it (epochs 0.5
    of the tiny preset's 1: half the steps of the default run's total)."""
    b = str(tmp_path / "b")
    r = cli("launch", "tiny", "--local", "--bucket", b, "--run-id", "ov", "--set",
            "hyper.epochs=0.5", "--set", "checkpoint.interval_steps=2", home=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    spec = RunSpec.from_json(open_bucket(b).get_bytes(bucket_keys.run_spec("ov")))
    assert spec.hyper.epochs == 0.5 and spec.checkpoint.interval_steps == 2
    assert spec.overrides == {"hyper.epochs": 0.5, "checkpoint.interval_steps": 2}
    lines = [json.loads(x) for x in open_bucket(b).get_bytes(
        bucket_keys.metrics("ov")).decode().splitlines() if x.strip()]
    totals = {x["total_steps"] for x in lines if "total_steps" in x}
    assert len(totals) == 1 and 0 < totals.pop() <= 8  # the default (1 epoch) has twice as many
