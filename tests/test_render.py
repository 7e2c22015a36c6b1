"""Task rendering: every preset renders a task SkyPilot's own parser accepts; tasks/ is
kept equal to the renderer; our job_recovery checks catch what SkyPilot's client lets by."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers.cli import run_cli
from vicuna_cloud.sdk import render_task
from vicuna_cloud.recipes import all_presets
from vicuna_cloud.skypilot.task import (
    TaskValidationError, check_job_recovery, validate_task_config,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["7b", "13b", "33b"])
def test_committed_tasks_match_the_renderer(name):
    committed = (REPO / "tasks" / f"{name}.yaml").read_text()
    assert committed == render_task(name), (
        f"tasks/{name}.yaml drifted: re-render with `vicuna-cloud render {name} -o tasks/{name}.yaml`")


def _cases():
    # CPU presets (tiny, small) render a CPU task; tiny is also asked for a GPU here.
    out = [(p.name, p.version, None) for p in all_presets() if p.hardware.accelerator != "cpu"]
    return out + [("tiny", "v1.1", "A100-80GB:1")]


@pytest.mark.parametrize("name,version,gpus", _cases())
def test_every_preset_renders_a_task_skypilot_accepts(name, version, gpus):
    import sky

    text = render_task(name, version=version, gpus=gpus)
    cfg = yaml.safe_load(text)
    task = sky.Task.from_yaml_config(copy.deepcopy(cfg))
    res = list(task.resources)
    assert {str(r.cloud) for r in res} == {"AWS"}  # the example bucket is s3://: its cloud
    want_gpus = gpus or "A100-80GB:8"
    acc, count = want_gpus.split(":")
    assert all(r.accelerators == {acc: int(count)} for r in res)
    assert all(r.use_spot for r in res)
    assert task.num_nodes == (2 if name == "33b" else 1)
    jr = cfg["resources"]["job_recovery"]
    assert jr["strategy"] == "EAGER_NEXT_REGION"
    # Nothing that cannot succeed is retried: a config error (78) or a bug (1) is not
    # listed and no error restart is allowed; preemption (75) and transient faults (69)
    # restart without counting (sky/jobs/recovery_strategy.py should_restart_on_failure).
    assert jr["max_restarts_on_errors"] == 0
    assert jr["recover_on_exit_codes"] == [75, 69]
    assert not {1, 78, 137} & set(jr["recover_on_exit_codes"])
    assert cfg["secrets"] == {"HF_TOKEN": None, "WANDB_API_KEY": None}
    assert cfg["envs"]["VICUNA_RUN_URI"].endswith("/run.json")
    # One mount, the run prefix, for nodeside (stdlib only, before any install); the
    # trainer reads and writes the bucket itself, and there is no dataset COPY.
    assert cfg["file_mounts"] == {"/vicuna/run": {"source": cfg["envs"]["VICUNA_RUN_URI"]
                                                  .rsplit("/run.json", 1)[0], "mode": "MOUNT"}}
    assert cfg["envs"]["VICUNA_RUN_DIR"] == "/vicuna/run"
    assert list(task.storage_mounts) == ["/vicuna/run"] and not task.file_mounts
    assert cfg["resources"]["disk_tier"] == "high"
    # Nothing in setup depends on the image's Python: no python3/pip of the image; the
    # venv is made by SkyPilot's uv with an explicit 3.11 and installed by uv.
    setup = cfg["setup"]
    # ...except the ledger segment that opens first, stdlib-only, through the mount.
    opener = "python3 -m vicuna_cloud.nodeside open"
    assert setup.count(opener) == 1 and setup.index(opener) < setup.index('"$UV" venv')
    # uv's pip subcommand is not the image's pip
    bare = setup.replace(opener, "nodeside-open").replace('"$UV" pip', "uv-pip")
    assert not re.search(r"(^|[\s;(])(python3?|pip3?)\s", bare, re.M), setup
    assert re.search(r'"\$UV" venv --quiet --python "\$WANT_PYTHON"', setup)
    assert re.search(r'"\$UV" pip install --quiet --python "\$VENV/bin/python" -r', setup)
    assert "WANT_PYTHON=3.11" in setup and 'UV="$HOME/.local/bin/uv"' in setup
    # Multi-node GPU tasks ask for the fast interconnect (EFA on AWS).
    assert cfg["resources"].get("network_tier") == ("best" if task.num_nodes > 1 else None)
    # The run spec carries hyperparameters; the YAML must not.
    for word in ("learning_rate", "2e-05", "warmup", "global_batch"):
        assert word not in text
    # Disk: base weights + two checkpoints (16 bytes/param) + caches.
    if name != "tiny":
        from vicuna_cloud.recipes import get_preset

        n = get_preset(name, version).arch.n_params
        assert cfg["resources"]["disk_size"] * 1e9 >= 2 * 12 * n + 4 * n


def test_cloud_choice_and_on_demand_and_gcs():
    cfg = yaml.safe_load(render_task("7b", cloud="gcp", spot=False, bucket="gs://vc-bucket/p"))
    assert cfg["resources"]["cloud"] == "gcp" and "any_of" not in cfg["resources"]
    assert cfg["resources"]["use_spot"] is False
    assert cfg["envs"]["VICUNA_RUN_URI"].startswith("gs://vc-bucket/p/runs/")
    # Without --cloud the nodes follow the bucket: gs:// -> GCP, s3:// -> AWS.
    assert yaml.safe_load(render_task("7b", bucket="gs://vc-bucket/p"))["resources"][
        "cloud"] == "gcp"
    cfg = yaml.safe_load(render_task("13b", cloud="aws", nodes=2, gpus="H100:8"))
    assert cfg["resources"]["cloud"] == "aws" and cfg["num_nodes"] == 2
    assert cfg["resources"]["accelerators"] == "H100:8"


def test_job_recovery_typos_pass_skypilot_but_not_us():
    import sky

    cfg = yaml.safe_load(render_task("7b"))
    typo = copy.deepcopy(cfg)
    typo["resources"]["job_recovery"]["max_restart_on_errors"] = 3  # missing 's'
    # SkyPilot 0.14.1's client-side schema lets unknown job_recovery keys through ...
    sky.Task.from_yaml_config(copy.deepcopy(typo))
    # ... so we check them ourselves.
    with pytest.raises(TaskValidationError, match="max_restart_on_errors"):
        validate_task_config(typo)
    bad = copy.deepcopy(cfg)
    bad["resources"]["job_recovery"]["strategy"] = "EAGER_NEXT_REGIONS"
    with pytest.raises(TaskValidationError, match="strategy"):
        check_job_recovery(bad)
    oom = copy.deepcopy(cfg)
    oom["resources"]["job_recovery"]["recover_on_exit_codes"] = [75, 137]
    with pytest.raises(TaskValidationError, match="137"):
        check_job_recovery(oom)


def test_secret_values_are_refused_and_skypilot_errors_are_one_line():
    cfg = yaml.safe_load(render_task("7b"))
    leaked = copy.deepcopy(cfg)
    leaked["secrets"]["HF_TOKEN"] = "hf_abc"
    with pytest.raises(TaskValidationError, match="HF_TOKEN"):
        validate_task_config(leaked)
    broken = copy.deepcopy(cfg)
    broken["resources"]["use_spot"] = "sometimes"
    with pytest.raises(TaskValidationError) as e:
        validate_task_config(broken)
    assert "\n" not in str(e.value) and "SkyPilot rejected" in str(e.value)
    assert broken == {**cfg, "resources": {**cfg["resources"], "use_spot": "sometimes"}}


def test_secrets_given_at_launch_reach_the_task_only(monkeypatch):
    cfg = yaml.safe_load(render_task("7b"))
    task = validate_task_config(cfg, secrets={"HF_TOKEN": "hf_fake_value"})
    assert task.secrets["HF_TOKEN"].get_secret_value() == "hf_fake_value"
    assert "WANDB_API_KEY" not in task.secrets  # not given: dropped, not a dangling ref
    assert cfg["secrets"] == {"HF_TOKEN": None, "WANDB_API_KEY": None}  # input untouched


def test_render_cli_stdout_and_file(tmp_path, capsys, monkeypatch):
    r = run_cli(capsys, monkeypatch, "render", "7b")
    assert r.code == 0 and r.out == render_task("7b")
    out = tmp_path / "sub" / "t.yaml"
    r = run_cli(capsys, monkeypatch, "render", "33b", "--no-spot", "--cloud", "aws",
                "-o", str(out))
    assert r.code == 0
    cfg = yaml.safe_load(out.read_text())
    assert cfg["resources"]["use_spot"] is False and cfg["num_nodes"] == 2


def test_header_command_reproduces_a_custom_render(tmp_path, capsys, monkeypatch):
    import shlex

    text = render_task("13b", cloud="aws", nodes=2, gpus="H100:8", spot=False,
                       bucket="gs://vc-bucket/p", run_id="custom-1", name="my-job")
    line = next(ln for ln in text.splitlines() if "`vicuna-cloud render " in ln)
    cmd = line.split("`vicuna-cloud render ", 1)[1].split("`", 1)[0]
    r = run_cli(capsys, monkeypatch, "render", *shlex.split(cmd))
    assert r.code == 0, r.err
    assert r.out == text


def _modules_after(args: list[str]) -> list[str]:
    code = (
        "import sys, json\n"
        f"sys.argv = ['vicuna-cloud', *{args!r}]\n"
        "from vicuna_cloud.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = ('torch', 'sky', 'transformers', 'boto3', 'google.cloud.storage')\n"
        "print(json.dumps([m for m in heavy if m in sys.modules]), file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    return json.loads(proc.stderr.strip().splitlines()[-1])


@pytest.mark.slow  # fresh interpreters that import sky: seconds
def test_help_imports_neither_torch_nor_sky_and_render_no_torch():
    assert _modules_after(["--help"]) == []
    loaded = _modules_after(["render", "7b"])
    assert "torch" not in loaded and "transformers" not in loaded
    assert "sky" in loaded  # render validates with SkyPilot's parser


@pytest.mark.parametrize("name,ok", [
    ("vicuna-7b", True), ("Run_1.a", True), ("a", True), ("x" * 63, True), ("x" * 64, False),
    ("ends-", False), ("a---b", False), ("-lead", False), ("a b", False), ("a;b", False),
    ("$(id)", False), ("a\nb", False), ("ab\n", False),
])
def test_job_names_follow_skypilot_rule(name, ok):
    from vicuna_cloud.skypilot.task import check_name

    if ok:
        assert check_name(name) == name
        cfg = yaml.safe_load(render_task("7b", name=name))
        validate_task_config(cfg)  # SkyPilot's own parser agrees
    else:
        with pytest.raises(TaskValidationError):
            check_name(name)
