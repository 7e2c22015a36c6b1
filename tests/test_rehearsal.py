"""The rehearsal: the task `launch` submits, run here the way SkyPilot 0.14.1's runtime runs
it, on two simulated nodes (network namespaces; see tests/node_rehearsal.py for what is
and is not like a cloud VM).

Everything up to the submit call is the real launch path (sdk.plan: credential,
bucket and dataset checks, spec and task, SkyPilot's parser); the submit call is the one
thing not made (a real one needs an API server with cloud credentials): the parsed task
it would have sent is run instead. On each node: setup (a real install into a fresh
environment by the node's uv, from local wheels), then run with SkyPilot's variables: the
real torchrun rendezvous across the namespaces, the real trainer (tiny preset, gloo, a
2-node mesh), checkpoints and a ledger in the moto S3 server on the bridge address.
Both nodes are SIGKILLed mid-run; two fresh nodes (new HOMEs: setup again) resume and end
with the weights of an uninterrupted rehearsal. A bad spec ends with an exit code that the
task's own job_recovery, read by SkyPilot's own decision function, does not retry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from helpers.node_rehearsal import Fabric, Node, have_netns, image_python, run_setup, start_run, wheelhouse

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(have_netns() is not None, reason=str(have_netns()))]

RUN_ID = "rehearsal"
CONVERSATIONS = 256          # tiny preset, global batch 16: 16 steps
CHECKPOINT_EVERY = 4
PRICE = {"cloud": "aws", "region": "us-east-1", "zone": None, "instance_type": "m6i.large",
         "accelerators": "cpu:1", "on_demand": 0.096, "spot": 0.04,
         "source": "rehearsal row (the catalog snapshot has no CPU instances)"}
FAKE_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}


class Stage:
    """The fabric, the servers on its bridge, and the launch environment."""

    def __init__(self, root: Path, mp: pytest.MonkeyPatch):
        from moto.server import ThreadedMotoServer

        from helpers.metadata_server import MetadataServer

        self.root = root
        self.fabric = Fabric()
        self.moto = ThreadedMotoServer(ip_address=self.fabric.host_ip, port=0, verbose=False)
        self.moto.start()
        host, port = self.moto.get_host_and_port()
        self.s3_url = f"http://{host}:{port}"
        self.meta = MetadataServer()
        self.meta.host = self.fabric.host_ip  # the instance metadata service of every node
        self.meta.start()
        self.wheels = wheelhouse()
        for k, v in {**FAKE_AWS, "AWS_ENDPOINT_URL_S3": self.s3_url}.items():
            mp.setenv(k, v)
        mp.delenv("AWS_ENDPOINT_URL", raising=False)
        self.base_env = {
            **FAKE_AWS, "AWS_ENDPOINT_URL_S3": self.s3_url, "LANG": "C.UTF-8",
            "VICUNA_AWS_METADATA_URL": self.meta.url, "VICUNA_PREEMPTION_POLL_S": "1",
            "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            # the image's package source: local wheels (no route out of the namespaces)
            "UV_OFFLINE": "1", "UV_NO_INDEX": "1", "UV_FIND_LINKS": str(self.wheels),
            "UV_PYTHON_DOWNLOADS": "never",
        }
        for k in ("VICUNA_STORAGE_RETRY_BASE_S", "VICUNA_STORAGE_RETRY_MAX_BACKOFF_S",
                  "VICUNA_STORAGE_RETRY_DEADLINE_S", "VICUNA_STORAGE_CONNECT_TIMEOUT_S",
                  "VICUNA_STORAGE_READ_TIMEOUT_S"):
            if os.environ.get(k):
                self.base_env[k] = os.environ[k]
        self.generation = 0
        self.last: list[Node] = []  # the newest set-up nodes, for the next scenario

    def bucket(self, name: str) -> str:
        import boto3

        boto3.client("s3", endpoint_url=self.s3_url, region_name="us-east-1",
                     aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket=name)
        return f"s3://{name}"

    def nodes(self, n: int = 2) -> list[Node]:
        """n fresh 'VMs': new namespaces, addresses, HOMEs and workdir copies."""
        self.generation += 1
        out = []
        for i in range(n):
            ns, ip, nic = self.fabric.namespace()
            node = Node(self.fabric, ns, ip, nic, self.root / f"gen{self.generation}-node{i}",
                        self.base_env)
            node.make_user_env()
            out.append(node)
        return out

    def close(self) -> None:
        self.fabric.close()
        self.meta.stop()
        self.moto.stop()


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("rehearsal")
    s = Stage(root, mp)
    try:
        yield s
    finally:
        s.close()
        mp.undo()
        # Four node disks with their own venvs (~1.2 GB each): the rest of the session
        # (the small model's runs above all) needs that disk more than a post-mortem does.
        shutil.rmtree(root, ignore_errors=True)


def upload_data(bucket_uri: str) -> str:
    from helpers.train import DUMMY_CONVERSATIONS
    from vicuna_cloud.storage import open_bucket

    records = json.loads(DUMMY_CONVERSATIONS.read_text())[:CONVERSATIONS]
    body = ("\n".join(json.dumps({"id": r["id"], "conversations": r["conversations"]})
                      for r in records) + "\n").encode()
    sha = hashlib.sha256(body).hexdigest()
    b = open_bucket(bucket_uri)
    b.put_bytes(f"datasets/{sha}/train.jsonl", body)
    b.put_bytes(f"datasets/{sha}/manifest.json", json.dumps(
        {"output": {"sha256": sha, "bytes": len(body), "conversations": len(records)}}).encode())
    return b.child_uri(f"datasets/{sha}")


def launch_task(bucket_uri: str, data_uri: str, run_id: str = RUN_ID):
    """The real launch path up to the submit call; the spec written as launch writes it
    (plus a checkpoint cadence and a price row, both in run.json, for the rehearsal)."""
    from vicuna_cloud import sdk
    from vicuna_cloud.run_store import write_run_spec
    from vicuna_cloud.runspec import CheckpointPolicy, NodePriceRow
    from vicuna_cloud.storage import open_bucket

    p = sdk.plan(sdk.LaunchRequest(preset="tiny", nodes=2, gpus="cpu:1", bucket=bucket_uri,
                                   data=data_uri, run_id=run_id, allow_dirty=True),
                 optimize=False)  # the catalog snapshot has no CPU instances to optimize over
    spec = p.spec.model_copy(update={
        "checkpoint": CheckpointPolicy(interval_steps=CHECKPOINT_EVERY),
        "budget": p.spec.budget.model_copy(update={"node_prices": [NodePriceRow(**PRICE)]}),
    })
    write_run_spec(open_bucket(p.bucket_uri), spec)
    return p, spec


def final_weights(bucket_uri: str, run_id: str = RUN_ID) -> dict:
    from safetensors.torch import load

    from vicuna_cloud.storage import open_bucket

    b = open_bucket(bucket_uri)
    out = {}
    for o in b.list(f"runs/{run_id}/final/"):
        if o.key.endswith(".safetensors"):
            out.update(load(b.get_bytes(o.key)))
    assert out, f"no exported weights in {bucket_uri}"
    return out


def committed_steps(bucket_uri: str, run_id: str = RUN_ID) -> list[int]:
    from vicuna_cloud.storage import open_bucket

    keys = [o.key for o in open_bucket(bucket_uri).list(f"runs/{run_id}/checkpoints/")]
    return sorted(int(k.split("/")[3].split("-")[1]) for k in keys if k.endswith("/COMMIT.json"))


def logs(nodes, name: str) -> str:
    return "\n".join(f"--- {n.ns} {name}\n" + (n.root / name).read_text(errors="replace")[-3000:]
                     for n in nodes)


def wait_all(procs, timeout: float = 600) -> list[int]:
    deadline = time.time() + timeout
    codes = []
    for p in procs:
        codes.append(p.wait(timeout=max(1, deadline - time.time())))
    return codes


def test_two_nodes_preempted_mid_run_resume_on_fresh_nodes_to_the_same_weights(stage, capsys):
    import sky  # noqa: F401 - SkyPilot's own script builders are used below

    from vicuna_cloud.ledger import read_ledger
    from vicuna_cloud.storage import open_bucket

    report = {"image_python3": image_python()[1]}
    # --- gen 1: two fresh nodes, setup timed -------------------------------------------
    gen1 = stage.nodes()
    ref_bucket = stage.bucket("rehearsal-ref")
    p, spec = launch_task(ref_bucket, upload_data(ref_bucket))
    task = p._task
    # The one mount is the run prefix for nodeside; the rehearsal has no FUSE, so setup's
    # segment opener finds no run.json there and the trainer opens the segment itself.
    assert task.num_nodes == 2 and not task.file_mounts
    assert list(task.storage_mounts) == ["/vicuna/run"]
    codes = run_setup(task, gen1, "vc-ref")
    assert codes == [0, 0], logs(gen1, "setup.log")
    report["setup_s_gen1"] = [round(n.setup_seconds, 1) for n in gen1]
    for n in gen1:
        assert "installed, Python 3.11" in (n.root / "setup.log").read_text()
        assert (n.home / "sky-user-env" / "bin" / "python").exists() or report[
            "image_python3"] != "3.10"  # the user env SkyPilot made from the 3.10 image
    # The same disk again (a recovery onto a set-up VM): a no-op, timed.
    run_setup(task, gen1, "vc-ref")
    report["setup_s_reused_disk"] = [round(n.setup_seconds, 1) for n in gen1]
    assert all("setup skipped" in (n.root / "setup.log").read_text() for n in gen1)

    # --- an uninterrupted rehearsal: the reference weights --------------------------------
    t0 = time.time()
    codes = wait_all(start_run(task, gen1, "vc-ref", job_id=1))
    assert codes == [0, 0], logs(gen1, "run-1.log")
    seg = read_ledger(open_bucket(ref_bucket), RUN_ID).segments[-1]
    report["start_to_first_step_s"] = round(seg.first_step_time - t0, 1)
    ref = final_weights(ref_bucket)
    assert "world 2" in (gen1[0].root / "run-1.log").read_text()

    # --- the same run in another bucket, both nodes SIGKILLed mid-run ------------------------
    bucket = stage.bucket("rehearsal-resumed")
    p, spec = launch_task(bucket, upload_data(bucket))
    procs = start_run(p._task, gen1, "vc-run", job_id=2)
    deadline = time.time() + 600
    while not committed_steps(bucket) and time.time() < deadline:
        assert all(x.poll() is None for x in procs), logs(gen1, "run-2.log")
        time.sleep(0.2)
    assert committed_steps(bucket), logs(gen1, "run-2.log")
    killed = [stage.fabric.kill_all(n.ns) for n in gen1]
    for x in procs:
        x.wait(timeout=60)
    assert all(k > 0 for k in killed)
    first = committed_steps(bucket)
    assert not any(o.key.startswith(f"runs/{RUN_ID}/final/")
                   for o in open_bucket(bucket).list(f"runs/{RUN_ID}/")), "killed too late"

    # --- two fresh nodes: new HOMEs, setup again, resume -------------------------------------
    gen2 = stage.nodes()
    codes = run_setup(p._task, gen2, "vc-run-2")
    assert codes == [0, 0], logs(gen2, "setup.log")
    report["setup_s_fresh_nodes"] = [round(n.setup_seconds, 1) for n in gen2]
    t0 = time.time()
    # A recovery of the same managed job: same SKYPILOT_TASK_ID, so the same lease owner.
    codes = wait_all(start_run(p._task, gen2, "vc-run-2", job_id=3,
                               task_id="sky-managed-rehearsal_vc-run_2"))
    assert codes == [0, 0], logs(gen2, "run-3.log")
    stage.last = gen2
    assert f"resuming at step {first[-1]}" in (gen2[0].root / "run-3.log").read_text()
    got = final_weights(bucket)
    assert set(got) == set(ref)
    for name in ref:
        assert got[name].equal(ref[name]), f"{name} differs after the resume"

    # --- the ledger: two segments, each billing two nodes ------------------------------------
    segs = read_ledger(open_bucket(bucket), RUN_ID).segments
    assert len(segs) == 2, segs
    assert all(s.nodes == 2 and s.cloud == "aws" and s.region == "us-east-1" for s in segs)
    assert segs[0].end_time is None  # killed: billed to its last heartbeat
    assert segs[1].end_reason == "completed" and segs[1].first_step == first[-1]
    for s in segs:
        assert s.price_per_hour == PRICE["spot"] and "run.json launch-time" in s.price_source
        assert s.cost_usd() == pytest.approx(s.billed_seconds() / 3600 * PRICE["spot"] * 2)
    report["resume_start_to_first_step_s"] = round(segs[1].first_step_time - t0, 1)
    with capsys.disabled():
        print(f"\nrehearsal figures: {json.dumps(report)}")


def test_a_bad_spec_ends_with_an_exit_code_the_tasks_job_recovery_does_not_retry(stage):
    """Exit codes of both nodes go through SkyPilot 0.14.1's own should_restart_on_failure,
    configured from the parsed task's job_recovery exactly as StrategyExecutor.make reads it."""
    from sky.jobs import recovery_strategy
    from sky.utils import registry

    from vicuna_cloud.storage import open_bucket

    bucket = stage.bucket("rehearsal-bad")
    p, spec = launch_task(bucket, upload_data(bucket), run_id="bad-spec")
    broken = json.loads(spec.to_json())
    broken["template"] = "no-such-template"  # wrong on its face: fails the same anywhere
    open_bucket(bucket).put_bytes("runs/bad-spec/run.json", json.dumps(broken).encode())
    nodes = stage.last or stage.nodes()  # set-up nodes: setup is a no-op there
    assert run_setup(p._task, nodes, "vc-bad") == [0, 0], logs(nodes, "setup.log")
    codes = wait_all(start_run(p._task, nodes, "vc-bad", job_id=9), timeout=300)
    assert codes == [78, 78], logs(nodes, "run-9.log")

    (jr,) = {json.dumps(r.job_recovery, sort_keys=True) for r in p._task.resources}
    jr = json.loads(jr)
    cls = registry.JOBS_RECOVERY_STRATEGY_REGISTRY.from_str(jr["strategy"])

    def executor():
        ex = cls.__new__(cls)  # only the retry policy is exercised: no cluster, no backend
        ex.max_restarts_on_errors = jr.get("max_restarts_on_errors", 0)
        ex.recover_on_exit_codes = list(jr.get("recover_on_exit_codes") or [])
        ex.restart_cnt_on_failure = 0
        return ex

    assert issubclass(cls, recovery_strategy.StrategyExecutor)
    assert executor().should_restart_on_failure(exit_codes=codes) is False
    assert executor().should_restart_on_failure(exit_codes=[1, 1]) is False  # a bug
    assert executor().should_restart_on_failure(exit_codes=[75, 0]) is True  # preempted
    assert executor().should_restart_on_failure(exit_codes=[69, 1]) is True  # transient
