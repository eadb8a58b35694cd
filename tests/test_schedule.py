"""Schedule forms, messages, descriptions and the DST rules of ``qtasks_cli.schedule``."""

from __future__ import annotations

import itertools
import pickle
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from qtasks_cli.errors import ScheduleError
from qtasks_cli.models import Schedule
from qtasks_cli.schedule import (
    CronSchedule,
    IntervalSchedule,
    StartupSchedule,
    UnionSchedule,
    fires_between,
    parse_schedule,
    union,
)

UTC = timezone.utc
UTC_ZONE = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def at(
    zone: ZoneInfo,
    year: int,
    month: int,
    day: int,
    hour: int = 0,
    minute: int = 0,
    second: int = 0,
    microsecond: int = 0,
    *,
    fold: int = 0,
) -> datetime:
    return datetime(year, month, day, hour, minute, second, microsecond, tzinfo=zone, fold=fold)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


def walls(fires: list[datetime], zone: ZoneInfo) -> list[str]:
    """Fires as local ISO texts with their offsets, which tell the two passes apart."""
    return [f.astimezone(zone).isoformat() for f in fires]


def local_day(schedule: Schedule, zone: ZoneInfo, day: date) -> list[datetime]:
    """Fires from local midnight of ``day`` (inclusive) to the next local midnight (exclusive)."""
    start = at(zone, day.year, day.month, day.day)
    after = start - timedelta(microseconds=1)
    nxt = day + timedelta(days=1)
    until = at(zone, nxt.year, nxt.month, nxt.day) - timedelta(microseconds=1)
    return fires_between(schedule, after, until)


def nexts(schedule: Schedule, t: datetime, n: int) -> list[datetime]:
    out = []
    for _ in range(n):
        nxt = schedule.next_after(t)
        assert nxt is not None
        out.append(nxt)
        t = nxt
    return out


# ---------------------------------------------------------------------------------------
# Cron forms
# ---------------------------------------------------------------------------------------


def test_five_field_cron_fires_at_the_wall_time_of_its_zone() -> None:
    s = parse_schedule("59 23 * * *", BERLIN)
    assert s.next_after(utc(2026, 1, 10, 12)) == utc(2026, 1, 10, 22, 59)  # 23:59 CET
    assert s.next_after(utc(2026, 7, 10, 12)) == utc(2026, 7, 10, 21, 59)  # 23:59 CEST


def test_next_after_is_strictly_after_and_returns_utc() -> None:
    s = parse_schedule("0 12 * * *", UTC_ZONE)
    fire = s.next_after(at(BERLIN, 2026, 1, 10, 13))  # = 12:00 UTC exactly
    assert fire == utc(2026, 1, 11, 12)
    assert fire is not None and fire.tzinfo is UTC
    assert s.next_after(utc(2026, 1, 10, 11, 59, 59, 999999)) == utc(2026, 1, 10, 12)


def test_six_fields_put_seconds_first() -> None:
    s = parse_schedule("15 * * * * *", UTC_ZONE)
    assert nexts(s, utc(2026, 1, 1), 3) == [
        utc(2026, 1, 1, 0, 0, 15),
        utc(2026, 1, 1, 0, 1, 15),
        utc(2026, 1, 1, 0, 2, 15),
    ]
    s = parse_schedule("30 0 12 * * *", UTC_ZONE)
    assert s.next_after(utc(2026, 1, 1)) == utc(2026, 1, 1, 12, 0, 30)


def test_croniter_second_at_beginning_reads_the_first_of_six_fields_as_seconds() -> None:
    """Pins the croniter behaviour this module relies on (croniter>=2.0,<8)."""
    from croniter import croniter

    it = croniter("15 30 * * * *", datetime(2026, 1, 1), second_at_beginning=True)
    assert it.get_next(datetime) == datetime(2026, 1, 1, 0, 30, 15)
    assert it.get_next(datetime) == datetime(2026, 1, 1, 1, 30, 15)
    # get_next with a float start time works on naive wall seconds, strictly after it.
    start = (datetime(2026, 1, 1, 0, 30, 15) - datetime(1970, 1, 1)).total_seconds()
    nxt = it.get_next(float, start_time=start)
    assert nxt == (datetime(2026, 1, 1, 1, 30, 15) - datetime(1970, 1, 1)).total_seconds()


def test_every_second_and_every_n_seconds() -> None:
    every = parse_schedule("* * * * * *", UTC_ZONE)
    assert every.next_after(utc(2026, 1, 1, 0, 0, 0, 500)) == utc(2026, 1, 1, 0, 0, 1)
    tens = parse_schedule("*/10 * * * * *", UTC_ZONE)
    assert nexts(tens, utc(2026, 1, 1, 0, 0, 55), 3) == [
        utc(2026, 1, 1, 0, 1, 0),
        utc(2026, 1, 1, 0, 1, 10),
        utc(2026, 1, 1, 0, 1, 20),
    ]


def test_month_and_weekday_names_ranges_lists_and_steps() -> None:
    s = parse_schedule("0 9 * JAN,jul Mon-Fri", UTC_ZONE)
    fires = nexts(s, utc(2026, 6, 30, 12), 3)
    assert fires == [utc(2026, 7, 1, 9), utc(2026, 7, 2, 9), utc(2026, 7, 3, 9)]  # Wed Thu Fri
    assert nexts(s, utc(2026, 7, 31, 12), 1) == [utc(2027, 1, 1, 9)]  # Aug-Dec skipped, a Fri
    steps = parse_schedule("10-59/15 1-10/3 * * *", UTC_ZONE)
    day = [f.time().isoformat("minutes") for f in local_day(steps, UTC_ZONE, date(2026, 1, 1))]
    assert day[:5] == ["01:10", "01:25", "01:40", "01:55", "04:10"]
    assert len(day) == 4 * 4  # hours 1, 4, 7, 10 times minutes 10, 25, 40, 55


