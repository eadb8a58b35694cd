"""Hypothesis properties of ``qtasks_cli.schedule``, and a brute-force oracle for the DST rules."""

from __future__ import annotations

import functools
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qtasks_cli.durations import format_duration
from qtasks_cli.errors import ScheduleError
from qtasks_cli.schedule import fires_between, parse_schedule

UTC = timezone.utc
ZONE_NAMES = [
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",  # a 30-minute DST shift
    "UTC",
    "Asia/Kolkata",  # +05:30, no DST
]
PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@functools.cache
def change_days(zone_name: str) -> tuple[date, ...]:
    """Local days on which the zone's UTC offset changes, 2024-2030."""
    zone = ZoneInfo(zone_name)
    days = []
    day = date(2024, 1, 1)
    while day < date(2031, 1, 1):
        start = datetime(day.year, day.month, day.day, tzinfo=zone)
        if start.utcoffset() != (start + timedelta(days=1)).utcoffset():
            days.append(day)
        day += timedelta(days=1)
    return tuple(days)


@st.composite
def zone_and_day(draw: st.DrawFn) -> tuple[ZoneInfo, date]:
    """A zone and a local day, usually one on which its offset changes."""
    name = draw(st.sampled_from(ZONE_NAMES))
    changes = change_days(name)
    near_a_change: bool = draw(st.booleans())
    if changes and near_a_change:
        day = draw(st.sampled_from(changes))
    else:
        day = draw(st.dates(date(2024, 1, 1), date(2030, 12, 31)))
    return ZoneInfo(name), day


def values(low: int, high: int, likely: list[int]) -> st.SearchStrategy[list[int]]:
    one = st.sampled_from(likely) | st.integers(low, high)
    return st.lists(one, min_size=1, max_size=4, unique=True).map(sorted)


minutes = values(0, 59, [0, 15, 30, 45])
hours = st.none() | values(0, 23, [0, 1, 2, 3])  # None is "*"


def cron_text(minute_values: list[int], hour_values: list[int] | None) -> str:
    hour = "*" if hour_values is None else ",".join(map(str, hour_values))
    return f"{','.join(map(str, minute_values))} {hour} * * *"


def offset(zone: ZoneInfo, instant: datetime) -> timedelta | None:
    return instant.astimezone(zone).utcoffset()


def oracle(
    zone: ZoneInfo, first: date, days: int, minute_values: list[int], hour_values: list[int] | None
) -> set[datetime]:
    """Every fire, by the stated rules, of the cron's wall times on ``days`` local days."""
    fixed = hour_values is not None
    fires: set[datetime] = set()
    for n in range(days):
        day = first + timedelta(days=n)
        for hour in hour_values if hour_values is not None else range(24):
            for minute in minute_values:
                wall = datetime(day.year, day.month, day.day, hour, minute)
                early = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
                late = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
                exists = early.astimezone(zone).replace(tzinfo=None) == wall
                if not exists:  # in a gap: fold=1 lies before the change, fold=0 after it
                    if fixed:
                        instant = late
                        before = offset(zone, late)
                        while offset(zone, instant) == before:
                            instant += timedelta(minutes=1)
                        fires.add(instant)  # zones here change on whole minutes
                elif early != late:  # the repeated hour
                    fires.add(early)
                    if not fixed:
                        fires.add(late)
                else:
                    fires.add(early)
    return fires


@PROPS
@given(zone_and_day(), minutes, hours)
def test_fires_match_a_brute_force_oracle_of_the_dst_rules(
    zone_day: tuple[ZoneInfo, date], minute_values: list[int], hour_values: list[int] | None
) -> None:
    zone, day = zone_day
    schedule = parse_schedule(cron_text(minute_values, hour_values), zone)
    # The oracle covers the days around the window, so every fire inside it is known.
    expected = oracle(zone, day - timedelta(days=1), 4, minute_values, hour_values)
    after = datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)
    until = after + timedelta(days=2)
    assert fires_between(schedule, after, until) == sorted(
        f for f in expected if after < f <= until
    )


def compiles(expression: str) -> bool:
    try:
        parse_schedule(expression, ZoneInfo("UTC"))
    except ScheduleError:  # such as a day of the month together with fri#2
        return False
    return True


