"""The clock: daylight saving time changes (through ``qtasks list`` and through the supervisor under
a virtual clock) and an event loop blocked for five seconds by a misused async job."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import run_qtasks

from qtasks_cli import intake as intake_module
from reliability.harness import (
    ON_TIME,
    Outcome,
    Scenario,
    assert_clean_exit,
    assert_consecutive,
    late_rows,
    run_scenarios,
    show_rows,
    when,
)
from reliability.registry import case
from reliability.virtual import NOOP, make_config, rows_of, show, supervise

GROUP = "clock"
UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")

DST_JOBS = f"""
fixed:
  entrypoint: {NOOP}
  schedule: "30 2 * * *"
  timezone: Europe/Berlin
hourly:
  entrypoint: {NOOP}
  schedule: "0 * * * *"
  timezone: Europe/Berlin
"""


def _list(config: Path, after: str, count: int) -> dict[str, list[datetime]]:
    result = run_qtasks(
        "list", str(config), "--json", "--after", after, "--next", str(count), cwd=config.parent
    )
    assert result.returncode == 0, result.stderr
    return {
        job["name"]: [datetime.fromisoformat(t) for t in job["next"]]
        for job in json.loads(result.stdout)
    }


@case(
    "dst_list",
    group=GROUP,
    title="`qtasks list --after ... --next N` across Berlin's 2026 spring-forward and fall-back",
    checks="`30 2 * * *` fires once on each change day (03:00 CEST on the gap day, 02:30 CEST "
    "on the repeated hour); `0 * * * *` fires every elapsed hour (twice at local 02:00 in "
    "October, never in March)",
)
def test_dst_list(tmp_path: Path) -> None:
    config = tmp_path / "jobs.yaml"
    config.write_text(
        "jobs:\n"
        "  fixed: {entrypoint: 'x:f', schedule: '30 2 * * *', timezone: Europe/Berlin}\n"
        "  hourly: {entrypoint: 'x:f', schedule: '0 * * * *', timezone: Europe/Berlin}\n"
    )
    spring = _list(config, "2026-03-28T12:00:00+01:00", 24)
    assert [t.astimezone(BERLIN).isoformat() for t in spring["fixed"][:3]] == [
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]
    hours = spring["hourly"]
    assert {b - a for a, b in itertools.pairwise(hours)} == {timedelta(hours=1)}
    assert [
        t for t in hours if t.astimezone(BERLIN).date().day == 29 and t.astimezone(BERLIN).hour == 2
    ] == []

    autumn = _list(config, "2026-10-24T12:00:00+02:00", 40)
    fall_day = [
        t for t in autumn["fixed"] if t.astimezone(BERLIN).date().isoformat() == "2026-10-25"
    ]
    assert [t.isoformat() for t in fall_day] == ["2026-10-25T02:30:00+02:00"]
    hours = autumn["hourly"]
    assert {b - a for a, b in itertools.pairwise(hours)} == {timedelta(hours=1)}
    at_two = [t.isoformat() for t in hours if t.astimezone(BERLIN).hour == 2]
    assert at_two[:2] == ["2026-10-25T02:00:00+02:00", "2026-10-25T02:00:00+01:00"]


@pytest.fixture
def fast_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    # Under a virtual clock the queue poll (1 s) would make the timer step second by second
    # through hours; nothing is handed over in these cases, so poll rarely.
    monkeypatch.setattr(intake_module, "QUEUE_POLL", 3600.0)


@case(
    "dst_supervisor",
    group=GROUP,
    title="the supervisor under a virtual clock through Berlin's 2026 fall-back and "
    "spring-forward nights, with the real SQLite store",
    checks="`30 2 * * *` runs once each night (02:30 CEST; 03:00 CEST on the gap day); "
    "`0 * * * *` runs every elapsed hour, twice at local 02:00 on fall-back night; every "
    "run `succeeded` on time with trigger `schedule`, none twice",
)
def test_dst_supervisor(tmp_path: Path, fast_poll: None) -> None:
    config = make_config(tmp_path, DST_JOBS)
    # Fall back: 03:00 CEST (01:00 UTC) becomes 02:00 CET.
    _, autumn = asyncio.run(
        supervise(
            config,
            tmp_path / "autumn.db",
            datetime(2026, 10, 24, 23, 40, tzinfo=UTC),
            datetime(2026, 10, 25, 2, 40, tzinfo=UTC),
        )
    )
    fixed = rows_of(autumn, "fixed")
    assert [r.scheduled for r in fixed] == [datetime(2026, 10, 25, 0, 30, tzinfo=UTC)], show(fixed)
    hourly = rows_of(autumn, "hourly")
    assert [r.scheduled for r in hourly] == [
        datetime(2026, 10, 25, h, tzinfo=UTC) for h in (0, 1, 2)
    ], show(hourly)
    assert [r.scheduled.astimezone(BERLIN).hour for r in hourly if r.scheduled] == [2, 2, 3]

    # Spring forward: 02:00 CET (01:00 UTC) becomes 03:00 CEST; 02:30 does not exist.
    _, spring = asyncio.run(
        supervise(
            config,
            tmp_path / "spring.db",
            datetime(2026, 3, 28, 23, 40, tzinfo=UTC),
            datetime(2026, 3, 29, 2, 40, tzinfo=UTC),
        )
    )
    fixed = rows_of(spring, "fixed")
    assert [r.scheduled for r in fixed] == [datetime(2026, 3, 29, 1, 0, tzinfo=UTC)], show(fixed)
    hourly = rows_of(spring, "hourly")
    assert [r.scheduled for r in hourly] == [
        datetime(2026, 3, 29, h, tzinfo=UTC) for h in (0, 1, 2)
    ], show(hourly)
    for r in autumn + spring:
        assert r.status.value == "succeeded" and r.trigger.value == "schedule", show([r])
        assert r.started == r.scheduled, show([r])


BLOCKER = '''
import time

calls = 0


async def blocks_the_loop():
    """A sync sleep inside async code: the mistake this case is about."""
    global calls
    calls += 1
    if calls == 1:
        time.sleep(5)
    return calls
'''

BLOCKED_JOBS = """
tick_all:
  entrypoint: rel_tick:tick
  schedule: "* * * * * *"
  catch_up: all
