"""Wall-clock steps under the real daemon, made with libfaketime (Debian package faketime).

The monotonic clock is left alone (FAKETIME_DONT_FAKE_MONOTONIC), as on a real machine where
NTP or an operator steps the wall clock. Skipped with the reason where libfaketime is missing.
"""

from __future__ import annotations

import glob
import json
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import clean_env, run_qtasks

from reliability.registry import case

LIBS = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1")) + sorted(
    glob.glob("/usr/lib/faketime/libfaketime.so.1")
)
pytestmark = pytest.mark.skipif(
    not LIBS, reason="libfaketime is not installed (apt-get install faketime)"
)

TICK = """
def tick():
    pass
"""


def faked(offset_file: Path, **extra: str) -> dict[str, str]:
    return clean_env(
        LD_PRELOAD=LIBS[0],
        FAKETIME_TIMESTAMP_FILE=str(offset_file),
        FAKETIME_CACHE_DURATION="1",  # re-read the offset file at most once a second
        FAKETIME_DONT_FAKE_MONOTONIC="1",
        **extra,
    )


def history(path: Path, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    done = run_qtasks("history", "-c", str(path), "--json", "--limit", "100000", env=env)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def ran(rows: list[dict[str, Any]], job: str) -> list[datetime]:
    return sorted(
        datetime.fromisoformat(r["scheduled"])
        for r in rows
        if r["job"] == job and r["status"] == "succeeded"
    )


def wait_until(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout}s")


GROUP = "clock"


@case(
    "clock_was_ahead",
    group=GROUP,
    title="the daemon ran with the wall clock 2 h ahead (libfaketime), then restarts with the "
    "right time (skipped without libfaketime)",
    checks="the restart says the last recorded fires lie in the future and fires within seconds, "
    "not 2 h later",
)
def test_a_daemon_that_ran_with_the_clock_ahead_fires_at_once_after_it_is_corrected(
    project: Any, daemons: Any, tmp_path: Path
) -> None:
    path = project("jobs:\n tick:\n  entrypoint: work:tick\n  schedule: '* * * * * *'\n", work=TICK)
    offset = tmp_path / "offset"
    offset.write_text("+2h\n")
    ahead = daemons([str(path)], cwd=path.parent, env=faked(offset))
    ahead.wait_for(lambda log: "next fire" in log)
    wait_until(lambda: len(ran(history(path), "tick")) >= 2, timeout=60)
    assert ahead.stop() == 0
    future = ran(history(path), "tick")[-1]
    assert (future - datetime.now(future.tzinfo)).total_seconds() > 3600  # fired 2 h ahead

    corrected = daemons([str(path)], cwd=path.parent)
    log = corrected.wait_for(lambda log: "next fire" in log)
    assert "last recorded fires lie in the future" in log
    started = datetime.now(future.tzinfo)
    wait_until(lambda: any(t > started for t in ran(history(path), "tick")), timeout=10)
    assert corrected.stop() == 0


@case(
    "clock_step_back",
    group=GROUP,
    title="the wall clock steps back 1 h under a running daemon (libfaketime; the monotonic "
    "clock is not faked)",
    checks="one log line names the step and its size; the job keeps firing every second; no "
    "(job, time) twice",
)
def test_a_step_back_under_a_running_daemon_is_logged_and_firing_goes_on(
    project: Any, daemons: Any, tmp_path: Path
) -> None:
    path = project("jobs:\n tick:\n  entrypoint: work:tick\n  schedule: '* * * * * *'\n", work=TICK)
    offset = tmp_path / "offset"
    offset.write_text("+0\n")
    daemon = daemons([str(path)], cwd=path.parent, env=faked(offset))
    daemon.wait_for(lambda log: "next fire" in log)
    wait_until(lambda: len(ran(history(path), "tick")) >= 2, timeout=60)
    offset.write_text("-1h\n")
    daemon.wait_for(lambda log: "stepped back by 1h" in log, timeout=15)
    before = len(ran(history(path), "tick"))
    wait_until(lambda: len(ran(history(path), "tick")) >= before + 3, timeout=15)
    assert daemon.stop() == 0
    rows = history(path)
    fires = Counter((r["job"], r["scheduled"]) for r in rows)
    assert max(fires.values()) == 1  # no (job, time) twice
    assert daemon.output.count("stepped back") == 1  # said once


@case(
    "clock_jump_forward",
    group=GROUP,
    title="the wall clock jumps 1 h forward under a daemon with 30 per-second jobs",
    checks="one log line names the jump; the hour jumped over is one summary `missed` row per "
    "job (not 108,000 rows and log lines); every job is on time again within seconds",
)
def test_a_forward_jump_of_an_hour_costs_bounded_work_and_rows(
    project: Any, daemons: Any, tmp_path: Path
) -> None:
    jobs = "jobs:\n" + "".join(
        f" j{i}:\n  entrypoint: work:tick\n  schedule: '* * * * * *'\n" for i in range(30)
    )
    path = project(jobs, work=TICK)
    offset = tmp_path / "offset"
    offset.write_text("+0\n")
    daemon = daemons([str(path)], cwd=path.parent, env=faked(offset))
    daemon.wait_for(lambda log: "j29 next fire" in log)
    wait_until(lambda: len(ran(history(path), "j0")) >= 2, timeout=60)
    before = datetime.now(timezone.utc) + timedelta(seconds=3)
    offset.write_text("+1h\n")
    jump = datetime.now(timezone.utc) + timedelta(hours=1)
    daemon.wait_for(lambda log: "stepped forward by 1h" in log, timeout=15)

    def on_time_again() -> bool:
        rows = history(path)
        return all(
            any(
                r["job"] == job
                and r["trigger"] == "schedule"
                and r["status"] == "succeeded"
                and datetime.fromisoformat(r["scheduled"]) > jump
                for r in rows
            )
            for job in ("j0", "j29")
        )

    wait_until(on_time_again, timeout=60)
    assert daemon.stop() == 0
    rows = history(path)
    in_gap = [
        r
        for r in rows
        if before < datetime.fromisoformat(r["scheduled"]) < jump - timedelta(seconds=10)
    ]
    # one summary row per job for the hour it jumped over, not 3,600 rows each
    assert len(in_gap) <= 30, Counter(r["job"] for r in in_gap)
    assert all("fires from" in (r["error"] or "") for r in in_gap)
    assert len(daemon.output.splitlines()) < 3000  # not a line per missed fire
    fires = Counter((r["job"], r["scheduled"]) for r in rows)
    assert max(fires.values()) == 1


@case(
    "clock_step_back_repeats",
    group=GROUP,
    title="the wall clock steps back 6 s over wall times already fired (libfaketime; the "
    "monotonic clock is not faked)",
    checks="a job following the clock (cron(8): minute field starting with *) fires again at "
    "the repeated wall times; a fixed-time job does not fire a wall time twice",
)
def test_a_step_back_over_fired_times_repeats_only_clock_jobs(
    project: Any, daemons: Any, tmp_path: Path
) -> None:
    path = project(
        "jobs:\n"
        " clock:\n  entrypoint: work:tick\n  schedule: '* * * * * *'\n"
        " fixed:\n  entrypoint: work:tick\n  schedule: '* 0-59 0-23 * * *'\n",
        work=TICK,
    )
    offset = tmp_path / "offset"
    offset.write_text("+0\n")
    daemon = daemons([str(path)], cwd=path.parent, env=faked(offset))
    daemon.wait_for(lambda log: "next fire" in log)
    wait_until(lambda: len(ran(history(path), "clock")) >= 8, timeout=30)
    offset.write_text("-6\n")
    daemon.wait_for(lambda log: "stepped back by 6s" in log, timeout=15)

    def seconds(job: str) -> Counter[datetime]:
        return Counter(t.replace(microsecond=0) for t in ran(history(path), job))

    # Fires at a wall second already fired before the step: the clock job repeats them.
    wait_until(lambda: sum(n > 1 for n in seconds("clock").values()) >= 3, timeout=60)
    assert daemon.stop() == 0
    assert max(seconds("fixed").values()) == 1  # a fixed-time job never fires a time twice
    fires = Counter((r["job"], r["scheduled"]) for r in history(path))
    assert max(fires.values()) == 1  # each recorded fire once
