"""Preemption notices: AWS IMDSv2, GCP metadata, and SIGTERM, turned into one Event.

A daemon thread polls the cloud's metadata service (cheap, local link) every few seconds;
SIGTERM (what SkyPilot and torchrun send before killing) sets the same Event. The training
loop only reads ``watcher.event``; CheckpointManager turns it into an agreed stop across
ranks and an emergency checkpoint when one fits in ``window_s``.

Base URLs come from env vars so tests point them at tests/metadata_server.py:
VICUNA_AWS_METADATA_URL (default http://169.254.169.254) and VICUNA_GCP_METADATA_URL
(default http://metadata.google.internal).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from typing import Optional

log = logging.getLogger("train.preemption")

AWS_DEFAULT_URL = "http://169.254.169.254"
GCP_DEFAULT_URL = "http://metadata.google.internal"
# Warning windows the clouds promise before the VM goes away. A trainer whose supervisor
# is gone (vicuna_cloud/supervision.py) has no deadline: its checkpoint always fits.
WINDOW_S = {"aws": 120.0, "gcp": 30.0, "sigterm": 30.0, "supervisor": 3600.0}


class AwsSpotNotice:
    """IMDSv2: PUT a session token, then GET spot/instance-action (404 until a notice)."""

    name = "aws"

    def __init__(self, base_url: Optional[str] = None, timeout_s: float = 1.0):
        self.base = (base_url or os.environ.get("VICUNA_AWS_METADATA_URL") or AWS_DEFAULT_URL).rstrip("/")
        self.timeout_s = timeout_s
        self._token: Optional[str] = None
        self._token_expires = 0.0

    def _get_token(self) -> str:
        if self._token is None or time.monotonic() > self._token_expires:
            req = urllib.request.Request(
                f"{self.base}/latest/api/token", method="PUT",
                headers={"X-aws-ec2-metadata-token-ttl-seconds": "21600"})
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                self._token = r.read().decode().strip()
            self._token_expires = time.monotonic() + 21600 - 60
        return self._token

    def poll(self) -> Optional[str]:
        """The notice body (JSON with action and time) or None."""
        token = self._get_token()
        req = urllib.request.Request(f"{self.base}/latest/meta-data/spot/instance-action",
                                     headers={"X-aws-ec2-metadata-token": token})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                return r.read().decode()
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            if e.code == 401:  # token expired or revoked: fetch a new one next time
                self._token = None
                return None
            raise


class GcpPreemptedNotice:
    """GCP: GET instance/preempted with Metadata-Flavor: Google; 'TRUE' means preempted."""

    name = "gcp"

    def __init__(self, base_url: Optional[str] = None, timeout_s: float = 1.0):
        self.base = (base_url or os.environ.get("VICUNA_GCP_METADATA_URL") or GCP_DEFAULT_URL).rstrip("/")
        self.timeout_s = timeout_s

    def poll(self) -> Optional[str]:
        req = urllib.request.Request(f"{self.base}/computeMetadata/v1/instance/preempted",
                                     headers={"Metadata-Flavor": "Google"})
        with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
            body = r.read().decode().strip()
        return body if body.upper() == "TRUE" else None


class SupervisorGone:
    """A local supervisor (the launcher) that died, SIGKILLed, with its trainers alive:
    nobody will restart or cancel them, their output goes nowhere, and their lease keeps
    the user's relaunch out. Noticed like a preemption: stop at the next step boundary,
    checkpoint, then the trainer releases the lease (vicuna_cloud/supervision.py)."""

    name = "supervisor"

    def __init__(self, token: str):
        self.token = token

    def poll(self) -> Optional[str]:
        from vicuna_cloud.supervision import gone

        why = gone(self.token)
        if why:
            _silence_output()
        return why


def _silence_output() -> None:
    """stdout/stderr were a pipe to the dead launcher: every write would raise
    BrokenPipeError (a crash mid-checkpoint); from now on they go to /dev/null."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        for fd in (1, 2):
            os.dup2(null, fd)
        os.close(null)
    except OSError:
        pass