def test_sunday_is_0_or_7_and_a_long_weekend_is_written_as_two_ranges() -> None:
    sunday = utc(2026, 1, 4)  # a Sunday
    for text in ("0 0 * * 0", "0 0 * * 7", "0 0 * * sun"):
        assert parse_schedule(text, UTC_ZONE).next_after(utc(2026, 1, 1)) == sunday
    with pytest.raises(ScheduleError, match=r"runs backwards \(5 is after 1\).*write 5-7,1$"):
        parse_schedule("0 0 * * fri-mon", UTC_ZONE)  # cron(8) refuses it; it never wraps
    weekend = parse_schedule("0 0 * * fri-7,mon", UTC_ZONE)
    days = [f.strftime("%a") for f in nexts(weekend, utc(2026, 1, 1), 5)]  # 2026-01-01 is a Thu
    assert days == ["Fri", "Sat", "Sun", "Mon", "Fri"]
    assert parse_schedule("0 0 * * 5-7", UTC_ZONE).next_after(utc(2026, 1, 3)) == sunday


def test_an_equal_range_is_one_value_not_the_whole_cycle() -> None:
    # croniter itself reads "mon-mon" as every day; we hand it explicit values.
    s = parse_schedule("0 0 * * mon-mon", UTC_ZONE)
    assert [f.strftime("%a") for f in nexts(s, utc(2026, 1, 1), 3)] == ["Mon"] * 3


def test_question_mark_means_any_day() -> None:
    a = parse_schedule("0 0 ? * mon", UTC_ZONE)
    b = parse_schedule("0 0 * * mon", UTC_ZONE)
    assert a.key == b.key
    assert nexts(a, utc(2026, 1, 1), 3) == nexts(b, utc(2026, 1, 1), 3)


def test_last_day_of_month() -> None:
    s = parse_schedule("0 0 L * *", UTC_ZONE)
    assert nexts(s, utc(2024, 1, 31, 1), 3) == [
        utc(2024, 2, 29),
        utc(2024, 3, 31),
        utc(2024, 4, 30),
    ]
    assert s.next_after(utc(2023, 2, 1)) == utc(2023, 2, 28)
    both = parse_schedule("0 0 1,L * *", UTC_ZONE)
    assert nexts(both, utc(2026, 2, 2), 3) == [utc(2026, 2, 28), utc(2026, 3, 1), utc(2026, 3, 31)]
    tail = parse_schedule("0 0 28-L 2 *", UTC_ZONE)
    assert nexts(tail, utc(2024, 1, 1), 3) == [utc(2024, 2, 28), utc(2024, 2, 29), utc(2025, 2, 28)]


def test_nth_and_last_weekday_of_month() -> None:
    third_friday = parse_schedule("0 0 * * fri#3", UTC_ZONE)
    assert nexts(third_friday, utc(2026, 1, 1), 2) == [utc(2026, 1, 16), utc(2026, 2, 20)]
    for text in ("0 0 * * L5", "0 0 * * 5L", "0 0 * * lfri"):
        last_friday = parse_schedule(text, UTC_ZONE)
        assert nexts(last_friday, utc(2026, 1, 1), 2) == [utc(2026, 1, 30), utc(2026, 2, 27)]
    both = parse_schedule("0 0 * * 5#3,L5", UTC_ZONE)
    assert nexts(both, utc(2026, 1, 1), 3) == [utc(2026, 1, 16), utc(2026, 1, 30), utc(2026, 2, 20)]


def test_day_and_weekday_combine_with_or_like_vixie_cron() -> None:
    """When both are restricted, a day matches if either matches; '*' leaves the other alone."""
    s = parse_schedule("0 0 13 * fri", UTC_ZONE)
    fires = local_day_range(s, date(2026, 4, 1), date(2026, 5, 1))
    assert [f.day for f in fires] == [3, 10, 13, 17, 24]  # Fridays, or the 13th (a Monday)
    fires = local_day_range(s, date(2026, 3, 1), date(2026, 4, 1))
    assert [f.day for f in fires] == [6, 13, 20, 27]  # Friday the 13th fires once
    s = parse_schedule("0 0 1 * mon", UTC_ZONE)
    fires = local_day_range(s, date(2026, 6, 1), date(2026, 7, 1))
    assert [f.day for f in fires] == [1, 8, 15, 22, 29]  # June 1 is a Monday
    fires = local_day_range(s, date(2026, 7, 1), date(2026, 8, 1))
    assert [f.day for f in fires] == [1, 6, 13, 20, 27]  # the 1st (Wed) or Mondays
    only_mondays = parse_schedule("0 0 * * mon", UTC_ZONE)
    assert [f.day for f in local_day_range(only_mondays, date(2026, 7, 1), date(2026, 8, 1))] == [
        6,
        13,
        20,
        27,
    ]


def local_day_range(schedule: Schedule, first: date, end: date) -> list[datetime]:
    return fires_between(
        schedule,
        at(UTC_ZONE, first.year, first.month, first.day) - timedelta(seconds=1),
        at(UTC_ZONE, end.year, end.month, end.day) - timedelta(seconds=1),
    )