crons = st.builds(
    "{} {} {} {} {} {}".format,
    st.sampled_from(["0", "*/20", "5,35", "*"]),
    st.sampled_from(["*", "0", "*/15", "7,37", "59"]),
    st.sampled_from(["*", "2", "1-3", "*/5", "0,2,23", "22-1"]),
    st.sampled_from(["*", "1", "L", "15,L", "29", "1-7"]),
    st.sampled_from(["*", "*", "3,10", "jan-jun", "feb"]),
    st.sampled_from(["*", "*", "mon-fri", "sun", "fri#2", "L0", "sat,sun"]),
).filter(compiles)
instants = st.datetimes(datetime(2024, 1, 1), datetime(2030, 12, 31), timezones=st.just(UTC))


@PROPS
@given(crons, st.sampled_from(ZONE_NAMES), instants)
def test_chained_fires_strictly_increase_and_are_utc(
    expression: str, zone_name: str, start: datetime
) -> None:
    schedule = parse_schedule(expression, ZoneInfo(zone_name))
    t = start
    for _ in range(5):
        nxt = schedule.next_after(t)
        assert nxt is not None
        assert nxt > t
        assert nxt.tzinfo is UTC
        assert nxt.microsecond == 0
        # Anything between t and the fire would have been found first.
        assert schedule.next_after(t + (nxt - t) / 2) == nxt
        t = nxt


@PROPS
@given(zone_and_day(), minutes, values(0, 23, [0, 1, 2, 3]), st.sampled_from(["0", "30", "*/20"]))
def test_fixed_hour_fires_never_repeat_a_wall_time_and_sit_on_cron_times_or_gap_ends(
    zone_day: tuple[ZoneInfo, date], minute_values: list[int], hour_values: list[int], sec: str
) -> None:
    zone, day = zone_day
    text = f"{sec} {','.join(map(str, minute_values))} {','.join(map(str, hour_values))} * * *"
    schedule = parse_schedule(text, zone)
    after = datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)
    fires = fires_between(schedule, after - timedelta(days=1), after + timedelta(days=2))
    local = [f.astimezone(zone) for f in fires]
    assert len({d.replace(tzinfo=None) for d in local}) == len(local)
    seconds = {0} if sec == "0" else {30} if sec == "30" else {0, 20, 40}
    for fire, wall in zip(fires, local, strict=True):
        on_cron = (
            wall.hour in hour_values and wall.minute in minute_values and wall.second in seconds
        )
        # A fire off the cron's wall times is only ever the end of a spring-forward gap.
        gap_end = offset(zone, fire - timedelta(seconds=1)) < wall.utcoffset()  # type: ignore[operator]
        assert on_cron or gap_end
        assert wall.fold == 0


@PROPS
@given(
    st.integers(1, 7 * 86_400).map(lambda s: timedelta(seconds=s)),
    st.sampled_from(ZONE_NAMES),
    instants,
)
def test_intervals_advance_by_exactly_the_interval(
    interval: timedelta, zone_name: str, start: datetime
) -> None:
    zone = ZoneInfo(zone_name)
    schedule = parse_schedule(f"every {format_duration(interval)}", zone)
    t = start.astimezone(zone)
    for _ in range(3):
        nxt = schedule.next_after(t)
        assert nxt is not None
        assert nxt - t == interval
        assert nxt.tzinfo is UTC
        t = nxt


# --- cron(8)'s two rules keyed on a leading "*", against a brute-force reference ------------
#
# Vixie/ISC cron and cronie (entry.c sets DOM_STAR/DOW_STAR, MIN_STAR/HR_STAR when a field's
# first character is "*"; cron.c's find_jobs and its time-jump handling use them):
# * the day fields are ORed only when neither starts with "*", else ANDed;
# * a job whose minute or hour field starts with "*" follows the wall clock as it is (both
#   passes of a repeated hour, nothing for a skipped one); the others are fixed-time jobs.


