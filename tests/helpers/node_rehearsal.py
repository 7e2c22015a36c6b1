"""Simulated SkyPilot nodes on this machine, for the rehearsal test.

Each node is a network namespace of its own (``ip netns`` + a veth into one bridge that
the test makes), with its own address, its own HOME (a fresh "VM disk") and its own copy
of the workdir. Its scripts are built by SkyPilot 0.14.1's own functions, as its runtime
builds them on a real node:
- setup: ``sky.skylet.log_lib.make_task_bash_script(task.setup, env_vars=...)`` run as
  ``unset CUDA_VISIBLE_DEVICES; unset RAY_RAYLET_PID; /bin/bash -i SCRIPT 2>&1``, with the
  variables of sky/backends/cloud_vm_ray_backend.py ``_setup`` (task envs and secrets,
  SKYPILOT_CLUSTER_INFO, SKYPILOT_SETUP_NODE_IPS/RANK, SKYPILOT_NUM_NODES);
- run: ``make_task_bash_script(TaskCodeGen.build_task_bash_script(task.run, 'unset
  RAY_RAYLET_PID'), env_vars=...)`` run as ``/bin/bash -i SCRIPT``, with the variables of
  sky/backends/task_codegen.py ``_add_ray_task`` (SKYPILOT_NODE_IPS, SKYPILOT_NUM_NODES,
  SKYPILOT_NUM_GPUS_PER_NODE, SKYPILOT_NODE_RANK, SKYPILOT_INTERNAL_JOB_ID) and of
  cloud_vm_ray_backend.py ``_get_task_env_vars`` (SKYPILOT_TASK_ID, SKYPILOT_CLUSTER_INFO).
- the image: ``~/.local/bin/uv`` is the real uv binary (SkyPilot installs uv there),
  ``python3`` is a Python 3.10 (Ubuntu 22.04's), and ``~/sky-user-env`` is made from it by
  SkyPilot's own SKY_USER_ENV_CREATION_COMMANDS, so user commands see a 3.10 ``python3``.

What differs from a cloud VM, and why (said in the test's output too):
- packages come from a local wheel directory (``UV_FIND_LINKS``, ``UV_OFFLINE``): the
  namespaces have no route out; a real node reads PyPI (CUDA torch wheels are larger);
- Python 3.11 is this machine's interpreter, offered to uv on PATH as ``python3.11``: a
  real Ubuntu 22.04 node has none and uv downloads a managed CPython (not rehearsed);
- the S3 endpoint and the instance metadata service are local servers on the bridge
  address; credentials are moto's fake ones in the environment (a real AWS node uses the
  skypilot-v1 instance role);
- the gloo NIC is named with GLOO_SOCKET_IFNAME (on a VM the hostname resolves to it).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]


def have_netns() -> Optional[str]:
    """None when simulated nodes can be made here, else why not."""
    if os.geteuid() != 0:
        return "simulated nodes need root (ip netns)"
    if shutil.which("ip") is None:
        return "iproute2 is missing: apt-get install -y iproute2 (.ci/run does)"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


class Fabric:
    """A bridge with an address on the host side, and namespaces plugged into it."""

    def __init__(self) -> None:
        self.tag = f"{random.randrange(16**4):04x}"
        self.net = f"10.213.{random.randrange(1, 254)}"
        self.bridge = f"vcb{self.tag}"
        self.host_ip = f"{self.net}.1"
        self.namespaces: list[str] = []
        self._next = 10
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.host_ip}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def namespace(self) -> tuple[str, str, str]:
        """(netns name, its address, its interface name): a new 'VM' on the network."""
        n = self._next
        self._next += 1
        ns, host_end, nic = f"vcn{self.tag}{n}", f"vch{self.tag}{n}", f"vcp{self.tag}{n}"
        _ip("netns", "add", ns)
        self.namespaces.append(ns)
        _ip("link", "add", host_end, "type", "veth", "peer", "name", nic)
        _ip("link", "set", nic, "netns", ns)
        _ip("link", "set", host_end, "master", self.bridge)
        _ip("link", "set", host_end, "up")
        ip = f"{self.net}.{n}"
        _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", nic)
        _ip("-n", ns, "link", "set", nic, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        return ns, ip, nic

    def kill_all(self, ns: str) -> int:
        """SIGKILL every process in ``ns``: the VM is gone, no notice, nothing flushed."""
        out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
        pids = [int(p) for p in out.stdout.split()]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(pids)

    def close(self) -> None:
        for ns in self.namespaces:
            self.kill_all(ns)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


def wheelhouse() -> Path:
    """Wheels of train/requirements.txt (+ pip/setuptools/wheel that SkyPilot's user-env
    seeding wants) in a machine-wide cache, downloaded once by pip from its own cache."""
    req = (REPO / "train" / "requirements.txt").read_bytes()
    key = hashlib.sha256(req + b"pip setuptools wheel").hexdigest()[:12]
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vicuna-cloud-tests"
    done = root / f"node-wheels-{key}"
    if (done / ".complete").exists():
        return done
    tmp = root / f".node-wheels-{key}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "-d", str(tmp),
                    "-r", str(REPO / "train" / "requirements.txt"), "pip", "setuptools",
                    "wheel"], check=True, capture_output=True, text=True, timeout=900)
    (tmp / ".complete").write_text("")
    shutil.rmtree(done, ignore_errors=True)
    os.replace(tmp, done)
    return done


def _interpreter(version: str) -> Optional[str]:
    """A real python<version> binary on this machine (not a pyenv shim)."""
    base = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    if version == f"{sys.version_info.major}.{sys.version_info.minor}":
        return base
    for pattern in (f"{Path.home()}/.pyenv/versions/{version}.*/bin/python{version}",
                    f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"):
        for path in sorted(glob.glob(pattern)):
            if subprocess.run([path, "-c", "pass"], capture_output=True).returncode == 0:
                return path
    return None


def image_python() -> tuple[str, str]:
    """(path, version) of the image's python3: 3.10 like Ubuntu 22.04 where this machine
    has one, else the only one there is."""
    p = _interpreter("3.10")
    return (p, "3.10") if p else (_interpreter("3.11"), "3.11")


def workdir_files() -> list[str]:
    """What SkyPilot syncs as the workdir: the tree minus what .gitignore excludes."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    return [f for f in out.splitlines() if (REPO / f).is_file()]


