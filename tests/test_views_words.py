"""Jobs sharing a schedule object share its description: the first snapshot of 10,000 jobs
on one cron line describes it once, not 10,000 times on the loop."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest

from qtasks_cli.models import JobSpec
from qtasks_cli.occupancy import Occupancy
from qtasks_cli.schedule import parse_schedule
from qtasks_cli.timetable import JobState
from qtasks_cli.views import JobViews


def test_a_shared_schedule_is_described_once(monkeypatch: pytest.MonkeyPatch) -> None:
    shared = parse_schedule("17 * * * *", ZoneInfo("UTC"))
    other = parse_schedule("*/5 * * * *", ZoneInfo("UTC"))
    assert type(shared) is type(other)
    expected = {id(shared): shared.describe(), id(other): other.describe()}
    calls: list[int] = []
    original = type(shared).describe

    def counted(self: object) -> str:
        calls.append(id(self))
        return original(self)  # type: ignore[arg-type]

    monkeypatch.setattr(type(shared), "describe", counted)
    jobs = {
        f"j{i}": JobState(
            spec=JobSpec(name=f"j{i}", entrypoint="m:f", schedule=other if i == 7 else shared)
        )
        for i in range(50)
    }
    jobs["manual"] = JobState(spec=JobSpec(name="manual", entrypoint="m:f"))
    views = JobViews(jobs, Occupancy(16)).views(paused=(), abandoned={})
    assert sorted(calls) == sorted(expected)
    words = {view.name: view.schedule for view in views}
    assert words["j0"] == words["j49"] == expected[id(shared)]
    assert words["j7"] == expected[id(other)]
    assert words["manual"] == "only when triggered"
