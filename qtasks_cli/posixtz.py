"""POSIX TZ rule strings (``JST-9``, ``CET-1CEST,M3.5.0,M10.5.0/3``) read as glibc's tzset(3)
reads them, or refused.

Python's ``zoneinfo`` applies such a rule (as the footer of a TZif file) but parses it more
loosely than the C library: it takes one-letter names (``A-9``, which glibc does not read, so
the machine runs on UTC), offsets of 24 hours (which no ``datetime`` can hold), ``9:75`` as
10:15 where glibc clamps it to 9:59, and ``M3.2x0``. So a rule is checked here against
glibc's grammar (``__tzset_parse_tz``: ``parse_tzname``, ``parse_offset``, ``parse_rule``),
and only a canonical spelling of what glibc reads is handed to ``zoneinfo``; anything the two
could read differently is refused with the reason.
"""

from __future__ import annotations

import calendar
import datetime
import re
from collections.abc import Callable

__all__ = ["canonical_rule"]

# glibc's parse_tzname: three or more letters, or <...> with three or more of [A-Za-z0-9+-].
_NAME = r"(?:[A-Za-z]{3,}|<[A-Za-z0-9+-]{3,}>)"
_OFFSET = r"[+-]?\d{1,2}(?::\d{1,2}){0,2}"
_TIME = r"[+-]?\d{1,3}(?::\d{1,2}){0,2}"
_DATE = r"(?:J\d{1,3}|\d{1,3}|M\d{1,2}\.\d\.\d)"
_RULE = re.compile(
    rf"(?P<std>{_NAME})(?P<stdoff>{_OFFSET})"
    rf"(?:(?P<dst>{_NAME})(?P<dstoff>{_OFFSET})?"
    rf",(?P<start>{_DATE})(?:/(?P<starttime>{_TIME}))?"
    rf",(?P<end>{_DATE})(?:/(?P<endtime>{_TIME}))?)?",
    re.ASCII,
)
_DAY = 86_400
_MAX_OFFSET = _DAY  # a datetime's UTC offset is strictly less than a day
_MAX_RULE = 256
_MAX_TIME = 167 * 3600  # RFC 8536 section 3.3.1: transition times within -167..167 hours


def canonical_rule(text: str) -> str:
    """``text`` spelled so that Python's ``zoneinfo`` reads it as glibc does (quoted names,
    offsets and times as ``h:mm:ss``), or ValueError saying why it cannot be used."""
    if len(text) > _MAX_RULE:  # the pattern backtracks on long texts; no real rule is long
        raise ValueError(f"{len(text)} characters is longer than any POSIX TZ rule")
    match = _RULE.fullmatch(text)
    if match is None:
        raise ValueError(_why_not(text))
    std_offset = _offset(match["stdoff"], text)
    parts = [_name(match["std"]), _spell(std_offset)]
    if match["dst"] is not None:
        # glibc: a DST without an offset is one hour ahead of standard time.
        dst_offset = (
            std_offset - 3600 if match["dstoff"] is None else _offset(match["dstoff"], text)
        )
        if abs(dst_offset) >= _MAX_OFFSET:
            raise ValueError(f"the daylight saving offset of {text!r} is 24 hours or more")
        parts += [_name(match["dst"]), _spell(dst_offset)]
        for date, time in (("start", "starttime"), ("end", "endtime")):
            parts.append("," + _date(match[date], text) + "/" + _time(match[time], text))
        start = _seconds_of_year(match["start"], match["starttime"], std_offset)
        end = _seconds_of_year(match["end"], match["endtime"], dst_offset)
        years = range(2000, 2400)  # the calendar repeats every 400 years
        if any(
            not 0 <= change(y) < (365 + calendar.isleap(y)) * _DAY
            for y in years
            for change in (start, end)
        ):
            # glibc applies the rules of the UTC year, zoneinfo those of the local year.
            raise ValueError(
                f"a change of {text!r} falls in another year in UTC than in local time in some "
                "years, where the C library and Python's zoneinfo apply different years' rules"
            )
        if any(start(year) == end(year) for year in years):
            raise ValueError(
                f"the daylight saving time of {text!r} starts and ends at the same instant in "
                "some years, which the C library reads as no daylight saving time that year "
                "and Python's zoneinfo as daylight saving time all year"
            )
    return "".join(parts)