@st.composite
def field_text(draw: st.DrawFn, low: int, high: int) -> str:
    """A cron field in the forms people write: *, */N, a, a-b, a-b/N, a,b."""
    a = draw(st.integers(low, high))
    b = draw(st.integers(a, high))
    n = draw(st.integers(1, max(1, high)))
    c = draw(st.integers(low, high))
    return draw(st.sampled_from(["*", f"*/{n}", f"{a}", f"{a}-{b}", f"{a}-{b}/{n}", f"{a},{c}"]))


def field_values(text: str, low: int, high: int) -> set[int]:
    """An independent reading of ``field_text``'s forms (crontab(5))."""
    found: set[int] = set()
    for part in text.split(","):
        rng, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if rng == "*":
            a, b = low, high
        elif "-" in rng:
            a, b = map(int, rng.split("-"))
        else:
            a = int(rng)
            b = high if step_text else a
        found.update(range(a, b + 1, step))
    return found


def day_matches(day: date, dom: str, dow: str) -> bool:
    dom_ok = day.day in field_values(dom, 1, 31)
    dow_ok = (day.isoweekday() % 7) in {v % 7 for v in field_values(dow, 0, 7)}
    if dom.startswith("*") or dow.startswith("*"):
        return dom_ok and dow_ok
    return dom_ok or dow_ok


@PROPS
@given(field_text(1, 31), field_text(0, 7), st.dates(date(2020, 1, 1), date(2030, 12, 31)))
def test_day_fields_combine_as_cron8_says(dom: str, dow: str, first: date) -> None:
    try:
        schedule = parse_schedule(f"0 0 {dom} * {dow}", UTC_ZONE)
    except ScheduleError:  # such as day 31 in a 30-day month under AND: refused, not silent
        return
    after = datetime(first.year, first.month, first.day, tzinfo=UTC) - timedelta(seconds=1)
    until = after + timedelta(days=400)
    got = [f.date() for f in fires_between(schedule, after, until)]
    expected = [
        first + timedelta(days=n)
        for n in range(401)
        if day_matches(first + timedelta(days=n), dom, dow)
        and datetime.combine(first + timedelta(days=n), datetime.min.time(), UTC) <= until
    ]
    assert got == expected


UTC_ZONE = ZoneInfo("UTC")


def clock_oracle(
    zone: ZoneInfo, first: date, days: int, minutes_: set[int], hours_: set[int], fixed: bool
) -> set[datetime]:
    """Every fire, by cron(8)'s DST rule, of the wall times on ``days`` local days."""
    fires: set[datetime] = set()
    for n in range(days):
        day = first + timedelta(days=n)
        for hour in sorted(hours_):
            for minute in sorted(minutes_):
                wall = datetime(day.year, day.month, day.day, hour, minute)
                early = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
                late = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
                exists = early.astimezone(zone).replace(tzinfo=None) == wall
                if not exists:
                    if fixed:  # right after the skipped time
                        instant = late
                        before = offset(zone, late)
                        while offset(zone, instant) == before:
                            instant += timedelta(minutes=1)
                        fires.add(instant)
                elif early != late:
                    fires.add(early)
                    if not fixed:  # both passes of the repeated hour
                        fires.add(late)
                else:
                    fires.add(early)
    return fires


@PROPS
@given(zone_and_day(), field_text(0, 59), field_text(0, 23))
def test_dst_follows_the_clock_exactly_when_minute_or_hour_starts_with_a_star(
    zone_day: tuple[ZoneInfo, date], minute: str, hour: str
) -> None:
    zone, day = zone_day
    minutes_, hours_ = field_values(minute, 0, 59), field_values(hour, 0, 23)
    if len(minutes_) * len(hours_) > 300:  # keep the reference quick: thin the minutes
        minute = f"*/{max(1, 60 * len(hours_) // 300)}"
        minutes_ = field_values(minute, 0, 59)
    schedule = parse_schedule(f"{minute} {hour} * * *", zone)
    fixed = not (minute.startswith("*") or hour.startswith("*"))
    expected = clock_oracle(zone, day - timedelta(days=1), 4, minutes_, hours_, fixed)
    after = datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)
    until = after + timedelta(days=2)
    assert fires_between(schedule, after, until) == sorted(
        f for f in expected if after < f <= until
    )
