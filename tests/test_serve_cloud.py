"""`vicuna-cloud serve RUN --dry-run`: the SkyServe/vLLM task, read from a run's export in
a (moto) S3 bucket, is accepted by SkyPilot's own parser and carries the export's chat
template and stop tokens; its run script, executed here with a stand-in `vllm` binary
(the real one needs a GPU), writes them where vLLM's flags point."""

from __future__ import annotations

import copy
import json
import os
import stat
import subprocess

import pytest
import yaml

from helpers.cli import run_cli
from helpers.serve import RUN, make_export, publish

SECRET = "serve-key-7d41a0"


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    return {t: make_export(str(root / t), template=t) for t in ("vicuna_v1.1", "vicuna_v0")}


def _dry_run(capsys, monkeypatch, *extra):
    r = run_cli(capsys, monkeypatch, "serve", *extra, "--dry-run", "--json")
    assert r.code == 0, r.err
    return json.loads(r.out)


def test_dry_run_renders_a_service_skypilot_accepts(exports, s3_bucket_uri, tmp_path,
                                                    capsys, monkeypatch):
    import sky

    export = exports["vicuna_v1.1"]
    publish(s3_bucket_uri, export)
    monkeypatch.setenv("VICUNA_SERVE_API_KEY", SECRET)
    out = tmp_path / "serve.yaml"
    summary = _dry_run(capsys, monkeypatch, RUN, "--bucket", s3_bucket_uri, "--spot",
                       "-o", str(out))
    text = out.read_text()
    assert SECRET not in text and SECRET not in json.dumps(summary)
    cfg = yaml.safe_load(text)
    task = sky.Task.from_yaml_config(copy.deepcopy(cfg))
    assert task.service is not None and task.service.readiness_path == "/health"
    assert all(r.use_spot for r in task.resources)
    assert {str(r.cloud) for r in task.resources} == {"AWS", "GCP"}
    assert all(r.accelerators == {"L4": 1} for r in task.resources)  # tiny -> smallest GPU
    assert cfg["secrets"] == {"VICUNA_SERVE_API_KEY": None}
    assert cfg["file_mounts"]["/vicuna/model"] == {"source": f"{s3_bucket_uri}/runs/{RUN}/final",
                                                   "mode": "COPY"}
    # The export decides the template and the stop tokens.
    tok_cfg = json.load(open(os.path.join(export, "tokenizer_config.json")))
    gen_cfg = json.load(open(os.path.join(export, "generation_config.json")))
    envs = cfg["envs"]
    assert envs["VICUNA_CHAT_TEMPLATE"] == tok_cfg["chat_template"]
    assert json.loads(envs["VICUNA_GENERATION_CONFIG"])["eos_token_id"] == [gen_cfg["eos_token_id"]]
    assert json.loads(envs["VICUNA_STOP_STRINGS"]) == ["</s>"]
    assert envs["VICUNA_SERVED_NAME"] == RUN and envs["VICUNA_MAX_MODEL_LEN"] == "512"
    assert summary["stop_token_ids"] == [2] and summary["use_spot"] is True
    assert "vllm==$WANT_VLLM" in cfg["setup"] and "WANT_VLLM=0.33.0" in cfg["setup"]
    for script in (cfg["setup"], cfg["run"]):
        subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    _run_script_with_stand_in_vllm(cfg, tmp_path, export)


def _run_script_with_stand_in_vllm(cfg, tmp_path, export):
    """Execute the task's run text; a fake `vllm` records its arguments."""
    home = tmp_path / "home"
    binary = home / ".vicuna-serve" / "venv" / "bin" / "vllm"
    binary.parent.mkdir(parents=True)
    record = tmp_path / "vllm-args.json"
    binary.write_text("#!/usr/bin/env python3\nimport json, sys\n"
                      f"json.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n")
    binary.chmod(binary.stat().st_mode | stat.S_IEXEC)
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "SKYPILOT_NUM_GPUS_PER_NODE": "1",
           "VICUNA_SERVE_API_KEY": SECRET, **cfg["envs"]}
    subprocess.run(["bash", "-c", cfg["run"]], env=env, check=True)
    args = json.load(open(record))
    conf = home / ".vicuna-serve" / "conf"
    assert args[:2] == ["serve", "/vicuna/model"]
    flags = dict(zip(args[2::2], args[3::2]))
    assert flags["--served-model-name"] == RUN and flags["--max-model-len"] == "512"
    assert flags["--chat-template"] == str(conf / "chat_template.jinja")
    assert flags["--generation-config"] == str(conf)
    assert flags["--host"] == "0.0.0.0" and flags["--port"] == "8000"
    tok_cfg = json.load(open(os.path.join(export, "tokenizer_config.json")))
    assert (conf / "chat_template.jinja").read_text() == tok_cfg["chat_template"]
    # The generation config vLLM loads is one transformers reads, with the export's eos.
    from transformers import GenerationConfig

    assert GenerationConfig.from_pretrained(str(conf)).eos_token_id == [2]


def test_v0_export_stops_on_its_separator_and_gpus_override(exports, s3_bucket_uri,
                                                            capsys, monkeypatch):
    publish(s3_bucket_uri, exports["vicuna_v0"], run_id="v0-run", template="vicuna_v0")
    summary = _dry_run(capsys, monkeypatch, "v0-run", "--bucket", s3_bucket_uri,
                       "--gpus", "A100:1", "--cloud", "gcp", "--replicas", "2")
    assert summary["accelerators"] == "A100:1" and summary["replicas"] == 2
    assert summary["use_spot"] is False  # on-demand unless --spot
    assert summary["stop_strings"] == ["###"]  # not one token: clients send it (eval does)
    assert summary["stop_token_ids"] == [2]


def test_serve_refusals_are_one_line(exports, s3_bucket_uri, local_bucket_uri,
                                     capsys, monkeypatch):
    from vicuna_cloud.recipes import get_preset
    from vicuna_cloud.run_store import spec_from_preset, write_run_spec
    from vicuna_cloud.storage import open_bucket

    b = open_bucket(s3_bucket_uri)
    write_run_spec(b, spec_from_preset(get_preset("tiny"), run_id="unfinished",
                                       dataset_uri=f"{s3_bucket_uri}/datasets/x",
                                       dataset_sha256=None, bucket_uri=s3_bucket_uri,
                                       cloud="aws"))
    publish(local_bucket_uri, exports["vicuna_v1.1"])
    cases = [
        (["unfinished", "--bucket", s3_bucket_uri], "no complete export"),
        (["nope", "--bucket", s3_bucket_uri], "no run 'nope'"),
        ([RUN, "--bucket", local_bucket_uri], "must be in an s3:// or gs:// bucket"),
        (["Bad/Id", "--bucket", s3_bucket_uri], "is not a run id"),
        (["unfinished"], "no --bucket given"),
    ]
    for args, needle in cases:
        r = run_cli(capsys, monkeypatch, "serve", *args, "--dry-run")
        assert r.code == 2 and needle in r.err and r.err.strip().count("\n") == 0, (args, r.err)


def test_serve_eval_delta_modules_stay_torch_free():
    """The control plane never imports torch (DESIGN.md): the new modules neither."""
    import sys

    code = ("import sys, vicuna_cloud.cli, vicuna_cloud.cli.serve, vicuna_cloud.cli.eval, "
            "vicuna_cloud.cli.delta, vicuna_cloud.delta, vicuna_cloud.evaluation.run, "
            "vicuna_cloud.evaluation.report, vicuna_cloud.serving.task, vicuna_cloud.serving.local; "
            "print(sorted(m for m in ('torch', 'transformers', 'train') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"