def _seconds_of_year(date: str, time: str | None, offset: int) -> Callable[[int], int]:
    """Seconds from January 1 00:00 UTC of a year to the change ``date/time`` (local time at
    POSIX ``offset``, west of UTC positive) in that year."""
    sign, h, m, s = _seconds(time) if time is not None else (1, 2, 0, 0)
    at = sign * (h * 3600 + m * 60 + s) + offset

    def seconds(year: int) -> int:
        if date.startswith("J"):  # 1-365, February 29 never counted
            n = int(date[1:])
            leap = calendar.isleap(year)
            day = n - 1 + (1 if leap and n >= 60 else 0)
        else:
            month, week, weekday = (int(p) for p in date[1:].split("."))
            first = datetime.date(year, month, 1)
            day_one = (weekday - (first.weekday() + 1) % 7) % 7 + 1
            last = calendar.monthrange(year, month)[1]
            mday = day_one + 7 * (week - 1)
            while mday > last:
                mday -= 7
            day = (datetime.date(year, month, mday) - datetime.date(year, 1, 1)).days
        return day * _DAY + at

    return seconds


def _name(name: str) -> str:
    return name if name.startswith("<") else f"<{name}>"


def _seconds(text: str) -> tuple[int, int, int, int]:
    sign = -1 if text.startswith("-") else 1
    h, m, s = ([int(p) for p in text.lstrip("+-").split(":")] + [0, 0])[:3]
    return sign, h, m, s


def _offset(text: str, rule: str) -> int:
    sign, h, m, s = _seconds(text)
    if m > 59 or s > 59:
        raise ValueError(
            f"offset {text!r} in {rule!r} has minutes or seconds above 59, which the C library "
            "reads as 59; write the offset you mean"
        )
    total = sign * (h * 3600 + m * 60 + s)
    if abs(total) >= _MAX_OFFSET:
        raise ValueError(
            f"offset {text!r} in {rule!r} is 24 hours or more (the C library reads it as 24 "
            "hours, which no time zone has and Python cannot hold); at most 23:59:59"
        )
    return total


def _spell(seconds: int) -> str:
    sign = "-" if seconds < 0 else "+"
    h, rest = divmod(abs(seconds), 3600)
    return f"{sign}{h}:{rest // 60:02}:{rest % 60:02}"


def _date(text: str, rule: str) -> str:
    if text.startswith("M"):
        month, week, day = (int(p) for p in text[1:].split("."))
        if not (1 <= month <= 12 and 1 <= week <= 5 and day <= 6):
            raise ValueError(
                f"{text!r} in {rule!r} is no date (Mm.w.d: month 1-12, week 1-5, weekday 0-6)"
            )
        return f"M{month}.{week}.{day}"
    if text.startswith("J"):
        if not 1 <= int(text[1:]) <= 365:
            raise ValueError(f"{text!r} in {rule!r} is no day of the year (J1 to J365)")
        if int(text[1:]) == 59:  # CPython's zoneinfo: `d >= 59` where `d > 59` is meant
            raise ValueError(
                f"{text!r} in {rule!r} is February 28 in every year to the C library (POSIX), "
                "but Python's zoneinfo reads February 29 in leap years; use another day"
            )
        return f"J{int(text[1:])}"
    raise ValueError(
        f"{rule!r} gives a date as a zero-based day of the year ({text!r}), which Python's "
        "zoneinfo and the C library read a day apart in some years; write the date as "
        "'Jn' (1-365, February 29 never counted) or 'Mm.w.d'"
    )


def _time(text: str | None, rule: str) -> str:
    if text is None:
        return "2:00:00"  # glibc's and POSIX's default
    sign, h, m, s = _seconds(text)
    total = sign * (h * 3600 + m * 60 + s)
    if abs(total) > _MAX_TIME:
        raise ValueError(f"the time {text!r} in {rule!r} is beyond 167 hours")
    return _spell(total).lstrip("+")


def _why_not(text: str) -> str:
    name = re.match(r"<[^>]*>|[A-Za-z]*", text)
    found = name.group() if name else ""
    if len(found.strip("<>")) < 3:
        return (
            f"{text!r} does not start with a zone name of at least 3 letters (or <...> with at "
            "least 3 characters), so the C library does not read it as a rule and uses UTC"
        )
    rest = text[len(found) :]
    if not re.match(_OFFSET, rest, re.ASCII):
        return f"{found!r} in {text!r} is not followed by an offset such as -9 or +5:30"
    if "," not in rest and re.fullmatch(rf"{_OFFSET}{_NAME}(?:{_OFFSET})?", rest, re.ASCII):
        return (
            f"{text!r} has daylight saving time but not its dates (the C library takes them "
            "from a posixrules file, if there is one); write them, such as ',M3.5.0,M10.5.0/3'"
        )
    return (
        f"{text!r} is not a POSIX TZ rule as the C library reads it (NAMEoffset[NAME[offset],"
        "start[/time],end[/time]], such as 'JST-9' or 'CET-1CEST,M3.5.0,M10.5.0/3')"
    )
