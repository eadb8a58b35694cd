"""A clean stop leaves no run ``running`` in the history: every run that was going is recorded
as it ended, or ``cancelled`` when it would not end.

Attacked with the runs a stop cannot end on time: a child that ignores SIGTERM under a
``kill_grace`` longer than the stop used to wait after its cancel (5 s), and an async job that
swallows every cancellation, so its task never ends before the daemon exits.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import QTASKS, clean_env, run_qtasks

JOBS = """
settings:
  shutdown_grace: 0s
jobs:
  deaf_child:
    entrypoint: stubborn:deaf_child
    schedule: "@startup"
    isolation: process
    kill_grace: 7s
  swallows_cancel:
    entrypoint: stubborn:swallows_cancel
    schedule: "@startup"
"""

STUBBORN = """
import asyncio
import os
import signal
import time
from pathlib import Path


def deaf_child():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Path("deaf.started").touch()
    while True:
        time.sleep(0.1)


async def swallows_cancel():
    Path("swallow.started").touch()
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass
"""


def rows(path: Path) -> list[dict[str, Any]]:
    listed = run_qtasks("history", "--json", "-c", str(path), cwd=path.parent)
    assert listed.returncode == 0, listed.stderr
    return [json.loads(line) for line in listed.stdout.splitlines()]


def test_a_stop_records_every_run_it_could_not_end(project: Any, daemons: Any) -> None:
    path = project(JOBS, stubborn=STUBBORN)
    daemon = daemons([str(path)], cwd=path.parent)
    folder = path.parent
    daemon.wait_for(lambda _: (folder / "deaf.started").exists(), timeout=30)
    daemon.wait_for(lambda _: (folder / "swallow.started").exists(), timeout=30)
    # kill_grace 7 s, and the stop waits for the SIGKILL and the reap: well inside 60 s.
    assert daemon.stop(signal.SIGTERM, timeout=60) == 0, daemon.output
    by_job = {r["job"]: r for r in rows(path)}
    assert not [r for r in by_job.values() if r["status"] in ("running", "claimed")], by_job
    deaf = by_job["deaf_child"]
    assert deaf["status"] == "cancelled", deaf
    assert deaf["error"] == "cancelled at shutdown", deaf
    assert deaf["started"] is not None
    assert "sending SIGKILL" in daemon.output
    swallowed = by_job["swallows_cancel"]
    assert swallowed["status"] == "cancelled", swallowed
    assert "had not stopped when the daemon exited" in swallowed["error"], swallowed
    assert swallowed["started"] is not None  # the start it had is kept


HOOK_JOBS = """
settings:
  shutdown_grace: 6s
jobs:
  report:
    entrypoint: hooked:report
    schedule: "@startup"
    on_success: hooked:notify
"""

HOOKED = """
import asyncio
import time
from pathlib import Path


async def report():
    Path("report.started").touch()
    await asyncio.sleep(4)  # ends inside the stop's grace
    return "ok"


def notify(result):
    time.sleep(1000)  # a webhook that never answers
"""


def log_time(log: str, text: str) -> datetime:
    line = next(line for line in log.splitlines() if text in line)
    return datetime.fromisoformat(line.split()[0])


def test_a_hook_gets_what_is_left_of_the_grace_not_a_second_grace(
    project: Any, daemons: Any
) -> None:
    path = project(HOOK_JOBS, hooked=HOOKED)
    daemon = daemons([str(path)], cwd=path.parent)
    daemon.wait_for(lambda _: (path.parent / "report.started").exists(), timeout=30)
    assert daemon.stop(signal.SIGTERM, timeout=60) == 0, daemon.output
    log = daemon.output
    assert [r["status"] for r in rows(path)] == ["succeeded"]  # recorded before its hook
    # The daemon's own clock: the hook is given up when the 6 s grace ends (it used to get
    # another 6 s after the run's end, 10 s in all); a second of slack for a busy machine.
    stopping = log_time(log, "qtasks stopping")
    gave_up = log_time(log, "hooks still running after shutdown_grace were abandoned")
    assert (gave_up - stopping).total_seconds() < 7.5, log


TRIGGER_JOBS = """
jobs:
  async_wait: {entrypoint: "long:async_wait"}
  thread_wait: {entrypoint: "long:thread_wait"}
  child_wait: {entrypoint: "long:thread_wait", isolation: process, kill_grace: 1s}
"""

LONG = """
import asyncio
import time
from pathlib import Path


async def async_wait():
    Path("started").touch()
    await asyncio.sleep(600)


def thread_wait():
    Path("started").touch()
    time.sleep(600)
