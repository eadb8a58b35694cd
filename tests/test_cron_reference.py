"""Cron fields and fires against references: a model of cronie's field grammar (crontab(5),
cronie's entry.c ``get_list``/``get_range``/``get_number``) and cronsim, an independent
implementation of Vixie/Debian cron's rules, for the fires themselves.

The invariant: qtasks accepts a 5-field cron line that cronie accepts, with cronie's meaning,
and refuses what cronie refuses, except for its documented extensions (``L``, ``#``, ``?``,
which cronie refuses, so they never change the meaning of anything cronie reads). The one
deliberate difference: cronie ignores text after a bare ``*`` (``*-5`` is ``*``); qtasks
refuses it.
"""

from __future__ import annotations

import random
import re
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from qtasks_cli.errors import ScheduleError
from qtasks_cli.schedule import fires_between, parse_schedule
from qtasks_cli.schedule.fields import _DAY, _HOUR, _MINUTE, _MONTH, _WEEKDAY, _parse_field

cronsim = pytest.importorskip("cronsim")

UTC = timezone.utc
MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun"]
# (spec, low, high, names) as cronie's load_entry passes them to get_list.
FIELDS = [
    (_MINUTE, 0, 59, None),
    (_HOUR, 0, 23, None),
    (_DAY, 1, 31, None),
    (_MONTH, 1, 12, MONTHS),
    (_WEEKDAY, 0, 7, DAYS),
]


def cronie_field(text: str, low: int, high: int, names: list[str] | None) -> set[int] | None:
    """The values cronie gives a field, or None where it refuses it (a model written from
    crontab(5) and cronie's parser: ``list = range {"," range}``, ``range = "*" ["/" step] |
    number ["-" number ["/" step]]``, numbers in [low, high], names case-insensitively, a range
    never backwards, a step from 1 to ``high``)."""
    if text.startswith("*"):
        rest = text[1:]
        if not rest.startswith(("/", ",")) and rest:
            return set(range(low, high + 1))  # cronie skips what follows a bare '*'
    values: set[int] = set()

    def number(token: str) -> int | None:
        if token.isascii() and token.isdigit():
            return int(token) if low <= int(token) <= high else None
        if names is not None and token.lower() in names:
            return names.index(token.lower()) + low
        return None

    for part in text.split(","):
        match = re.fullmatch(r"(\*|[A-Za-z0-9]+)(?:-([A-Za-z0-9]+))?(?:/([0-9]+))?", part)
        if match is None:
            return None
        start, end, step_text = match.groups()
        if start == "*":
            if end is not None:
                return None
            a, b = low, high
        else:
            first = number(start)
            if first is None:
                return None
            if end is None:
                if step_text is not None:
                    return None  # cronie: '/' does not end a single number
                values.add(first)
                continue
            last = number(end)
            if last is None or first > last:
                return None
            a, b = first, last
        step = 1 if step_text is None else int(step_text)
        if not 1 <= step <= high:
            return None
        values.update(range(a, b + 1, step))
    return values


EXTENSION = re.compile(r"[lL#?]")  # L, #, ? (and Ln/nL): cronie refuses them all


def fold_sunday(values: set[int], weekday: bool) -> set[int]:
    return {v % 7 for v in values} if weekday else values


def random_field(rng: random.Random, low: int, high: int, names: list[str] | None) -> str:
    def token() -> str:
        roll = rng.random()
        if names is not None and roll < 0.2:
            name = rng.choice(names)
            return rng.choice([name, name.upper(), name.title()])
        if roll < 0.3:
            return str(rng.choice([low - 1, high + 1, 0, 7, 99, high]))
        return f"{rng.randint(low, high):0{rng.choice([1, 1, 2])}d}"

    def item() -> str:
        form = rng.choice(["n", "a-b", "a-b/s", "*", "*/s", "a/s", "*-b", "L", "?", "a#n", ""])
        step = str(rng.choice([0, 1, 2, 5, high, high + 1, 7, 15]))
        return {
            "n": token(),
            "a-b": f"{token()}-{token()}",
            "a-b/s": f"{token()}-{token()}/{step}",
            "*": "*",
            "*/s": f"*/{step}",
            "a/s": f"{token()}/{step}",
            "*-b": f"*-{token()}",
            "L": "L",
            "?": "?",
            "a#n": f"{token()}#{rng.randint(0, 6)}",
            "": "",
        }[form]

    return ",".join(item() for _ in range(rng.choice([1, 1, 1, 2, 3])))