def test_leap_day_is_valid_and_fires_in_leap_years() -> None:
    s = parse_schedule("0 0 29 2 *", UTC_ZONE)
    assert nexts(s, utc(2025, 1, 1), 2) == [utc(2028, 2, 29), utc(2032, 2, 29)]


def test_a_range_across_midnight_is_two_ranges() -> None:
    with pytest.raises(ScheduleError, match="write 22-23,0-1"):
        parse_schedule("0 22-1 * * *", UTC_ZONE)
    s = parse_schedule("0 22-23,0-1 * * *", UTC_ZONE)
    hours = [f.hour for f in local_day(s, UTC_ZONE, date(2026, 1, 1))]
    assert hours == [0, 1, 22, 23]


# ---------------------------------------------------------------------------------------
# Macros, startup, intervals
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("macro", "expected"),
    [
        ("@yearly", utc(2027, 1, 1)),
        ("@annually", utc(2027, 1, 1)),
        ("@monthly", utc(2026, 6, 1)),
        ("@weekly", utc(2026, 5, 17)),  # the next Sunday
        ("@daily", utc(2026, 5, 14)),
        ("@midnight", utc(2026, 5, 14)),
        ("@hourly", utc(2026, 5, 13, 11)),
        ("@HOURLY", utc(2026, 5, 13, 11)),
    ],
)
def test_macros(macro: str, expected: datetime) -> None:
    s = parse_schedule(macro, UTC_ZONE)
    assert not s.startup
    assert s.next_after(utc(2026, 5, 13, 10, 30)) == expected


def test_macro_keys_equal_their_expansion() -> None:
    assert parse_schedule("@annually", BERLIN).key == parse_schedule("@yearly", BERLIN).key
    assert parse_schedule("@daily", BERLIN).key == parse_schedule("0 0 * * *", BERLIN).key
    assert parse_schedule("@hourly", BERLIN).key == "cron:0 0 * * * *@Europe/Berlin"


@pytest.mark.parametrize("macro", ["@startup", "@Startup"])
def test_startup_macro(macro: str) -> None:
    s = parse_schedule(macro, BERLIN)
    assert s.startup
    assert s.next_after(utc(2026, 1, 1)) is None
    assert s.key == "startup"
    assert s.describe() == "at startup"
    assert isinstance(s, StartupSchedule)
    assert fires_between(s, utc(2026, 1, 1), utc(2027, 1, 1)) == []


@pytest.mark.parametrize(
    ("text", "seconds", "key", "words"),
    [
        ("every 30s", 30, "every:30s", "every 30s"),
        ("every 5m", 300, "every:300s", "every 5m"),
        ("every 1h30m", 5400, "every:5400s", "every 1h30m"),
        ("Every  90s", 90, "every:90s", "every 1m30s"),
        ("every 1.5s", 1.5, "every:1.5s", "every 1s500ms"),
        ("every 45", 45, "every:45s", "every 45s"),
    ],
)
def test_intervals(text: str, seconds: float, key: str, words: str) -> None:
    s = parse_schedule(text, BERLIN)
    assert isinstance(s, IntervalSchedule)
    assert s.key == key
    assert s.describe() == words
    t = at(BERLIN, 2026, 1, 1, 12, 0, 0, 250_000)
    fire = s.next_after(t)
    assert fire == t + timedelta(seconds=seconds)
    assert fire is not None and fire.tzinfo is UTC


def test_intervals_follow_elapsed_time_through_dst_changes() -> None:
    s = parse_schedule("every 1h", BERLIN)
    spring = nexts(s, at(BERLIN, 2026, 3, 29, 1, 30), 2)
    assert walls(spring, BERLIN) == ["2026-03-29T03:30:00+02:00", "2026-03-29T04:30:00+02:00"]
    fall = nexts(s, at(BERLIN, 2026, 10, 25, 1, 30), 3)
    assert walls(fall, BERLIN) == [
        "2026-10-25T02:30:00+02:00",
        "2026-10-25T02:30:00+01:00",
        "2026-10-25T03:30:00+01:00",
    ]


# ---------------------------------------------------------------------------------------
# Mappings
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mapping", "expression"),
    [
        ({"hour": 23, "minute": 59}, "0 59 23 * * *"),
        ({"minute": "*/5"}, "0 */5 * * * *"),
        ({"day_of_week": "mon"}, "0 0 0 * * mon"),
        ({"month": 6}, "0 0 0 1 6 *"),
        ({"day": 15}, "0 0 0 15 * *"),
        ({"second": 30}, "30 * * * * *"),
        ({"hour": "9-17", "day_of_week": "mon-fri"}, "0 0 9-17 * * mon-fri"),
        ({"minute": [0, 30]}, "0 0,30 * * * *"),
        ({"month": "jan", "hour": 3}, "0 0 3 * jan *"),
    ],
)
def test_mapping_defaults_finer_fields_to_minimum_and_coarser_to_star(
    mapping: dict[str, object], expression: str
) -> None:
    s = parse_schedule(mapping, BERLIN)
    assert s.key == f"cron:{expression}@Europe/Berlin"