tick_none:
  entrypoint: rel_tick:tick
  schedule: "* * * * * *"
  catch_up: none
blocker:
  entrypoint: rel_blocker:blocks_the_loop
  schedule: every 3s
"""


@pytest.fixture(scope="module")
def blocked(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    scenario = Scenario(
        name="blocked",
        jobs=BLOCKED_JOBS,
        modules={"rel_blocker": BLOCKER},
        driver=lambda d: d.wait_for(
            lambda log: re.search(r" blocker \w+ succeeded ", log) is not None,
            timeout=20,
            what="the blocking run's end",
        ),
        ticks=3,
    )
    return run_scenarios([scenario], tmp_path_factory.mktemp("blocked-loop"))["blocked"]


@case(
    "loop_blocked_5s",
    group=GROUP,
    title="an `async def` job calls `time.sleep(5)`, blocking the event loop, beside per-second "
    "jobs with `catch_up` latest, all and none",
    checks="every second is recorded exactly once for each per-second job (a run, `missed` or "
    "`skipped`, never two runs); fires due during the block go through `catch_up`: at most one "
    "catch-up run for `latest`, none for `none`, one per missed second for `all`; on time "
    "again after the block",
)
def test_loop_blocked(blocked: Outcome) -> None:
    out = blocked
    assert_clean_exit(out)
    block = out.of("blocker")[0]
    assert block["status"] == "succeeded" and block["duration"] >= 4.9, out.show([block])
    began, ended = when(block["started"]), when(block["ended"])
    for job in ("tick", "tick_all", "tick_none"):
        rows = out.of(job)
        times = assert_consecutive(rows)
        assert times[0] <= out.ready_at + timedelta(seconds=2), out.show(rows)
        assert times[-1] >= out.stopped_at - timedelta(seconds=2), out.show(rows)
        during = [r for r in rows if began + ON_TIME < when(r["scheduled"]) < ended - ON_TIME]
        outside = [
            r
            for r in rows
            if r not in during and not (began <= when(r["scheduled"]) <= ended + ON_TIME)
        ]
        assert len(during) >= 3, out.show(rows)
        assert len([r for r in outside if when(r["scheduled"]) > ended]) >= 1, out.show(rows)
        assert not late_rows(outside), show_rows(late_rows(outside))
        kinds = Counter((r["trigger"], r["status"]) for r in during)
        catch_up_runs = sum(n for (trigger, _), n in kinds.items() if trigger == "catch_up")
        if job == "tick_none":
            assert catch_up_runs == 0, out.show(during)
        elif job == "tick":
            assert catch_up_runs <= 1, out.show(during)
        else:
            ran = [r for r in during if r["trigger"] == "catch_up" and r["status"] == "succeeded"]
            assert len(ran) == len(during), out.show(during)
        for r in during:
            assert r["status"] in ("succeeded", "missed", "skipped"), show_rows([r])
            if r["status"] == "missed":
                assert "late" in r["error"], show_rows([r])