def test_fields_match_cronies_grammar_seeded_fuzz() -> None:
    rng = random.Random(14)
    checked = accepted = 0
    for _ in range(6000):
        spec, low, high, names = rng.choice(FIELDS)
        text = random_field(rng, low, high, names)
        if not text:
            continue
        reference = cronie_field(text, low, high, names)
        try:
            ours: set[int] | None = set(_parse_field(text, spec).values)
        except ScheduleError:
            ours = None
        checked += 1
        weekday = spec is _WEEKDAY
        if reference is None:
            assert ours is None or EXTENSION.search(text), (spec.name, text, ours)
        elif ours is None:
            # cronie reads "*-5" as "*" (it skips what follows); qtasks refuses the garbage.
            assert re.match(r"\*[^/,]", text) or re.search(r",\*[^/,]", text), (spec.name, text)
        else:
            accepted += 1
            if "l" in text.lower() and spec is _DAY:
                continue
            assert ours == fold_sunday(reference, weekday), (spec.name, text)
    assert accepted > 500 and checked > 5000


@pytest.mark.parametrize(
    ("cron", "says"),
    [
        ("5-1 * * * *", "minute field '5-1' runs backwards (5 is after 1); cron(8) refuses"),
        ("0 22-2 * * *", "write 22-23,0-2"),
        ("0 0 * * sat-sun", "weekday field 'sat-sun' runs backwards (6 is after 0)"),
        ("0 0 * * sat-sun", "write 6-7"),
        ("0 0 * nov-feb *", "write 11-12,1-2"),
        ("0/5 * * * *", "write 0-59/5 for every 5 from 0"),
        ("*/60 * * * *", "step 60, larger than the field's largest value 59"),
        ("0 */24 * * *", "step 24, larger than the field's largest value 23"),
        ("0 0 15W * *", "day field '15W' is not valid"),
        ("0 0 * * 1~5", "is not valid"),
        ("0\u00a00 * * *", "U+00A0"),
        ("0 0 * *\n*", "U+000A"),
        ("@reboot", "write '@startup'"),
        ("0 0 * * sunday", "weekday field 'sunday' is not valid"),
        ("0 0 * * 8", "weekday field '8' is out of range (0-7)"),
        ("0 0 * * " + "5" * 5000, "weekday field '5555"),
    ],
)
def test_what_cronie_refuses_is_refused_with_the_field(cron: str, says: str) -> None:
    with pytest.raises(ScheduleError) as info:
        parse_schedule(cron, ZoneInfo("UTC"))
    assert says in str(info.value)


@pytest.mark.parametrize(
    ("cron", "same_as"),
    [
        ("0 0 * * MON-FRI", "0 0 * * 1-5"),
        ("0 0 * * 7", "0 0 * * 0"),
        ("0 0 * * 5-7", "0 0 * * 0,5,6"),
        ("0 0 * * 0-7/7", "0 0 * * 0"),
        ("0 0 * * 1-7/3", "0 0 * * 1,4,0"),
        ("0 0 * JAN-mar *", "0 0 * 1-3 *"),
        ("05 007 * * *", "5 7 * * *"),
        ("  0\t0 * * *\n", "0 0 * * *"),
        ("*/59 * * * *", "0,59 * * * *"),
        ("10-20/15 * * * *", "10 * * * *"),
        ("@daily", "0 0 * * *"),
    ],
)
def test_what_cronie_accepts_means_what_cronie_means(cron: str, same_as: str) -> None:
    zone = ZoneInfo("UTC")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    ours = fires_between(parse_schedule(cron, zone), start, start + timedelta(days=60))
    assert ours == fires_between(parse_schedule(same_as, zone), start, start + timedelta(days=60))


# --- the fires: cronsim as the reference ---------------------------------------------------

# Zones whose offset changes are all under cron(8)'s 3 hours (the large jumps are below).
SMALL_JUMPS = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",  # 30-minute shifts
    "Europe/Riga",
    "America/Santiago",  # changes at midnight
    "Asia/Kolkata",
]


def random_cron(rng: random.Random) -> str:
    def field(low: int, high: int, star_weight: float) -> str:
        roll = rng.random()
        if roll < star_weight:
            return "*"
        if roll < star_weight + 0.15:
            return f"*/{rng.randint(1, high)}"
        a = rng.randint(low, high - 1)
        b = rng.randint(a + 1, high)  # cronsim reads "4-4/1" as "4-max/1": not a case here
        return rng.choice(
            [str(a), f"{a}-{b}", f"{a}-{b}/{rng.randint(1, high)}", f"{a},{rng.randint(low, high)}"]
        )

    return " ".join(
        [
            field(0, 59, 0.2),
            field(0, 23, 0.3),
            field(1, 31, 0.6),
            field(1, 12, 0.7),
            field(0, 7, 0.6),
        ]
    )