def test_mapping_equals_the_cron_it_compiles_to() -> None:
    moscow = ZoneInfo("Europe/Moscow")
    mapped = parse_schedule({"hour": 23, "minute": 59}, moscow)
    assert mapped.key == "cron:0 59 23 * * *@Europe/Moscow"
    assert mapped == parse_schedule("59 23 * * *", moscow)
    assert mapped.describe() == "at 23:59 every day"
    assert mapped.next_after(utc(2026, 1, 1)) == utc(2026, 1, 1, 20, 59)  # Moscow is +3
    mondays = parse_schedule({"day_of_week": "mon"}, UTC_ZONE)
    assert nexts(mondays, utc(2026, 1, 1), 2) == [utc(2026, 1, 5), utc(2026, 1, 12)]


def test_mapping_with_hour_star_follows_elapsed_time() -> None:
    s = parse_schedule({"minute": 0}, BERLIN)  # hour is coarser, so "*"
    fires = local_day(s, BERLIN, date(2026, 10, 25))
    assert len(fires) == 25


# ---------------------------------------------------------------------------------------
# Unions
# ---------------------------------------------------------------------------------------


def test_union_fires_at_the_union_of_times_once_per_instant() -> None:
    s = union([parse_schedule("0 * * * *", UTC_ZONE), parse_schedule("*/30 * * * *", UTC_ZONE)])
    fires = nexts(s, utc(2026, 1, 1), 4)
    assert fires == [
        utc(2026, 1, 1, 0, 30),
        utc(2026, 1, 1, 1),
        utc(2026, 1, 1, 1, 30),
        utc(2026, 1, 1, 2),
    ]
    assert not s.startup


def test_union_mixes_forms_and_is_startup_if_any_member_is() -> None:
    members = [
        parse_schedule("@startup", BERLIN),
        parse_schedule("0 9 * * mon-fri", BERLIN),
        parse_schedule("every 90s", BERLIN),
    ]
    s = union(members)
    assert isinstance(s, UnionSchedule)
    assert s.startup
    assert s.describe() == "at startup; at 09:00 on Mon-Fri; every 1m30s"
    assert s.key == "cron:0 0 9 * * mon-fri@Europe/Berlin|every:90s|startup"
    t = at(BERLIN, 2026, 1, 5, 8, 59)
    assert s.next_after(t) == t + timedelta(seconds=60)  # the cron beats the interval
    assert s.next_after(t + timedelta(seconds=61)) == t + timedelta(seconds=151)


def test_union_flattens_dedupes_and_keeps_a_single_member() -> None:
    a = parse_schedule("0 9 * * *", BERLIN)
    b = parse_schedule({"hour": 9}, BERLIN)  # the same schedule
    assert union([a, b]) is a
    c = parse_schedule("every 1h", BERLIN)
    nested = union([union([a, c]), a, c])
    assert isinstance(nested, UnionSchedule)
    assert nested.members == (a, c)
    assert nested == union([c, a])  # keys are order-free


def test_empty_union_is_an_error() -> None:
    with pytest.raises(ScheduleError, match=r"the schedule list is empty \(expected at least"):
        union([])


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("61 * * * *", "minute field '61' is out of range (0-59)"),
        ("0,61 * * * *", "minute field '0,61': '61' is out of range (0-59)"),
        ("0 x * * *", "hour field 'x' is not valid (expected 0-23, a list, range or step)"),
        ("0 24 * * *", "hour field '24' is out of range (0-23)"),
        ("0 0 0 * *", "day field '0' is out of range (1-31)"),
        ("0 0 32 * *", "day field '32' is out of range (1-31)"),
        ("0 0 * 13 *", "month field '13' is out of range (1-12)"),
        (
            "0 0 * foo *",
            "month field 'foo' is not valid (expected 1-12 or jan-dec, a list, range or step)",
        ),
        ("0 0 * * 8", "weekday field '8' is out of range (0-7)"),
        ("0 0 * * funday", "weekday field 'funday' is not valid (expected 0-7 or sun-sat"),
        ("0 0 * * fri#6", "weekday field 'fri#6' asks for week #6 (expected #1 to #5)"),
        ("0 0 * * L", "weekday field 'L' is not valid"),
        ("0 0 * * mon,fri#2", "weekday field 'mon,fri#2' mixes plain weekdays with # or L items"),
        (
            "0 0 1 * fri#2",
            "day field '1' cannot be combined with weekday field 'fri#2' (expected '*' for the day",
        ),
        ("0 0 L * L5", "day field 'L' cannot be combined with weekday field 'L5'"),
        ("60 * * * * *", "second field '60' is out of range (0-59)"),
        ("*/0 * * * *", "minute field '*/0' has step 0 (expected a step of at least 1)"),
        ("*/60 * * * *", "minute field '*/60' has step 60, larger than the field's largest"),
        ("1,,2 * * * *", "minute field '1,,2' has an empty list item"),
        ("5-x * * * *", "minute field '5-x' is not valid (expected 0-59"),
        ("H * * * *", "minute field 'H' is not valid"),
        ("0 0 31 2 *", "day field '31' never occurs in month field '2' (those months have at most"),
        ("0 0 31 feb,apr *", "day field '31' never occurs in month field 'feb,apr'"),
        (
            "* * * *",
            "expected 5 fields (minute hour day month weekday) or 6 with seconds first, got 4",
        ),
        (
            "* * * * * * 2026",
            "expected 5 fields (minute hour day month weekday) or 6 with seconds first, got 7",
        ),
        (
            "@hourlyy",
            "unknown macro '@hourlyy' (expected one of @yearly, @annually, @monthly, @weekly, "
            "@daily, @midnight, @hourly, @startup)",
        ),
        ("every", "interval 'every' has no duration (expected such as 'every 30s')"),
        ("every 0s", "interval 'every 0s' must be longer than zero"),
        ("every 5 minutes", "interval 'every 5 minutes': '5 minutes' is not a duration"),
        ("every -5s", "interval 'every -5s': '-5s' is negative"),
        ("   ", "the schedule is empty (expected a cron expression, a macro such as @daily"),
    ],
)
def test_error_messages_name_the_field_and_what_was_expected(text: str, message: str) -> None:
    with pytest.raises(ScheduleError) as info:
        parse_schedule(text, UTC_ZONE)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"minutes": 5}, "unknown key 'minutes' (did you mean 'minute'?)"),
        ({"hours": 5}, "unknown key 'hours' (did you mean 'hour'?)"),
        ({"weekday": "mon"}, "unknown key 'weekday' (did you mean 'day_of_week'?)"),
        (
            {"year": 2026},
            "unknown key 'year' (expected second, minute, hour, day, month, day_of_week)",
        ),
        ({}, "the schedule mapping is empty (expected keys second, minute"),
        ({"minute": 61}, "minute field '61' is out of range (0-59)"),
        (
            {"day_of_week": "funday"},
            "day_of_week field 'funday' is not valid (expected sun-sat, a list or range of them",
        ),
        ({"day_of_week": 0}, "day_of_week 0 is ambiguous: APScheduler counts 0 as Monday"),
        ({"day_of_week": "1-5"}, "day_of_week '1-5' is ambiguous"),
        ({"hour": True}, "hour True is not valid (expected a number or a cron field such as"),
        ({"hour": 1.5}, "hour 1.5 is not valid"),
        ({"hour": []}, "hour is an empty list (expected at least one value)"),
        ({"day": 1, "day_of_week": "mon"}, "give day or day_of_week, not both"),
    ],
)
def test_mapping_errors(mapping: dict[str, object], message: str) -> None:
    with pytest.raises(ScheduleError) as info:
        parse_schedule(mapping, UTC_ZONE)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize("value", [5, None, ["0 * * * *"], 1.5])