@dataclass
class Node:
    fabric: Fabric
    ns: str
    ip: str
    nic: str
    root: Path
    base_env: dict
    home: Path = field(init=False)
    setup_seconds: Optional[float] = None

    def __post_init__(self) -> None:
        self.home = self.root / "home"
        (self.home / ".local" / "bin").mkdir(parents=True)
        (self.root / "tmp").mkdir()
        (self.root / "image-bin").mkdir()
        os.symlink(shutil.which("uv", path=str(Path(sys.executable).parent)),
                   self.home / ".local" / "bin" / "uv")
        py, _ = image_python()
        os.symlink(py, self.root / "image-bin" / "python3")
        os.symlink(_interpreter("3.11"), self.root / "image-bin" / "python3.11")
        work = self.home / "sky_workdir"
        for f in workdir_files():
            (work / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, work / f)

    @property
    def env(self) -> dict:
        return {**self.base_env, "HOME": str(self.home), "TMPDIR": str(self.root / "tmp"),
                "PATH": f"{self.home}/.local/bin:{self.root}/image-bin:/usr/bin:/bin",
                "GLOO_SOCKET_IFNAME": self.nic}

    def popen(self, command: str, log: Path) -> subprocess.Popen:
        f = open(log, "wb")
        try:
            return subprocess.Popen(["ip", "netns", "exec", self.ns, "/bin/bash", "-c", command],
                                    env=self.env, stdin=subprocess.DEVNULL, stdout=f,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            f.close()

    def make_user_env(self) -> None:
        """~/sky-user-env from the image's python3, by SkyPilot's own command."""
        from sky.skylet import constants

        p = self.popen(constants.SKY_USER_ENV_CREATION_COMMANDS, self.root / "user-env.log")
        p.wait(timeout=300)

    def script(self, name: str, text: str) -> Path:
        path = self.root / name
        path.write_text(text)
        return path


def cluster_envs(task, nodes: list[Node], cluster: str) -> dict:
    """What SkyPilot puts in every node's environment for this task (both sections)."""
    from sky import task as task_lib

    envs = task_lib.get_plaintext_envs_and_secrets(task.envs_and_secrets)
    envs["SKYPILOT_CLUSTER_INFO"] = json.dumps({"cluster_name": cluster, "cloud": "AWS",
                                               "region": "us-east-1", "zone": "us-east-1a"})
    envs["SKYPILOT_USER"] = "rehearsal"
    return envs


def run_setup(task, nodes: list[Node], cluster: str, timeout: float = 900) -> list[int]:
    """setup on every node at once, as the managed job's driver does; sets setup_seconds."""
    from sky.skylet import log_lib

    procs = []
    for rank, node in enumerate(nodes):
        envs = {**cluster_envs(task, nodes, cluster),
                "SKYPILOT_SETUP_NODE_IPS": "\n".join(n.ip for n in nodes),
                "SKYPILOT_SETUP_NODE_RANK": str(rank),
                "SKYPILOT_SETUP_NUM_GPUS_PER_NODE": "0",
                "SKYPILOT_NUM_NODES": str(len(nodes))}
        path = node.script("sky_setup.sh", log_lib.make_task_bash_script(task.setup, envs))
        cmd = f"unset CUDA_VISIBLE_DEVICES; unset RAY_RAYLET_PID; /bin/bash -i {path} 2>&1"
        procs.append((node, time.time(), node.popen(cmd, node.root / "setup.log")))
    codes = []
    for node, t0, p in procs:
        codes.append(p.wait(timeout=timeout))
        node.setup_seconds = time.time() - t0
    return codes


def start_run(task, nodes: list[Node], cluster: str, job_id: int = 1,
              task_id: str | None = None) -> list[subprocess.Popen]:
    """The run section on every node at once, with SkyPilot's variables. ``task_id``: a
    recovery of a managed job keeps its SKYPILOT_TASK_ID (the run lease's owner)."""
    from sky.backends.task_codegen import TaskCodeGen
    from sky.skylet import log_lib

    body = TaskCodeGen.build_task_bash_script(task.run, env_prefix="unset RAY_RAYLET_PID")
    procs = []
    for rank, node in enumerate(nodes):
        envs = {**cluster_envs(task, nodes, cluster),
                "SKYPILOT_TASK_ID": task_id or f"sky-managed-rehearsal_{cluster}_{job_id}",
                "SKYPILOT_NODE_IPS": "\n".join(n.ip for n in nodes),
                "SKYPILOT_NUM_NODES": str(len(nodes)),
                # ceil(num_gpus) of the task's resources: a CPU task asks for none.
                "SKYPILOT_NUM_GPUS_PER_NODE": "0",
                "SKYPILOT_NODE_RANK": str(rank),
                "SKYPILOT_INTERNAL_JOB_ID": str(job_id)}
        path = node.script(f"sky_run_{job_id}.sh", log_lib.make_task_bash_script(body, envs))
        procs.append(node.popen(f"/bin/bash -i {path}", node.root / f"run-{job_id}.log"))
    return procs