def test_fires_match_cronsim_seeded_fuzz() -> None:
    rng = random.Random(1414)
    compared = 0
    for _ in range(600):
        cron = random_cron(rng)
        zone = ZoneInfo(rng.choice(SMALL_JUMPS))
        try:
            schedule = parse_schedule(cron, zone)
        except ScheduleError:
            continue  # such as day 31 in months of 30 days under AND: cronsim refuses it too
        # Near a change of offset half the time.
        year = rng.randint(2020, 2030)
        start = datetime(year, rng.choice([3, 4, 10, 11, 1, 6]), rng.randint(1, 28), tzinfo=zone)
        start += timedelta(minutes=rng.randint(0, 24 * 60))
        reference = cronsim.CronSim(cron, start)
        expected = [next(reference).astimezone(UTC) for _ in range(8)]
        ours = fires_between(schedule, start, expected[-1] + timedelta(seconds=1))
        assert ours == expected, (cron, str(zone), start)
        compared += 1
    assert compared > 400


# --- changes of 3 hours or more: a correction of the clock, cron(8) takes the new time ------


def local(fires: list[datetime], zone: ZoneInfo) -> list[str]:
    return [f.astimezone(zone).isoformat() for f in fires]


def test_a_day_skipped_by_the_date_line_runs_nothing_of_that_day() -> None:
    """Pacific/Apia jumped from 2011-12-29 24:00-10:00 to 2011-12-31 00:00+14:00. cron(8):
    "Time changes of more than 3 hours are considered to be corrections to the clock or the
    timezone, and the new time is used immediately" (cronie's cron.c, the large wake-up):
    nothing of December 30 runs, and December 31 runs as usual."""
    apia = ZoneInfo("Pacific/Apia")
    after = datetime(2011, 12, 29, 10, tzinfo=apia)
    until = after + timedelta(days=3)

    def fires(cron: str) -> list[str]:
        return local(fires_between(parse_schedule(cron, apia), after, until), apia)

    assert fires("0 12 * * *") == ["2011-12-29T12:00:00-10:00", "2011-12-31T12:00:00+14:00"]
    assert fires("0 9 * * fri") == []  # December 30 was the Friday
    assert fires("0 0 * * *") == ["2011-12-31T00:00:00+14:00", "2012-01-01T00:00:00+14:00"]
    every = fires("*/30 * * * *")
    assert "2011-12-29T23:30:00-10:00" in every and "2011-12-31T00:00:00+14:00" in every
    assert not any(f.startswith("2011-12-30") for f in every)


def test_exactly_three_hours_forward_is_a_correction_but_three_back_is_not() -> None:
    """Antarctica/Casey: +08 to +11 on 2009-10-18 at 02:00, back to +08 on 2010-03-05 at 02:00
    (+11). cronie compares the minutes between two wake-ups with 180: 3 hours forward is
    181 (large), 3 hours back is -179 (a small change back)."""
    casey = ZoneInfo("Antarctica/Casey")
    forward = parse_schedule("30 3 * * *", casey)
    start = datetime(2009, 10, 17, 12, tzinfo=casey)
    assert local(fires_between(forward, start, start + timedelta(days=2)), casey) == [
        "2009-10-19T03:30:00+11:00"  # 03:30 of the 18th never was, and is not made up
    ]
    back = parse_schedule("30 1 * * *", casey)
    start = datetime(2010, 3, 4, 12, tzinfo=casey)
    assert local(fires_between(back, start, start + timedelta(days=2)), casey) == [
        "2010-03-05T01:30:00+11:00",  # once, as in an ordinary repeated hour
        "2010-03-06T01:30:00+08:00",
    ]


def test_a_large_move_back_repeats_fixed_times_by_the_new_clock() -> None:
    """Pacific/Kwajalein went back 23 hours after 1969-09-30 24:00+11:00: cron(8) takes the
    new time at once, so September 30 runs again, fixed times included."""
    kwaj = ZoneInfo("Pacific/Kwajalein")
    start = datetime(1969, 9, 30, 6, tzinfo=kwaj)
    fires = fires_between(parse_schedule("0 12 * * *", kwaj), start, start + timedelta(days=3))
    assert local(fires, kwaj)[:3] == [
        "1969-09-30T12:00:00+11:00",
        "1969-09-30T12:00:00-12:00",
        "1969-10-01T12:00:00-12:00",
    ]