def test_other_types_are_not_schedules(value: object) -> None:
    with pytest.raises(ScheduleError, match=r"is not a schedule \(expected a cron expression"):
        parse_schedule(value, UTC_ZONE)  # type: ignore[arg-type]


def test_naive_datetimes_are_refused() -> None:
    for s in (parse_schedule("* * * * *", BERLIN), parse_schedule("every 1s", BERLIN)):
        with pytest.raises(ValueError, match="needs an aware datetime, got naive"):
            s.next_after(datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="fires_between needs an aware datetime"):
        fires_between(parse_schedule("@daily", BERLIN), datetime(2026, 1, 1), utc(2026, 2, 1))


# ---------------------------------------------------------------------------------------
# describe()
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("form", "words"),
    [
        ("59 23 * * *", "at 23:59 every day"),
        ("0 9 * * mon-fri", "at 09:00 on Mon-Fri"),
        ("*/15 * * * *", "every 15 minutes"),
        ("* * * * * *", "every second"),
        ("*/10 * * * * *", "every 10 seconds"),
        ("0 * * * *", "every hour at :00"),
        ("@daily", "at 00:00 every day"),
        ("every 1h30m", "every 1h30m"),
        ("@startup", "at startup"),
        ("0 0 1 * *", "at 00:00 on day 1 of the month"),
        ("* * * * *", "every minute"),
        ("30 * * * * *", "every minute at second 30"),
        ("15 0 * * * *", "every hour at :00:15"),
        ("30 15 6 * * *", "at 06:15:30 every day"),
        ("7 */3 * * *", "every 3 hours at :07"),
        ("0 9,17 * * *", "at 09:00 and 17:00 every day"),
        ("0 1-3 * * *", "at 01:00, 02:00 and 03:00 every day"),
        ("*/5 9-17 * * 1-5", "every 5 minutes from 09:00 to 17:55 on Mon-Fri"),
        ("0 9 * * sat,sun", "at 09:00 on Sat and Sun"),
        ("0 9 * * 7", "at 09:00 on Sun"),
        ("@weekly", "at 00:00 on Sun"),
        ("@monthly", "at 00:00 on day 1 of the month"),
        ("@yearly", "at 00:00 on Jan 1"),
        ("0 0 L * *", "at 00:00 on the last day of the month"),
        ("0 0 1,15 * *", "at 00:00 on days 1 and 15 of the month"),
        ("0 0 1-7 * *", "at 00:00 on days 1-7 of the month"),
        ("0 0 * * fri#3", "at 00:00 on the 3rd Fri of the month"),
        ("0 0 * * L5", "at 00:00 on the last Fri of the month"),
        ("0 0 1 * mon", "at 00:00 on day 1 of the month or on Mon"),
        ("0 12 * jan-mar *", "at 12:00 every day in Jan-Mar"),
        ("*/15 * * dec *", "every 15 minutes in Dec"),
        ("0 0 25 12 *", "at 00:00 on Dec 25"),
        ("*/7 * * * *", "cron: */7 * * * *"),
        ("1-5 * * * *", "cron: 1-5 * * * *"),
        ("0 0 */2 * *", "cron: 0 0 */2 * *"),
        ("0,30 */2   * * *", "cron: 0,30 */2 * * *"),
    ],
)
def test_describe(form: str, words: str) -> None:
    assert parse_schedule(form, BERLIN).describe() == words


