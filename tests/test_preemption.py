"""The preemption watcher against a local emulation of AWS IMDSv2 and GCP metadata."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from train.preemption import (
    AwsSpotNotice, GcpPreemptedNotice, PreemptionWatcher, sources_for,
)

from helpers.metadata_server import MetadataServer


@pytest.fixture
def md():
    with MetadataServer() as server:
        yield server


def test_aws_imdsv2_needs_token_and_reports_notice(md):
    src = AwsSpotNotice(md.url)
    assert src.poll() is None                      # 404: no notice yet
    assert ("PUT", "/latest/api/token", 200) in md.requests
    md.preempt()
    notice = json.loads(src.poll())
    assert notice["action"] == "terminate"
    # The emulator really enforces the token: a bare GET is refused.
    import urllib.error
    import urllib.request
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{md.url}/latest/meta-data/spot/instance-action")
    assert e.value.code == 401
    # One token serves many polls.
    assert sum(1 for r in md.requests if r[0] == "PUT") == 1


def test_gcp_needs_flavor_header(md):
    src = GcpPreemptedNotice(md.url)
    assert src.poll() is None
    md.preempt()
    assert src.poll() == "TRUE"
    import urllib.error
    import urllib.request
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{md.url}/computeMetadata/v1/instance/preempted")
    assert e.value.code == 403


def test_watcher_thread_sets_event_with_window(md):
    md.notice_after_polls = 3
    w = PreemptionWatcher([GcpPreemptedNotice(md.url)], poll_s=0.02, handle_sigterm=False)
    assert w.window_s == float("inf")
    w.start()
    assert w.event.wait(5.0)
    w.close()
    assert w.reason == "gcp" and md.polls >= 3
    assert 25.0 < w.window_s <= 30.0  # GCP gives 30 s


def test_unreachable_service_is_dropped_but_blips_are_not(md):
    dead = AwsSpotNotice("http://127.0.0.1:9", timeout_s=0.2)
    live = GcpPreemptedNotice(md.url)
    w = PreemptionWatcher([dead, live], poll_s=0.01, handle_sigterm=False)
    assert w.poll_once() is False
    assert w.sources == [live]
    md.stop()                      # the live one answered before: keep polling it
    assert w.poll_once() is False
    assert w.sources == [live]


def test_sigterm_sets_event():
    w = PreemptionWatcher([], handle_sigterm=True)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 2
        while not w.event.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert w.event.is_set() and w.reason == "sigterm"
    finally:
        w.close()
    assert signal.getsignal(signal.SIGTERM) is not w._on_sigterm


def test_sources_for_local_only_from_env(monkeypatch):
    monkeypatch.delenv("VICUNA_AWS_METADATA_URL", raising=False)
    monkeypatch.delenv("VICUNA_GCP_METADATA_URL", raising=False)
    assert sources_for("local") == []
    monkeypatch.setenv("VICUNA_AWS_METADATA_URL", "http://127.0.0.1:1")
    assert [s.name for s in sources_for("local")] == ["aws"]
    assert [s.name for s in sources_for("any")] == ["aws", "gcp"]
    assert sources_for("aws")[0].base == "http://127.0.0.1:1"