"""


@pytest.mark.parametrize(
    ("job", "sig", "code", "why"),
    [
        ("async_wait", signal.SIGINT, 130, "cancelled by Ctrl-C"),
        ("thread_wait", signal.SIGINT, 130, "cancelled by Ctrl-C"),
        ("child_wait", signal.SIGINT, 130, "cancelled by Ctrl-C"),
        ("async_wait", signal.SIGTERM, 143, "cancelled by SIGTERM"),
    ],
)
def test_ctrl_c_stops_a_triggered_run_and_records_it(
    project: Any, job: str, sig: int, code: int, why: str
) -> None:
    path = project(TRIGGER_JOBS, long=LONG)
    folder = path.parent
    proc = subprocess.Popen(
        [QTASKS, "trigger", job, "-c", str(path)],
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        deadline = time.monotonic() + 60
        while not (folder / "started").exists():
            assert proc.poll() is None, proc.communicate(timeout=10)
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.05)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == code, err
    assert "raised KeyboardInterrupt" not in err, err  # not blamed on the job
    [row] = rows(path)
    assert (row["status"], row["error"]) == ("cancelled", why), row
    assert row["started"] is not None and row["ended"] is not None


def test_a_stop_records_runs_waiting_for_a_slot(project: Any, daemons: Any) -> None:
    # 30 runs, 4 slots: the stop cancels holders and waiters in one go, in any order.
    jobs = "".join(
        f"  hog{n}: {{entrypoint: 'slots:hog', schedule: '@startup'}}\n" for n in range(30)
    )
    path = project(
        "settings: {shutdown_grace: 1s, max_concurrent: 4}\njobs:\n" + jobs,
        slots="import asyncio\nfrom pathlib import Path\n\n\nasync def hog():\n"
        "    Path('started').touch()\n    await asyncio.sleep(1000)\n",
    )
    daemon = daemons([str(path)], cwd=path.parent)
    daemon.wait_for(lambda _: (path.parent / "started").exists(), timeout=30)
    assert daemon.stop(signal.SIGTERM, timeout=60) == 0, daemon.output
    listed = rows(path)
    assert len(listed) == 30
    assert {r["status"] for r in listed} == {"cancelled"}, [(r["job"], r["status"]) for r in listed]
    assert "Task exception was never retrieved" not in daemon.output, daemon.output


def test_a_stop_records_a_fire_queued_behind_its_job_under_the_id_it_was_shown_with(
    project: Any, daemons: Any
) -> None:
    """Invariant: a run id the daemon showed can always be looked up. A fire queued behind
    its job's previous run (overlap: queue) when the daemon stops is recorded ``cancelled``
    under its id, as a run waiting for a slot is; no later start records it again."""
    path = project(
        "settings: {shutdown_grace: 1s}\njobs:\n"
        "  slow: {entrypoint: 'queued:slow', schedule: '* * * * * *', overlap: queue}\n",
        queued="import asyncio\n\n\nasync def slow():\n    await asyncio.sleep(1000)\n",
    )
    daemon = daemons([str(path)], cwd=path.parent)
    log = daemon.wait_for(lambda log: " queued" in log, timeout=30)
    line = next(line for line in log.splitlines() if " queued" in line)
    run_id = line.split(" slow ", 1)[1].split()[0]
    assert daemon.stop(signal.SIGTERM, timeout=60) == 0, daemon.output
    shown = run_qtasks("show", run_id, "-c", str(path), cwd=path.parent)
    assert shown.returncode == 0, (shown.stdout, shown.stderr)
    [row] = [r for r in rows(path) if r["run_id"] == run_id]
    assert (row["status"], row["error"]) == ("cancelled", "cancelled at shutdown"), row
    # A second start neither runs nor records that fire again under another id.
    again = daemons([str(path)], cwd=path.parent)
    again.wait_for(lambda log: " slow " in log and " started" in log, timeout=30)
    assert again.stop(signal.SIGTERM, timeout=60) == 0, again.output
    same = [r for r in rows(path) if r["scheduled"] == row["scheduled"]]
    assert [r["run_id"] for r in same] == [run_id], same


NO_THREADS = """
jobs:
  blocks_threads:
    entrypoint: threads:blocks_threads
    schedule: "@startup"
  plain:
    entrypoint: threads:plain
    schedule: "* * * * * *"
  coroutine:
    entrypoint: threads:coroutine
    schedule: "* * * * * *"
"""

THREADS = """
import threading
from pathlib import Path
from threading import stack_size  # bound before the daemon's guard: it passes it


def blocks_threads():
    threading.stack_size(1 << 40)  # through the module: refused with a warning
    stack_size(1 << 40)  # every later thread of the process cannot start
    Path("blocked").touch()


def plain():
    return "never runs: its thread cannot start"


async def coroutine():
    return "runs on the loop"
"""


def test_when_no_thread_can_start_runs_fail_honestly_and_the_stop_is_clean(
    project: Any, daemons: Any
) -> None:
    """A job makes every later thread of the process fail to start (a stack size bigger than
    the memory, bound before the daemon's guard; a process limit does the same). Plain jobs'
    runs are recorded ``failed`` saying so (they stayed ``running`` for good, and the stop
    crashed with a traceback and exit 1); async jobs go on; SIGTERM exits 0 with no run left
    ``running``."""
    path = project(NO_THREADS, threads=THREADS)
    folder = path.parent
    daemon = daemons([str(path)], cwd=folder)
    daemon.wait_for(lambda _: (folder / "blocked").exists(), timeout=30)
    daemon.wait_for(lambda out: out.count("plain ") >= 9 and "no thread can start" in out, 60)
    assert daemon.stop(signal.SIGTERM, timeout=60) == 0, daemon.output
    assert "Traceback" not in daemon.output, daemon.output
    assert "threading.stack_size(1099511627776) at" in daemon.output, daemon.output
    found = rows(path)
    assert not [r for r in found if r["status"] in ("running", "claimed")], found
    blocked_at = next(r["ended"] for r in found if r["job"] == "blocks_threads")
    later = [r for r in found if r["job"] == "plain" and r["scheduled"] > blocked_at]
    assert later and all(r["status"] == "failed" for r in later), later
    assert all("no thread can start" in (r["error"] or "") for r in later), later
    coroutines = [r for r in found if r["job"] == "coroutine"]
    assert coroutines and all(r["status"] == "succeeded" for r in coroutines), coroutines