def test_describe_mappings() -> None:
    assert parse_schedule({"minute": "*/5"}, BERLIN).describe() == "every 5 minutes"
    assert parse_schedule({"day_of_week": "mon"}, BERLIN).describe() == "at 00:00 on Mon"
    assert parse_schedule({"minute": "1-5"}, BERLIN).describe() == "cron: 0 1-5 * * * *"


# ---------------------------------------------------------------------------------------
# Keys, equality, pickling, imports
# ---------------------------------------------------------------------------------------


def test_keys_are_canonical_and_include_the_zone() -> None:
    assert parse_schedule(" 59  23 * * * ", BERLIN).key == "cron:0 59 23 * * *@Europe/Berlin"
    assert parse_schedule("0 9 * * MON-FRI", BERLIN).key == "cron:0 0 9 * * mon-fri@Europe/Berlin"
    assert parse_schedule("0 9 * * *", BERLIN) != parse_schedule("0 9 * * *", NEW_YORK)
    assert parse_schedule("every 1m30s", BERLIN) == parse_schedule("every 90s", NEW_YORK)
    assert len({parse_schedule("@daily", BERLIN), parse_schedule("0 0 * * *", BERLIN)}) == 1


def test_schedules_pickle() -> None:
    for form in ("30 2 * * *", "every 5m", "@startup"):
        s = parse_schedule(form, BERLIN)
        copy = pickle.loads(pickle.dumps(s))
        assert copy == s
        assert copy.next_after(utc(2026, 3, 28)) == s.next_after(utc(2026, 3, 28))
    u = union([parse_schedule("@startup", BERLIN), parse_schedule("0 9 * * *", BERLIN)])
    assert pickle.loads(pickle.dumps(u)) == u