def sources_for(cloud: str) -> list:
    """Which metadata services to poll. 'any' probes both; unreachable ones are dropped.

    'local' polls only the services whose URL is set in the environment (tests, demos).
    Under a local supervisor (VICUNA_SUPERVISOR set), its liveness is polled too.
    """
    from vicuna_cloud.supervision import SUPERVISOR_ENV

    token = os.environ.get(SUPERVISOR_ENV)
    extra = [SupervisorGone(token)] if token else []
    if cloud == "aws":
        return [AwsSpotNotice()] + extra
    if cloud == "gcp":
        return [GcpPreemptedNotice()] + extra
    if cloud == "local":
        return ([AwsSpotNotice()] if os.environ.get("VICUNA_AWS_METADATA_URL") else []) + \
            ([GcpPreemptedNotice()] if os.environ.get("VICUNA_GCP_METADATA_URL") else []) + extra
    return [AwsSpotNotice(), GcpPreemptedNotice()] + extra


def default_poll_s() -> float:
    return float(os.environ.get("VICUNA_PREEMPTION_POLL_S", "5"))


class PreemptionWatcher:
    """Sets ``event`` on a cloud notice or SIGTERM; records which and when."""

    def __init__(self, sources: Optional[list] = None, *, poll_s: Optional[float] = None,
                 handle_sigterm: bool = True, window_s: Optional[dict] = None):
        self.sources = list(sources or [])
        self.poll_s = poll_s if poll_s is not None else default_poll_s()
        self.event = threading.Event()
        self.reason: Optional[str] = None
        self.detail: Optional[str] = None
        self.noticed_at: Optional[float] = None  # time.monotonic()
        self.windows = dict(WINDOW_S, **(window_s or {}))
        self._answered: set[str] = set()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._old_handler = None
        if handle_sigterm and threading.current_thread() is threading.main_thread():
            self._old_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

    # --- notices ----------------------------------------------------------------------
    def notify(self, reason: str, detail: str = "") -> None:
        if not self.event.is_set():
            self.reason, self.detail, self.noticed_at = reason, detail, time.monotonic()
            log.warning("preemption notice (%s)%s", reason, f": {detail}" if detail else "")
            self.event.set()

    def _on_sigterm(self, signum, frame) -> None:
        self.notify("sigterm", "SIGTERM received")

    @property
    def window_s(self) -> float:
        """Seconds left before the VM goes (from the notice); inf before any notice."""
        if self.noticed_at is None:
            return float("inf")
        window = self.windows.get(self.reason or "sigterm", WINDOW_S["sigterm"])
        return window - (time.monotonic() - self.noticed_at)

    # --- polling ----------------------------------------------------------------------
    def poll_once(self) -> bool:
        for src in list(self.sources):
            try:
                body = src.poll()
            except (OSError, urllib.error.URLError) as e:
                # Never answered: not on this cloud; stop asking so a wrong guess costs one
                # timeout. Answered before: a blip; keep polling.
                if src.name not in self._answered:
                    log.info("metadata service %s unreachable (%s); not polling it", src.name, e)
                    self.sources.remove(src)
                continue
            self._answered.add(src.name)
            if body is not None:
                self.notify(src.name, body)
                return True
        return self.event.is_set()

    def _run(self) -> None:
        while not self._stop.is_set() and not self.event.is_set() and self.sources:
            self.poll_once()
            self._stop.wait(self.poll_s)

    def start(self) -> "PreemptionWatcher":
        if self.sources and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="preemption-watcher",
                                            daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.poll_s + 2)
        if self._old_handler is not None:
            try:
                signal.signal(signal.SIGTERM, self._old_handler)
            except ValueError:
                pass
            self._old_handler = None
