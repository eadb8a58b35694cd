"""``status`` and ``show`` say what is true of a daemon and of the runs it held, through the
installed ``qtasks`` against real daemons: a SIGSTOPped daemon is late (no answer within about
2 s), a SIGKILLed one is gone and its runs are said to be on a daemon that is gone (and are
then concluded interrupted, as said), and a daemon in its own pid namespace is judged by its
namespace or its heartbeat, never by a pid that means another process here."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import QTASKS, clean_env
from test_operate import qt, rows, status_json, wait_until

from qtasks_cli.liveness import INIT_PID_NS, find_in_namespace, judge
from qtasks_cli.models import RunResult
from qtasks_cli.store.base import local_key
from qtasks_cli.store.control import DaemonInfo, process_start

WORK = """
import time
from pathlib import Path

async def tick():
    pass

def slow():
    Path("slow.started").write_text("x")
    time.sleep(3600)
"""

JOBS = """
settings:
  shutdown_grace: 1s
jobs:
  tick:
    entrypoint: work:tick
    schedule: '* * * * * *'
  slow:
    entrypoint: work:slow
"""


def _slow_running(path: Path, daemon: Any) -> str:
    run_id = qt(path, "trigger", "slow", "--enqueue").stdout.strip()
    wait_until(lambda: (path.parent / "slow.started").exists(), what="slow started")
    return run_id


def test_a_stopped_daemon_is_late_and_answers_again_when_continued(project, daemons) -> None:
    path = project(JOBS, work=WORK)
    daemon = daemons([str(path)], cwd=path.parent)
    daemon.wait_for(lambda log: "qtasks ready" in log)
    run_id = _slow_running(path, daemon)
    _code, data = wait_until(lambda: (s := status_json(path))[0] == 0 and s, what="up")
    assert data["daemons"][0]["responsive"] is True
    daemon.proc.send_signal(signal.SIGSTOP)
    try:
        result = qt(path, "status")
        _code, data = status_json(path)
    finally:
        daemon.proc.send_signal(signal.SIGCONT)
    # Its process exists: up (exit 0), as systemd says of a stopped process, but late.
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("1 daemon up, 1 not answering on"), result.stdout
    assert "late: no answer within 2s" in result.stdout
    [node] = data["daemons"]
    assert node["alive"] is True and node["responsive"] is False
    [slow] = [j for j in data["jobs"] if j["name"] == "slow"]
    assert [(r["run_id"], r["daemon"]) for r in slow["running"]] == [(run_id, "late")]
    # Continued, it answers again.
    wait_until(
        lambda: status_json(path)[1]["daemons"][0]["responsive"] is True, what="answers again"
    )
    assert daemon.stop() == 0


def test_runs_of_a_killed_daemon_are_said_to_be_on_a_daemon_that_is_gone(project, daemons) -> None:
    path = project(JOBS, work=WORK)
    daemon = daemons([str(path)], cwd=path.parent)
    daemon.wait_for(lambda log: "qtasks ready" in log)
    run_id = _slow_running(path, daemon)
    behind = qt(path, "trigger", "slow", "--enqueue").stdout.strip()  # waits behind run_id
    wait_until(
        lambda: any(r["run_id"] == behind and r["status"] == "claimed" for r in rows(path)),
        what="the second run taken",
    )
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait(timeout=10)

    # A cancel of a run nothing runs any more says so at once, and is kept.
    cancelled = qt(path, "cancel", behind)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "its daemon is gone; the cancel is kept" in cancelled.stdout, cancelled.stdout

    result = qt(path, "status")
    assert result.returncode == 3
    line = next(x for x in result.stdout.splitlines() if x.startswith("slow "))
    assert "running on a daemon that is gone" in line, result.stdout
    assert "marked interrupted at the next start" in line
    assert "running since" not in line
    _code, data = status_json(path)
    [slow] = [j for j in data["jobs"] if j["name"] == "slow"]
    assert slow["state"] == "orphaned" and slow["running"] == []
    assert {(r["run_id"], r["daemon"]) for r in slow["orphaned"]} == {
        (run_id, "gone"),
        (behind, "gone"),
    }

    shown = qt(path, "show", run_id)
    assert shown.returncode == 0
    first = shown.stdout.splitlines()[0]
    assert first.startswith(f"run {run_id} of job slow: running on a daemon that is gone"), first
    as_json = json.loads(qt(path, "show", run_id, "--json").stdout)
    assert as_json["status"] == "running" and as_json["daemon"] == "gone"

    # What was said comes true: the next start concludes it interrupted.
    again = daemons([str(path)], cwd=path.parent)
    again.wait_for(lambda log: "qtasks ready" in log)
    [row] = [r for r in rows(path, "slow") if r["run_id"] == run_id]
    assert row["status"] == "interrupted"
    # The kept cancel: cancelled, never given back to the queue, and reported once.
    [row] = [r for r in rows(path, "slow") if r["run_id"] == behind]
    assert row["status"] == "cancelled" and row["error"].startswith("cancelled by "), row
    again.wait_for(lambda log: f"{behind} cancelled" in log)
    assert "running on a daemon" not in qt(path, "show", run_id).stdout.splitlines()[0]
    assert again.stop() == 0


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    try:
        done = subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.mark.skipif(not _unshare_works(), reason="unshare --pid is not permitted here")
def test_a_daemon_in_its_own_pid_namespace_is_up_until_it_is_killed(project) -> None:
    path = project(JOBS, work=WORK)
    log = (path.parent / "daemon.log").open("w")
    proc = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
         QTASKS, "run", "--ui", "plain", str(path)],
        cwd=path.parent, stdout=log, stderr=subprocess.STDOUT, env=clean_env(),
    )  # fmt: skip
    try:
        _code, data = wait_until(lambda: (s := status_json(path))[0] == 0 and s, what="up")
        [node] = data["daemons"]
        assert node["pid"] != proc.pid  # its pid in its own namespace (1 under --fork)
        assert node["alive"] is True and node["responsive"] is True
        assert node["judged_by"] in ("namespace", "heartbeat")
        assert "in another pid namespace" in qt(path, "status").stdout
    finally:
        proc.kill()  # --kill-child: the daemon goes with it
        proc.wait(timeout=10)
        log.close()
    if os.stat("/proc/self/ns/pid").st_ino == INIT_PID_NS:
        # From the initial namespace every process is seen: gone at once.
        wait_until(lambda: qt(path, "status").returncode == 3, what="gone")
    else:
        assert status_json(path)[1]["daemons"][0]["responsive"] is False


# --- units -------------------------------------------------------------------------------------


def _me(**changes: Any) -> DaemonInfo:
    now = datetime.now(timezone.utc)
    info = DaemonInfo(
        node_id="n", host=socket.gethostname(), pid=os.getpid(), started=now, last_seen=now,
        version="v", config="c", digest="d", every=60.0, pid_start=process_start(os.getpid()),
        local_key=local_key() or None,
    )  # fmt: skip
    return dataclasses.replace(info, **changes)


def test_a_pid_is_looked_up_only_within_its_namespace() -> None:
    here = socket.gethostname()
    now = datetime.now(timezone.utc)
    boot = (local_key() or "boot:1").rpartition(":")[0]
    stale = now - timedelta(hours=1)
    # Another namespace on this boot, with our pid: not this process. No process of that
    # namespace exists, so it is gone when we see every process, else its heartbeat decides.
    other = _me(local_key=f"{boot}:12345", last_seen=stale)
    alive, how = judge(other, now, here)
    if os.stat("/proc/self/ns/pid").st_ino == INIT_PID_NS:
        assert (alive, how) == (False, "namespace")
    else:
        assert (alive, how) == (False, "heartbeat")
    fresh = dataclasses.replace(other, last_seen=now)
    if how == "heartbeat":
        assert judge(fresh, now, here) == (True, "heartbeat")
    # Another boot: the pid tells nothing; the heartbeat does.
    assert judge(_me(local_key="other-boot:1", last_seen=now), now, here) == (True, "heartbeat")
    assert judge(_me(local_key="other-boot:1", last_seen=stale), now, here)[0] is False
    # The same namespace: the process itself.
    assert judge(_me(last_seen=stale), now, here) == (True, "process")


@pytest.mark.skipif(not Path("/proc/self/ns/pid").exists(), reason="Linux namespaces")
def test_find_in_namespace_finds_this_process_and_no_dead_one() -> None:
    namespace = os.stat("/proc/self/ns/pid").st_ino
    pid = os.getpid()
    assert find_in_namespace(pid, namespace, process_start(pid)) is True
    assert find_in_namespace(pid, namespace, (process_start(pid) or 0) + 1) is False
    child = subprocess.Popen(["true"])
    child.wait()
    assert find_in_namespace(child.pid, namespace, None) is False


def test_whose_run_is_told_by_its_daemons_liveness() -> None:
    from qtasks_cli.models import RunStatus, TriggerKind
    from qtasks_cli.status import (
        OWNER_ANSWERING,
        OWNER_GONE,
        OWNER_LATE,
        OWNER_UNKNOWN,
        daemon_views,
        owner_state,
    )

    here = socket.gethostname()
    now = datetime.now(timezone.utc)
    me = _me(node_id="me")
    dead = _me(node_id="dead", pid_start=(me.pid_start or 0) + 1)
    views = daemon_views(None, [me, dead], now=now, host=here, answered=set())
    by_node = {v.info.node_id: v for v in views}
    assert by_node["me"].alive and not by_node["me"].responsive  # asked, did not answer
    assert not by_node["dead"].alive

    def run(node: str | None, **more: Any) -> RunResult:
        return RunResult(
            run_id="r", job="j", trigger=more.pop("trigger", TriggerKind.SCHEDULE),
            scheduled=None, started=now, ended=None, status=RunStatus.RUNNING, node=node, **more,
        )  # fmt: skip

    assert owner_state(run("me"), views, here=here) == OWNER_LATE
    answered = daemon_views(None, [me], now=now, host=here, answered={"me"})
    assert owner_state(run("me"), answered, here=here) == OWNER_ANSWERING
    assert owner_state(run("dead"), views, here=here) == OWNER_GONE
    assert owner_state(run("elsewhere:1"), views, here=here) == OWNER_UNKNOWN
    gone_pid = subprocess.Popen(["true"])
    gone_pid.wait()
    manual = run("x", trigger=TriggerKind.MANUAL, pid=gone_pid.pid, host=here)
    assert owner_state(manual, views, here=here) == OWNER_GONE
    mine = run("x", trigger=TriggerKind.MANUAL, pid=os.getpid(), host=here)
    assert owner_state(mine, views, here=here) == OWNER_ANSWERING
    # A daemon that cannot be woken at once is judged by its heartbeat, not by silence.
    unwoken = dataclasses.replace(me, wakeable=False)
    [view] = daemon_views(None, [unwoken], now=now, host=here, answered=set())
    assert view.responsive
