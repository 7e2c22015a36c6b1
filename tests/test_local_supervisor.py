"""Supervisor policy with a small real child program (tests/helpers/children/supervised_worker.py).

No torchrun here: the restart / kill / exit-code policy is independent of what runs.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from vicuna_cloud.exit_codes import EXIT_CONFIG
from vicuna_cloud.local.live_view import MetricsTail
from vicuna_cloud.local.supervisor import (
    EXIT_CANCELLED, PreemptionPlan, Supervisor, SupervisorConfig,
)
from vicuna_cloud.storage import open_bucket

WORKER = str(Path(__file__).parent / "helpers" / "children" / "supervised_worker.py")

# Real child processes run, killed and restarted, 1-2 s a test: `make test`, not test-fast.
pytestmark = pytest.mark.slow


def make(tmp_path, mode="ok", total=20, dt=0.05, **cfg):
    env = dict(os.environ, METRICS=str(tmp_path / "metrics.jsonl"), STATE=str(tmp_path / "state"),
               TOTAL=str(total), DT=str(dt), MODE=mode, CANCELLED=str(tmp_path / "cancelled"),
               PIDS=str(tmp_path / "pids"))
    probe = MetricsTail(open_bucket(str(tmp_path)), "metrics.jsonl")
    cfg.setdefault("restart_delay_s", 0.01)
    sup = Supervisor([sys.executable, WORKER], config=SupervisorConfig(**cfg), probe=probe,
                     env=env, log_path=str(tmp_path / "log.txt"))
    return sup


def steps(tmp_path) -> list[int]:
    import json
    return [json.loads(l)["step"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]


def test_plan_is_seeded_increasing_and_inside_the_run():
    a, b = PreemptionPlan(3, seed=7), PreemptionPlan(3, seed=7)
    assert a.fractions == b.fractions
    assert a.fractions != PreemptionPlan(3, seed=8).fractions
    t = a.targets(40)
    assert t == sorted(set(t)) and 1 <= t[0] and t[-1] <= 39
    # Even a run shorter than the number of preemptions keeps targets strictly inside.
    assert all(1 <= x <= 2 for x in PreemptionPlan(5, seed=1).targets(3))


def test_success_runs_once(tmp_path):
    sup = make(tmp_path)
    res = sup.run()
    assert not os.path.exists(sup._exit_code_dir)  # its temp dir goes with it
    assert (res.exit_code, res.outcome, len(res.attempts)) == (0, "completed", 1)
    assert steps(tmp_path) == list(range(1, 21))
    assert "step 20" in (tmp_path / "log.txt").read_text()


def test_preemptions_kill_and_resume(tmp_path):
    res = make(tmp_path, preemptions=2, seed=3, total=30).run()
    assert res.exit_code == 0 and res.preemptions == 2
    assert [a.outcome for a in res.attempts] == ["preempted", "preempted", "completed"]
    targets = PreemptionPlan(2, seed=3).targets(30)
    for attempt, target in zip(res.attempts, targets):
        assert attempt.last_step >= target
    # Each restart resumed from its "checkpoint" (the state file), never from zero.
    s = steps(tmp_path)
    assert s[-1] == 30 and s.count(1) == 1
    assert res.attempts[1].first_step > 1 and res.attempts[2].first_step > res.attempts[1].first_step


def test_config_error_is_not_restarted(tmp_path):
    res = make(tmp_path, mode="config").run()
    assert (res.exit_code, res.outcome, len(res.attempts)) == (EXIT_CONFIG, "config", 1)


def test_failures_are_bounded(tmp_path):
    res = make(tmp_path, mode="fail", max_failures=2).run()
    assert res.outcome == "failed" and res.exit_code == 3
    assert len(res.attempts) == 3  # the first try plus two restarts


def test_clean_exit_after_notice_recovers_without_counting_a_failure(tmp_path):
    res = make(tmp_path, mode="notice-once", max_failures=0).run()
    assert res.exit_code == 0
    assert [a.outcome for a in res.attempts] == ["recovering", "completed"]


def test_preemption_kills_workers_in_their_own_session(tmp_path):
    # Like torchrun, the child starts its worker with start_new_session: the kill must
    # still reach it (a process-group kill alone would leave it running).
    res = make(tmp_path, mode="spawn", preemptions=1, seed=0, total=30).run()
    assert res.exit_code == 0 and res.preemptions == 1
    pids = [int(x) for x in (tmp_path / "pids").read_text().split()]
    assert len(pids) == 4
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    # The killed worker did not keep writing: steps are a clean resume, not two writers.
    s = steps(tmp_path)
    assert s[-1] == 30 and sorted(set(s)) == list(range(1, 31))
    assert len(s) <= 31  # at most the one step between a metrics line and its "checkpoint"



def test_ctrl_c_signals_every_worker_then_runs_on_cancel(tmp_path):
    cancelled_hook = []
    sup = make(tmp_path, mode="spawn", total=10_000, dt=0.05, grace_s=5)
    sup.on_cancel = lambda: cancelled_hook.append(True)
    main_thread = threading.main_thread().ident

    def interrupt():
        deadline = time.time() + 20
        while time.time() < deadline and not (tmp_path / "metrics.jsonl").exists():
            time.sleep(0.05)
        signal.pthread_kill(main_thread, signal.SIGINT)  # what Ctrl-C delivers

    threading.Thread(target=interrupt, daemon=True).start()
    res = sup.run()
    assert (res.exit_code, res.outcome) == (EXIT_CANCELLED, "cancelled")
    assert res.attempts[-1].outcome == "cancelled" and cancelled_hook == [True]
    pids = [int(x) for x in (tmp_path / "pids").read_text().split()]
    # The grandchild (own session) got the cancel signal and handled it; nobody is left.
    assert str(pids[1]) in (tmp_path / "cancelled").read_text().split()
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]


def test_ctrl_c_kills_a_child_that_ignores_the_signal_after_the_grace_period(tmp_path):
    sup = make(tmp_path, mode="stubborn", total=10_000, grace_s=1.0)
    main_thread = threading.main_thread().ident
    seen = []
    # Session servers (fake-gcs-server) are children of this process too: not ours to judge.
    before = {p.pid for p in psutil.Process(os.getpid()).children(recursive=True)}

    def interrupt():
        deadline = time.time() + 20
        while time.time() < deadline and not (tmp_path / "metrics.jsonl").exists():
            time.sleep(0.05)
        seen.extend(proc for proc in psutil.Process(os.getpid()).children(recursive=True)
                    if proc.pid not in before)
        signal.pthread_kill(main_thread, signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    t0 = time.monotonic()
    res = sup.run()
    assert res.outcome == "cancelled" and res.attempts[-1].exit_code == -signal.SIGKILL
    assert time.monotonic() - t0 < 20
    assert seen and not [p for p in seen if p.is_running() and p.status() != "zombie"]


def test_trainer_exit_code_is_read_through_the_launcher(tmp_path):
    """torchrun exits 1 for any failing worker; the supervisor reads the trainer's own code
    from VICUNA_EXIT_CODE_FILE, so a bad config (78) is not retried as a crash."""
    res = make(tmp_path, mode="config-via-launcher").run()
    assert (res.exit_code, res.outcome, len(res.attempts)) == (EXIT_CONFIG, "config", 1)


def _live(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_group_kill_of_the_launcher_alone_never_leaves_workers_beside_the_next_attempt(tmp_path):
    """Issue 14 #1: `kill -9` of torchrun's process group alone left its workers (own
    sessions, adopted by init) running, and the next attempt started beside them. The
    supervisor is their subreaper now: it finds them by their tag and ends them first."""
    sup = make(tmp_path, mode="spawn", total=60, dt=0.1, max_failures=3)
    alive_at_restart: list[bool] = []
    pids_file = tmp_path / "pids"

    def on_event(kind, attempt):
        if kind == "started" and attempt.index == 1:
            first = [int(x) for x in pids_file.read_text().split()][:2]
            alive_at_restart.extend(_live(p) for p in first)

    sup.on_event = on_event

    def kill_group():
        deadline = time.time() + 30
        while time.time() < deadline:
            if pids_file.exists() and len(pids_file.read_text().split()) >= 2 \
                    and (tmp_path / "metrics.jsonl").exists():
                break
            time.sleep(0.05)
        leader = int(pids_file.read_text().split()[0])
        os.killpg(leader, signal.SIGKILL)  # the group only: the worker is in its own session

    threading.Thread(target=kill_group, daemon=True).start()
    res = sup.run()
    assert res.exit_code == 0 and [a.outcome for a in res.attempts] == ["failed", "completed"]
    assert alive_at_restart == [False, False]
    s = steps(tmp_path)  # one writer at a time: a clean resume, no step written twice over
    assert s[-1] == 60 and sorted(set(s)) == list(range(1, 61)) and len(s) <= 61


def test_temp_files_live_under_the_run_and_a_killed_launchers_are_removed(tmp_path):
    """Issue 14 #10: a SIGKILLed launcher left /tmp/vicuna-supervisor-*."""
    root = tmp_path / "tmp"
    stale = root / "supervisor-4194300-abc"  # a pid above pid_max: that launcher is gone
    stale.mkdir(parents=True)
    (stale / "exit-code").write_text("75")
    sup = make(tmp_path)
    sup2 = Supervisor([sys.executable, WORKER], config=SupervisorConfig(restart_delay_s=0.01),
                      env=sup.env, temp_root=str(root))
    assert not stale.exists() and sup2._exit_code_dir.startswith(str(root))
    assert sup2.run().exit_code == 0
    assert list(root.iterdir()) == []


def test_stop_check_ends_the_attempt_and_the_run(tmp_path):
    """The run lease lost (another writer took over): kill, do not restart."""
    sup = make(tmp_path, total=10_000)
    t0 = time.monotonic()
    sup.stop_check = lambda: "lease lost" if time.monotonic() - t0 > 1.0 else None
    res = sup.run()
    assert res.outcome == "stopped" and len(res.attempts) == 1
    pids = [a.pid for a in res.attempts]
    assert not any(_live(p) for p in pids)