def test_importing_the_module_does_not_import_croniter() -> None:
    code = (
        "import sys, qtasks_cli.schedule as s, zoneinfo\n"
        "assert 'croniter' not in sys.modules\n"
        "s.parse_schedule('every 5s', zoneinfo.ZoneInfo('UTC'))\n"
        "assert 'croniter' not in sys.modules\n"
        "s.parse_schedule('* * * * *', zoneinfo.ZoneInfo('UTC'))\n"
        "assert 'croniter' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_cron_schedule_satisfies_the_protocol() -> None:
    s: Schedule = parse_schedule("0 9 * * *", BERLIN)
    assert isinstance(s, CronSchedule)
    assert s.startup is False
    assert s.fixed
    # cron(8): a minute or hour field starting with "*" follows the clock; a written-out
    # list of every hour is still a fixed-time job.
    assert not parse_schedule("0 * * * *", BERLIN).fixed  # type: ignore[attr-defined]
    assert not parse_schedule("*/5 3 * * *", BERLIN).fixed  # type: ignore[attr-defined]
    assert parse_schedule("0 0-23 * * *", BERLIN).fixed  # type: ignore[attr-defined]
    assert parse_schedule("* 0 3 * * *", BERLIN).fixed  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------
# fires_between
# ---------------------------------------------------------------------------------------


def test_fires_between_excludes_after_includes_until_and_honours_limit() -> None:
    s = parse_schedule("0 * * * *", UTC_ZONE)
    fires = fires_between(s, utc(2026, 1, 1, 0), utc(2026, 1, 1, 3))
    assert fires == [utc(2026, 1, 1, 1), utc(2026, 1, 1, 2), utc(2026, 1, 1, 3)]
    assert fires_between(s, utc(2026, 1, 1, 0), utc(2026, 1, 1, 3), limit=2) == fires[:2]
    assert fires_between(s, utc(2026, 1, 1, 0), utc(2026, 1, 1, 3), limit=0) == []
    assert fires_between(s, utc(2026, 1, 1, 3), utc(2026, 1, 1, 3)) == []
    assert fires_between(s, utc(2026, 1, 1, 3), utc(2026, 1, 1, 1)) == []


# ---------------------------------------------------------------------------------------
# Daylight saving time
# Europe/Berlin 2026: 03-29 02:00 CET -> 03:00 CEST (01:00 UTC); 10-25 03:00 CEST -> 02:00 CET.
# America/New_York 2026: 03-08 02:00 EST -> 03:00 EDT; 11-01 02:00 EDT -> 01:00 EST.
# ---------------------------------------------------------------------------------------

SPRING = {BERLIN: date(2026, 3, 29), NEW_YORK: date(2026, 3, 8)}
FALL = {BERLIN: date(2026, 10, 25), NEW_YORK: date(2026, 11, 1)}
ZONES = [BERLIN, NEW_YORK]
IDS = ["berlin", "new_york"]


def test_fixed_time_in_the_spring_gap_fires_once_at_the_gap_end_berlin() -> None:
    fires = local_day(parse_schedule("30 2 * * *", BERLIN), BERLIN, SPRING[BERLIN])
    assert fires == [utc(2026, 3, 29, 1)]
    assert walls(fires, BERLIN) == ["2026-03-29T03:00:00+02:00"]


def test_fixed_time_in_the_spring_gap_fires_once_at_the_gap_end_new_york() -> None:
    fires = local_day(parse_schedule("30 2 * * *", NEW_YORK), NEW_YORK, SPRING[NEW_YORK])
    assert walls(fires, NEW_YORK) == ["2026-03-08T03:00:00-04:00"]


@pytest.mark.parametrize("zone", ZONES, ids=IDS)
def test_several_gap_times_collapse_into_one_fire(zone: ZoneInfo) -> None:
    fires = local_day(parse_schedule("0,15,30,45 2 * * *", zone), zone, SPRING[zone])
    assert len(fires) == 1
    assert fires[0].astimezone(zone).strftime("%H:%M") == "03:00"


@pytest.mark.parametrize("zone", ZONES, ids=IDS)
def test_gap_end_that_is_itself_a_cron_time_fires_once(zone: ZoneInfo) -> None:
    fires = local_day(parse_schedule("0,30 2,3 * * *", zone), zone, SPRING[zone])
    assert [f.astimezone(zone).strftime("%H:%M") for f in fires] == ["03:00", "03:30"]


@pytest.mark.parametrize("zone", ZONES, ids=IDS)
def test_gap_fire_is_found_from_the_last_second_before_the_change(zone: ZoneInfo) -> None:
    s = parse_schedule("30 2 * * *", zone)
    day = SPRING[zone]
    gap_end = at(zone, day.year, day.month, day.day, 3).astimezone(UTC)
    for before in (timedelta(seconds=1), timedelta(microseconds=1), timedelta(minutes=30)):
        assert s.next_after(gap_end - before) == gap_end
    nxt = s.next_after(gap_end)
    assert nxt is not None
    assert nxt.astimezone(zone).strftime("%d %H:%M") == f"{day.day + 1:02} 02:30"


def test_fixed_time_in_the_repeated_hour_fires_once_at_first_occurrence() -> None:
    fires = local_day(parse_schedule("30 2 * * *", BERLIN), BERLIN, FALL[BERLIN])
    assert fires == [utc(2026, 10, 25, 0, 30)]  # 02:30 CEST, not 02:30 CET
    fires = local_day(parse_schedule("30 1 * * *", NEW_YORK), NEW_YORK, FALL[NEW_YORK])
    assert walls(fires, NEW_YORK) == ["2026-11-01T01:30:00-04:00"]


@pytest.mark.parametrize("zone", ZONES, ids=IDS)
def test_fixed_time_starting_inside_the_repeated_hour_skips_its_second_pass(
    zone: ZoneInfo,
) -> None:
    hour = 2 if zone is BERLIN else 1
    day = FALL[zone]
    s = parse_schedule(f"45 {hour} * * *", zone)
    second_pass_start = at(zone, day.year, day.month, day.day, hour, 10, fold=1)
    nxt = s.next_after(second_pass_start)
    assert nxt is not None
    assert nxt.astimezone(zone).date() == day + timedelta(days=1)


@pytest.mark.parametrize("zone", ZONES, ids=IDS)
def test_fixed_times_in_and_around_the_repeated_hour(zone: ZoneInfo) -> None:
    hour = 2 if zone is BERLIN else 1
    s = parse_schedule(f"0,30 {hour - 1}-{hour + 1} * * *", zone)
    fires = local_day(s, zone, FALL[zone])
    got = [f.astimezone(zone).strftime("%H:%M") for f in fires]
    h = [f"{x:02}" for x in (hour - 1, hour, hour + 1)]
    assert got == [
        f"{h[0]}:00",
        f"{h[0]}:30",
        f"{h[1]}:00",
        f"{h[1]}:30",
        f"{h[2]}:00",
        f"{h[2]}:30",
    ]
    assert len({f.astimezone(zone).replace(tzinfo=None) for f in fires}) == len(fires)


def test_star_hour_cron_skips_the_gap_berlin() -> None:
    fires = local_day(parse_schedule("0 * * * *", BERLIN), BERLIN, SPRING[BERLIN])
    assert len(fires) == 23
    assert walls(fires[:3], BERLIN) == [
        "2026-03-29T00:00:00+01:00",
        "2026-03-29T01:00:00+01:00",
        "2026-03-29T03:00:00+02:00",
    ]
    assert fires[2] - fires[1] == timedelta(hours=1)


def test_star_hour_cron_fires_in_both_passes_of_the_repeated_hour_berlin() -> None:
    fires = local_day(parse_schedule("0 * * * *", BERLIN), BERLIN, FALL[BERLIN])
    assert len(fires) == 25
    assert walls(fires[1:5], BERLIN) == [
        "2026-10-25T01:00:00+02:00",
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:00:00+01:00",
        "2026-10-25T03:00:00+01:00",
    ]
    half = local_day(parse_schedule("*/30 * * * *", BERLIN), BERLIN, FALL[BERLIN])
    assert walls(half[4:9], BERLIN) == [
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:30:00+02:00",
        "2026-10-25T02:00:00+01:00",
        "2026-10-25T02:30:00+01:00",
        "2026-10-25T03:00:00+01:00",
    ]
    assert len(half) == 50


def test_star_hour_cron_through_both_changes_new_york() -> None:
    spring = local_day(parse_schedule("0 * * * *", NEW_YORK), NEW_YORK, SPRING[NEW_YORK])
    assert walls(spring[1:3], NEW_YORK) == [
        "2026-03-08T01:00:00-05:00",
        "2026-03-08T03:00:00-04:00",
    ]
    assert len(spring) == 23
    fall = local_day(parse_schedule("*/30 * * * *", NEW_YORK), NEW_YORK, FALL[NEW_YORK])
    assert walls(fall[2:7], NEW_YORK) == [
        "2026-11-01T01:00:00-04:00",
        "2026-11-01T01:30:00-04:00",
        "2026-11-01T01:00:00-05:00",
        "2026-11-01T01:30:00-05:00",
        "2026-11-01T02:00:00-05:00",
    ]
    assert len(fall) == 50


@pytest.mark.parametrize("macro", ["@hourly", {"minute": 0}])
def test_hourly_forms_follow_elapsed_time(macro: object) -> None:
    s = parse_schedule(macro, NEW_YORK)  # type: ignore[arg-type]
    assert len(local_day(s, NEW_YORK, SPRING[NEW_YORK])) == 23
    assert len(local_day(s, NEW_YORK, FALL[NEW_YORK])) == 25


@pytest.mark.parametrize("zone", ZONES, ids=IDS)
def test_daily_fixed_time_fires_exactly_once_on_each_change_day(zone: ZoneInfo) -> None:
    hour = 2 if zone is BERLIN else 1  # the repeated hour on fall-back day
    for form, day in ((f"30 {hour} * * *", FALL[zone]), ("30 2 * * *", SPRING[zone])):
        assert len(local_day(parse_schedule(form, zone), zone, day)) == 1
    for day in (SPRING[zone], FALL[zone]):
        assert len(local_day(parse_schedule("@daily", zone), zone, day)) == 1


def test_every_second_follows_elapsed_time_over_whole_change_days_berlin() -> None:
    s = parse_schedule("* * * * * *", BERLIN)
    spring = local_day(s, BERLIN, SPRING[BERLIN])
    assert len(spring) == 23 * 3600
    fall = local_day(s, BERLIN, FALL[BERLIN])
    assert len(fall) == 25 * 3600
    for fires in (spring, fall):
        assert all(b - a == timedelta(seconds=1) for a, b in itertools.pairwise(fires))


@pytest.mark.parametrize("which", ["spring", "fall"])
def test_every_second_across_the_change_new_york(which: str) -> None:
    s = parse_schedule("* * * * * *", NEW_YORK)
    change = {"spring": utc(2026, 3, 8, 7), "fall": utc(2026, 11, 1, 6)}[which]
    fires = fires_between(s, change - timedelta(minutes=20), change + timedelta(minutes=20))
    assert len(fires) == 2400
    assert all(b - a == timedelta(seconds=1) for a, b in itertools.pairwise(fires))
    local = [f.astimezone(NEW_YORK) for f in fires]
    assert local[1198].utcoffset() != local[1199].utcoffset()  # 1199 is the change itself


def test_fixed_time_every_second_cron_in_the_gap_collapses_to_one_fire() -> None:
    s = parse_schedule("* 30 2 * * *", BERLIN)  # every second of 02:30, minute and hour fixed
    spring = local_day(s, BERLIN, SPRING[BERLIN])
    assert walls(spring, BERLIN) == ["2026-03-29T03:00:00+02:00"]
    fall = local_day(s, BERLIN, FALL[BERLIN])
    assert len(fall) == 60
    assert {f.astimezone(BERLIN).utcoffset() for f in fall} == {timedelta(hours=2)}


def test_a_leading_star_minute_follows_the_clock_through_both_changes() -> None:
    s = parse_schedule("* * 2 * * *", BERLIN)  # minute "*": cron(8) follows the clock
    assert local_day(s, BERLIN, SPRING[BERLIN]) == []  # 02:xx does not exist: no catch-up
    fall = local_day(s, BERLIN, FALL[BERLIN])
    assert len(fall) == 7200  # both passes of the repeated hour
    assert {f.astimezone(BERLIN).utcoffset() for f in fall} == {
        timedelta(hours=2),
        timedelta(hours=1),
    }


def test_a_midnight_gap_moves_daily_fires_to_the_gap_end() -> None:
    # Chile springs forward at 24:00: 2026-09-06 00:00 does not exist, the day starts at 01:00.
    santiago = ZoneInfo("America/Santiago")
    s = parse_schedule("@daily", santiago)
    fires = nexts(s, at(santiago, 2026, 9, 5, 12), 2)
    assert walls(fires, santiago) == ["2026-09-06T01:00:00-03:00", "2026-09-07T00:00:00-03:00"]


def test_lord_howe_half_hour_shift() -> None:
    lord_howe = ZoneInfo("Australia/Lord_Howe")
    # 2026-10-04 02:00 +10:30 -> 02:30 +11:00; 2026-04-05 02:00 +11:00 -> 01:30 +10:30.
    gap = local_day(parse_schedule("15 2 * * *", lord_howe), lord_howe, date(2026, 10, 4))
    assert walls(gap, lord_howe) == ["2026-10-04T02:30:00+11:00"]
    halves = local_day(parse_schedule("*/30 * * * *", lord_howe), lord_howe, date(2026, 4, 5))
    assert len(halves) == 49
    assert walls(halves[3:6], lord_howe) == [
        "2026-04-05T01:30:00+11:00",
        "2026-04-05T01:30:00+10:30",
        "2026-04-05T02:00:00+10:30",
    ]


def test_a_long_jump_still_sees_both_changes_it_crosses() -> None:
    # Chile falls back at 24:00 (Sat 2026-04-04 24:00 -03 -> 23:00 -04), so from 23:40 in the
    # first pass the next wall time of this cron in the old offset is in October, where the
    # offset is -03 again; only probing the span finds the repeated 23:30 in between.
    santiago = ZoneInfo("America/Santiago")
    s = parse_schedule("30 * 4 4,10 *", santiago)
    fires = nexts(s, at(santiago, 2026, 4, 4, 23, 40), 2)
    assert walls(fires, santiago) == ["2026-04-04T23:30:00-04:00", "2026-10-04T00:30:00-03:00"]
