"""policy.repeats_after_step: cron(8)'s rule for wall times a step back repeats."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from qtasks_cli.policy import repeats_after_step, step_back
from qtasks_cli.schedule import parse_schedule, union

NOW = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("text", "small", "large"),
    [
        ("* * * * *", True, True),
        ("*/5 * * * * *", True, True),
        ("30 * * * *", True, True),  # hour field starts with *
        ("30 2 * * *", False, True),  # fixed-time
        ("* 0-59 0-23 * * *", False, True),  # every second, but no field starts with *
        ("every 5s", True, True),  # elapsed time never falls silent
        ("@startup", False, False),
    ],
)
def test_which_jobs_fire_again(text: str, small: bool, large: bool) -> None:
    schedule = parse_schedule(text, ZoneInfo("UTC"))
    assert repeats_after_step(schedule, step_back(NOW, timedelta(seconds=90))) is small
    assert repeats_after_step(schedule, step_back(NOW, timedelta(hours=3))) is large
    both = union([parse_schedule("30 2 * * *", ZoneInfo("UTC")), schedule])
    assert repeats_after_step(both, step_back(NOW, timedelta(seconds=90))) is small


def test_the_mark_is_below_a_millisecond_and_never_zero() -> None:
    for us in range(0, 5000, 7):
        mark = step_back(NOW + timedelta(microseconds=us), timedelta(seconds=5)).mark
        assert timedelta(0) < mark < timedelta(milliseconds=1)
