"""Schedule forms compiled to pure ``Schedule`` objects; the only home of the DST rules.

Forms: cron with 5 fields (minute hour day month weekday) or 6 with seconds first, the macros
``@yearly @annually @monthly @weekly @daily @midnight @hourly``, ``@startup``/``@reboot``,
intervals (``every 1h30m``) and APScheduler-style mappings (``{hour: 23, minute: 59}``).
Nothing here reads the clock: ``next_after(t)`` is a function of ``t``.

Cron is evaluated on the wall clock of the job's zone and returned as UTC instants:

* a wall time inside a spring-forward gap fires once, at the first instant after the gap
  (several gap times collapse into that one fire) if the hour field is fixed;
* a fixed wall time in the repeated autumn hour fires once, at its first occurrence;
* when the hour field covers every hour (``*``), and for intervals, fires follow elapsed time:
  gap times do not fire and the repeated hour fires in both passes.

Day-of-month and weekday combine like Vixie cron: when both are restricted (neither is ``*``),
a day matches if EITHER matches (``0 0 1 * mon`` fires on the 1st and on every Monday).

croniter is imported lazily (it is slow to import) and only iterates over naive wall times;
fields are validated and expanded to explicit lists here, so its parsing quirks never apply.
"""

from __future__ import annotations

import difflib
import functools
import logging
import math
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from qtasks_cli.durations import format_duration, parse_duration
from qtasks_cli.errors import DurationError, ScheduleError
from qtasks_cli.models import Schedule

log = logging.getLogger(__name__)

__all__ = [
    "CronSchedule",
    "IntervalSchedule",
    "StartupSchedule",
    "UnionSchedule",
    "fires_between",
    "parse_schedule",
    "union",
]

_UTC = timezone.utc
_ONE_SECOND = timedelta(seconds=1)
# Offset transitions are found by probing at this step and bisecting; tzdata has no zone
# that changes its offset twice within one probe step.
_PROBE_STEP = 86_400

# ---------------------------------------------------------------------------------------
# Cron fields
# ---------------------------------------------------------------------------------------

_MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_WEEKDAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # February in a leap year


@dataclass(frozen=True, slots=True)
class _FieldSpec:
    kind: str  # second, minute, hour, day, month, weekday
    name: str  # as messages call it
    low: int
    high: int  # weekday allows 7 for Sunday; values are folded into 0-6
    names: tuple[str, ...] = ()  # names[i] spells low + i
    expected: str = ""

    def message(self, field_text: str, part: str, problem: str) -> str:
        if part == field_text:
            return f"{self.name} field {part!r} {problem}"
        return f"{self.name} field {field_text!r}: {part!r} {problem}"


def _expected(low: int, high: int, extra: str = "") -> str:
    return f"expected {low}-{high}{extra}, a list, range or step"


_SECOND = _FieldSpec("second", "second", 0, 59, expected=_expected(0, 59))
_MINUTE = _FieldSpec("minute", "minute", 0, 59, expected=_expected(0, 59))
_HOUR = _FieldSpec("hour", "hour", 0, 23, expected=_expected(0, 23))
_DAY = _FieldSpec("day", "day", 1, 31, expected=_expected(1, 31, " or L"))
_MONTH = _FieldSpec("month", "month", 1, 12, _MONTH_NAMES, _expected(1, 12, " or jan-dec"))
_WEEKDAY = _FieldSpec(
    "weekday",
    "weekday",
    0,
    7,
    _WEEKDAY_NAMES,
    _expected(0, 7, " or sun-sat") + ", or items such as fri#3 (third Friday) or L5 (last Friday)",
)
_SPECS = (_SECOND, _MINUTE, _HOUR, _DAY, _MONTH, _WEEKDAY)


@dataclass(frozen=True, slots=True)
class _Item:
    """One comma-separated part of a field, kept for ``describe``."""

    kind: str  # "all", "value", "range", "last_day", "nth", "last_weekday"
    a: int = 0
    b: int = 0
    step: int = 1


@dataclass(frozen=True, slots=True)
class _Field:
    text: str  # normalized (lowercase, "?" as "*")
    written: str  # as written, for messages
    items: tuple[_Item, ...]
    values: frozenset[int]  # plain values; weekday folded into 0-6
    star: bool  # written as "*" or "?": unrestricted
    leading_star: bool  # starts with "*" (such as "*/7"): cron(8)'s day and DST rules key on it

    @property
    def last_day(self) -> bool:
        return any(item.kind == "last_day" for item in self.items)

    def croniter_text(self) -> str:
        if self.star:
            return "*"
        parts = [str(v) for v in sorted(self.values)]
        for item in self.items:
            if item.kind == "last_day":
                parts.append("l")
            elif item.kind == "nth":
                parts.append(f"{item.a}#{item.b}")
            elif item.kind == "last_weekday":
                parts.append(f"l{item.a}")
        return ",".join(dict.fromkeys(parts))


_ITEM_RE = re.compile(r"(\*|[a-z0-9]+)(?:-([a-z0-9]+))?(?:/([0-9]+))?")
_NTH_RE = re.compile(r"([a-z0-9]+)#([0-9]+)")
_LAST_WEEKDAY_RE = re.compile(r"l([a-z0-9]+)|([a-z0-9]+)l")


def _parse_value(token: str, spec: _FieldSpec, field_text: str, part: str) -> int:
    if token.isdigit():
        value = int(token)
        if not spec.low <= value <= spec.high:
            raise ScheduleError(
                spec.message(field_text, part, f"is out of range ({spec.low}-{spec.high})")
            )
        return value
    if token in spec.names:
        return spec.low + spec.names.index(token)
    raise ScheduleError(spec.message(field_text, part, f"is not valid ({spec.expected})"))


def _sequence(spec: _FieldSpec, a: int, b: int) -> list[int]:
    """Values from ``a`` to ``b``; a reversed range wraps around the field's cycle."""
    if spec.kind == "weekday":
        if a <= b:
            return [v % 7 for v in range(a, b + 1)]
        a, b = a % 7, b % 7
        return [(a + i) % 7 for i in range((b - a) % 7 + 1)]
    if a <= b:
        return list(range(a, b + 1))
    return list(range(a, spec.high + 1)) + list(range(spec.low, b + 1))


def _parse_item(part: str, spec: _FieldSpec, field_text: str) -> _Item:
    p = part.strip().lower()
    if not p:
        raise ScheduleError(
            f"{spec.name} field {field_text!r} has an empty list item ({spec.expected})"
        )
    if spec.kind == "day" and p == "l":
        return _Item("last_day")
    if spec.kind == "weekday":
        nth = _NTH_RE.fullmatch(p)
        if nth:
            weekday = _parse_value(nth.group(1), spec, field_text, part) % 7
            n = int(nth.group(2))
            if not 1 <= n <= 5:
                raise ScheduleError(
                    spec.message(field_text, part, f"asks for week #{n} (expected #1 to #5)")
                )
            return _Item("nth", weekday, n)
        last = _LAST_WEEKDAY_RE.fullmatch(p)
        if last:
            token = last.group(1) or last.group(2)
            return _Item("last_weekday", _parse_value(token, spec, field_text, part) % 7)
    match = _ITEM_RE.fullmatch(p)
    if not match:
        raise ScheduleError(spec.message(field_text, part, f"is not valid ({spec.expected})"))
    start, end, step_text = match.groups()
    step = 1
    if step_text is not None:
        step = int(step_text)
        span = 7 if spec.kind == "weekday" else spec.high - spec.low + 1
        if step == 0:
            raise ScheduleError(
                spec.message(field_text, part, "has step 0 (expected a step of at least 1)")
            )
        if step > span:
            raise ScheduleError(
                spec.message(
                    field_text,
                    part,
                    f"has step {step}, larger than the field's range ({spec.low}-{spec.high})",
                )
            )
    if start == "*":
        if end is not None:
            raise ScheduleError(spec.message(field_text, part, f"is not valid ({spec.expected})"))
        return _Item("all", step=step)
    a = _parse_value(start, spec, field_text, part)
    if end is None:
        if step_text is None:
            return _Item("value", a)
        # "a/step" runs from a to the top of the field (7, Sunday again, for weekdays), as
        # cronie reads it: "1/2" is Monday, Wednesday, Friday and Sunday.
        return _Item("range", a, spec.high, step)
    b = (
        spec.high
        if (spec.kind == "day" and end == "l")
        else _parse_value(end, spec, field_text, part)
    )
    if a == b and step_text is None:
        # croniter reads an equal range such as "mon-mon" as the whole cycle; it means one value.
        return _Item("value", a)
    return _Item("range", a, b, step)


def _item_values(item: _Item, spec: _FieldSpec) -> list[int]:
    if item.kind == "all":
        high = 6 if spec.kind == "weekday" else spec.high
        return list(range(spec.low, high + 1, item.step))
    if item.kind == "value":
        return [item.a % 7 if spec.kind == "weekday" else item.a]
    if item.kind == "range":
        return _sequence(spec, item.a, item.b)[:: item.step]
    return []


@functools.lru_cache(maxsize=4096)
def _parse_field(text: str, spec: _FieldSpec) -> _Field:
    """Validate one field; memoized, since a thousand jobs repeat a handful of fields."""
    stripped = text.strip()
    if not stripped:
        raise ScheduleError(f"{spec.name} field is empty ({spec.expected})")
    if stripped == "?" and spec.kind in ("day", "weekday"):
        stripped = "*"  # Quartz's "no specific value"
    norm = stripped.lower()
    items = tuple(_parse_item(part, spec, stripped) for part in stripped.split(","))
    values = frozenset(v for item in items for v in _item_values(item, spec))
    special = [item for item in items if item.kind in ("nth", "last_weekday")]
    if special and len(special) != len(items):
        raise ScheduleError(
            f"{spec.name} field {stripped!r} mixes plain weekdays with # or L items, which "
            "cron cannot combine (expected only plain weekdays, or only items such as fri#3 "
            "or L5; use a list of schedules for both)"
        )
    return _Field(norm, stripped, items, values, star=norm == "*", leading_star=norm[0] == "*")


@dataclass(frozen=True, slots=True)
class _CronFields:
    second: _Field
    minute: _Field
    hour: _Field
    day: _Field
    month: _Field
    weekday: _Field

    @property
    def day_or(self) -> bool:
        """Vixie/ISC cron (cron(8), entry.c's DOM_STAR/DOW_STAR): a day matches if EITHER
        day field matches only when neither field starts with ``*``; else both must."""
        return not (self.day.leading_star or self.weekday.leading_star)

    @property
    def follows_clock(self) -> bool:
        """cron(8)'s DST rule keys on a minute or hour field starting with ``*``: such a job
        follows the wall clock as it is; others are fixed-time jobs (seconds do not count)."""
        return self.minute.leading_star or self.hour.leading_star

    @property
    def expression(self) -> str:
        """Canonical 6-field text, seconds first."""
        return " ".join(f.text for f in self._all())

    @property
    def croniter_expression(self) -> str:
        return " ".join(f.croniter_text() for f in self._all())

    def _all(self) -> tuple[_Field, ...]:
        return (self.second, self.minute, self.hour, self.day, self.month, self.weekday)


def _compile_fields(texts: Sequence[str], specs: Sequence[_FieldSpec]) -> _CronFields:
    """Validate six field texts (seconds first) into a ``_CronFields``."""
    fields = [_parse_field(text, spec) for text, spec in zip(texts, specs, strict=True)]
    cron = _CronFields(*fields)
    day, month = cron.day, cron.month
    special = any(item.kind in ("nth", "last_weekday") for item in cron.weekday.items)
    if cron.day_or and not day.star and special:
        # croniter intersects these instead of applying the day-or-weekday rule.
        raise ScheduleError(
            f"{specs[3].name} field {day.written!r} cannot be combined with {specs[5].name} "
            f"field {cron.weekday.written!r} (expected '*' for the day with # or L weekdays; "
            "use a list of two schedules to fire on either)"
        )
    if (cron.weekday.star or not cron.day_or) and not day.star and not day.last_day and day.values:
        longest = max(_DAYS_IN_MONTH[m - 1] for m in month.values)
        if min(day.values) > longest:
            raise ScheduleError(
                f"{specs[3].name} field {day.written!r} never occurs in {specs[4].name} field "
                f"{month.written!r} (those months have at most {longest} days)"
            )
    return cron


# ---------------------------------------------------------------------------------------
# Describing cron in words
# ---------------------------------------------------------------------------------------


def _join(words: Sequence[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def _single(f: _Field) -> int | None:
    if len(f.items) == 1 and f.items[0].kind == "value":
        return f.items[0].a
    return None


def _star_step(f: _Field) -> int | None:
    if len(f.items) == 1 and f.items[0].kind == "all":
        return f.items[0].step
    return None


def _listed_values(f: _Field) -> list[int] | None:
    """The values of a field written without ``*`` (such as ``9,17`` or ``1-3``)."""
    if all(item.kind in ("value", "range") for item in f.items):
        return sorted(f.values)
    return None


def _clock(hour: int, minute: int, second: int) -> str:
    return f"{hour:02}:{minute:02}:{second:02}" if second else f"{hour:02}:{minute:02}"


def _describe_time(c: _CronFields) -> tuple[str, bool] | None:
    """The time-of-day part and whether it names fixed times (then ``every day`` applies)."""
    s1, m1 = _single(c.second), _single(c.minute)
    ss, ms, hs = _star_step(c.second), _star_step(c.minute), _star_step(c.hour)
    if hs == 1:
        if ms == 1:
            if ss == 1:
                return "every second", False
            if ss is not None and 60 % ss == 0:
                return f"every {ss} seconds", False
            if s1 == 0:
                return "every minute", False
            if s1 is not None:
                return f"every minute at second {s1}", False
            return None
        if ms is not None and 60 % ms == 0 and s1 == 0:
            return f"every {ms} minutes", False
        if m1 is not None and s1 is not None:
            at = f":{m1:02}:{s1:02}" if s1 else f":{m1:02}"
            return f"every hour at {at}", False
        return None
    if hs is not None and 24 % hs == 0 and m1 is not None and s1 == 0:
        return f"every {hs} hours at :{m1:02}", False
    hours, minutes = _listed_values(c.hour), _listed_values(c.minute)
    if hours and minutes and s1 is not None and len(hours) * len(minutes) <= 6:
        times = [_clock(h, m, s1) for h in hours for m in minutes]
        return "at " + _join(times), True
    hour_item = c.hour.items[0]
    if (
        len(c.hour.items) == 1
        and hour_item.kind == "range"
        and hour_item.step == 1
        and hour_item.a < hour_item.b
        and s1 == 0
        and ms is not None
        and 60 % ms == 0
    ):
        last = 60 - ms
        every = "every minute" if ms == 1 else f"every {ms} minutes"
        return f"{every} from {hour_item.a:02}:00 to {hour_item.b:02}:{last:02}", False
    return None


def _ordinal(n: int) -> str:
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(n, f"{n}th")


def _describe_weekdays(f: _Field) -> str | None:
    words = []
    for item in f.items:
        if item.kind == "value":
            words.append(_WEEKDAY_NAMES[item.a % 7].title())
        elif item.kind == "range" and item.step == 1:
            words.append(
                f"{_WEEKDAY_NAMES[item.a % 7].title()}-{_WEEKDAY_NAMES[item.b % 7].title()}"
            )
        elif item.kind == "nth":
            words.append(f"the {_ordinal(item.b)} {_WEEKDAY_NAMES[item.a].title()} of the month")
        elif item.kind == "last_weekday":
            words.append(f"the last {_WEEKDAY_NAMES[item.a].title()} of the month")
        else:
            return None
    return _join(words)


def _describe_days(f: _Field) -> str | None:
    if f.text == "l":
        return "the last day of the month"
    words = []
    for item in f.items:
        if item.kind == "value":
            words.append(str(item.a))
        elif item.kind == "range" and item.step == 1 and item.a < item.b:
            words.append(f"{item.a}-{item.b}")
        elif item.kind == "last_day":
            words.append("the last day")
        else:
            return None
    plural = len(words) > 1 or "-" in words[0]
    return ("days " if plural else "day ") + _join(words) + " of the month"


def _describe_months(f: _Field) -> str | None:
    words = []
    for item in f.items:
        if item.kind == "value":
            words.append(_MONTH_NAMES[item.a - 1].title())
        elif item.kind == "range" and item.step == 1:
            words.append(f"{_MONTH_NAMES[item.a - 1].title()}-{_MONTH_NAMES[item.b - 1].title()}")
        else:
            return None
    return _join(words)


def _describe_cron(c: _CronFields) -> str | None:
    time = _describe_time(c)
    if time is None:
        return None
    text, fixed_times = time
    day, month, weekday = c.day, c.month, c.weekday
    month_words = None if month.star else _describe_months(month)
    if not month.star and month_words is None:
        return None
    day_number, month_number = _single(day), _single(month)
    if weekday.star and day_number is not None and month_number is not None:
        return f"{text} on {_MONTH_NAMES[month_number - 1].title()} {day_number}"
    if day.star and weekday.star:
        on = "every day" if fixed_times else ""
    elif not c.day_or and not day.star and not weekday.star:
        return None  # both must match: the fallback shows the fields as written
    else:
        day_words = None if day.star else _describe_days(day)
        weekday_words = None if weekday.star else _describe_weekdays(weekday)
        if (not day.star and day_words is None) or (not weekday.star and weekday_words is None):
            return None
        # Both restricted: cron fires when EITHER matches, and the words must say so.
        on = " or ".join(f"on {w}" for w in (day_words, weekday_words) if w)
    parts = [text, on, f"in {month_words}" if month_words else ""]
    return " ".join(p for p in parts if p)


# ---------------------------------------------------------------------------------------
# Time zone offsets
# ---------------------------------------------------------------------------------------


def _offset(zone: ZoneInfo, x: int) -> int:
    """The zone's UTC offset in seconds at epoch second ``x``."""
    delta = datetime.fromtimestamp(x, zone).utcoffset()
    assert delta is not None
    return delta // _ONE_SECOND


def _first_change(zone: ZoneInfo, after: int, until: int, offset: int) -> int | None:
    """The first epoch second in (after, until] whose offset is not ``offset``, or None."""
    probe = after
    while True:
        nxt = min(probe + _PROBE_STEP, until)
        if _offset(zone, nxt) != offset:
            lo, hi = probe, nxt
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if _offset(zone, mid) != offset:
                    hi = mid
                else:
                    lo = mid
            return hi
        if nxt >= until:
            return None
        probe = nxt


def _epoch_seconds(t: datetime, what: str = "next_after") -> int:
    """Whole seconds of aware ``t``, rounded down (fires fall on whole seconds)."""
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"{what} needs an aware datetime, got naive {t!r}")
    return math.floor(t.timestamp())


# ---------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------


_ITERATORS: dict[str, _Iterator] = {}


def _shared_iterator(expression: str, day_or: bool) -> _Iterator:
    """One croniter per distinct expression: it is stepped under its own lock, so jobs with
    the same cron share it instead of holding a thousand copies."""
    key = f"{expression}|{'or' if day_or else 'and'}"
    iterator = _ITERATORS.get(key)
    if iterator is None:
        iterator = _ITERATORS[key] = _Iterator(expression, day_or)
    return iterator


class _Iterator:
    """A croniter over naive wall times, shared safely between threads; pickles by text."""

    __slots__ = ("_croniter", "_lock", "_no_match", "day_or", "expression")

    def __init__(self, expression: str, day_or: bool = True) -> None:
        from croniter import CroniterBadDateError, croniter  # slow to import: only when used

        self.expression = expression
        self.day_or = day_or
        self._croniter = croniter(expression, 0.0, second_at_beginning=True, day_or=day_or)
        self._no_match: type[Exception] = CroniterBadDateError
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple[type[_Iterator], tuple[str, bool]]:
        return (_Iterator, (self.expression, self.day_or))

    def first_after(self, wall: int) -> int | None:
        """The first matching wall second strictly after ``wall`` (naive, as epoch seconds)."""
        with self._lock:
            try:
                return int(self._croniter.get_next(float, start_time=float(wall)))
            except self._no_match:  # nothing within croniter's horizon of 50 years
                log.debug("cron %r has no match after wall second %d", self.expression, wall)
                return None


class CronSchedule:
    """A cron expression evaluated on the wall clock of ``zone``."""

    __slots__ = ("_fields", "_iterator", "expression", "fixed", "text", "zone")

    startup = False

    def __init__(self, fields: _CronFields, zone: ZoneInfo, text: str) -> None:
        self._fields = fields
        self.expression = fields.expression  # canonical, seconds first
        self.zone = zone
        self.text = text  # as written, for the fallback description
        # Fixed-time jobs get the once-per-wall-time DST rules; the others follow the clock.
        self.fixed = not fields.follows_clock
        self._iterator = _shared_iterator(fields.croniter_expression, fields.day_or)

    @property
    def key(self) -> str:
        return f"cron:{self.expression}@{self.zone}"

    def day_rule_warning(self) -> str | None:
        """Why the day fields may not mean what was meant, or None: a restricted day field
        next to one that starts with ``*`` but is restricted too (``1-7`` with ``*/7``)."""
        day, weekday = self._fields.day, self._fields.weekday
        if day.star or weekday.star or day.leading_star == weekday.leading_star:
            return None
        starred = day if day.leading_star else weekday
        return (
            f"day-of-month {day.written!r} and day-of-week {weekday.written!r} must BOTH match, "
            f"because {starred.written!r} starts with '*' (cron(8)); without it they would "
            "match on EITHER. For either, write a list of two schedules"
        )

    def describe(self) -> str:
        return _describe_cron(self._fields) or f"cron: {self.text}"

    def next_after(self, t: datetime) -> datetime | None:
        """The first fire strictly after aware ``t``, as an aware UTC datetime, or None."""
        zone, fixed = self.zone, self.fixed
        # Walk segments of constant UTC offset. Instants after ``g`` in the current segment
        # have offset ``o``, so wall w of that segment is instant w - o.
        g = _epoch_seconds(t)
        try:
            o = _offset(zone, g)
            while True:
                wall = self._iterator.first_after(g + o)
                if wall is None:
                    return None
                instant = wall - o
                change = _first_change(zone, g, instant, o)
                if change is None:
                    if fixed and datetime.fromtimestamp(instant, zone).fold:
                        g = instant  # the repeated pass of a fixed wall time: fired already
                        continue
                    return datetime.fromtimestamp(instant, _UTC)
                new = _offset(zone, change)
                if fixed and new > o and wall < change + new:
                    return datetime.fromtimestamp(change, _UTC)  # a wall time in the gap
                # Continue in the next segment from its first wall time, inclusive.
                g, o = change - 1, new
        except (OverflowError, ValueError, OSError):  # beyond the years datetime can hold
            return None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CronSchedule) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"CronSchedule({self.expression!r}, zone={str(self.zone)!r})"


class IntervalSchedule:
    """Fires every ``interval`` of elapsed time, chained from the previous scheduled time."""

    __slots__ = ("interval",)

    startup = False

    def __init__(self, interval: timedelta) -> None:
        self.interval = interval

    @property
    def key(self) -> str:
        micros = self.interval // timedelta(microseconds=1)
        seconds, rest = divmod(micros, 1_000_000)
        fraction = f".{rest:06}".rstrip("0") if rest else ""
        return f"every:{seconds}{fraction}s"

    def describe(self) -> str:
        return f"every {format_duration(self.interval)}"

    def next_after(self, t: datetime) -> datetime | None:
        """``t`` plus the interval, as an aware UTC datetime; None past year 9999."""
        _epoch_seconds(t)
        try:
            return t.astimezone(_UTC) + self.interval
        except OverflowError:
            return None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IntervalSchedule) and other.interval == self.interval

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"IntervalSchedule({self.interval!r})"


class StartupSchedule:
    """Fires once each time the daemon starts, and never on the clock."""

    __slots__ = ()

    startup = True
    key = "startup"

    def describe(self) -> str:
        return "at startup"

    def next_after(self, t: datetime) -> datetime | None:
        """Always None: a startup schedule has no clock times."""
        _epoch_seconds(t)
        return None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StartupSchedule)

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return "StartupSchedule()"


class UnionSchedule:
    """Fires at every fire of any member (equal instants once)."""

    __slots__ = ("members",)

    def __init__(self, members: tuple[Schedule, ...]) -> None:
        self.members = members

    @property
    def startup(self) -> bool:
        return any(m.startup for m in self.members)

    @property
    def key(self) -> str:
        return "|".join(sorted(m.key for m in self.members))

    def describe(self) -> str:
        return "; ".join(m.describe() for m in self.members)

    def next_after(self, t: datetime) -> datetime | None:
        """The earliest member fire strictly after ``t``."""
        fires = [f for f in (m.next_after(t) for m in self.members) if f is not None]
        return min(fires) if fires else None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UnionSchedule) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"UnionSchedule({list(self.members)!r})"


# ---------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------

_MACROS = {
    "@yearly": "0 0 0 1 1 *",
    "@annually": "0 0 0 1 1 *",
    "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 0",
    "@daily": "0 0 0 * * *",
    "@midnight": "0 0 0 * * *",
    "@hourly": "0 0 * * * *",
}
_STARTUP_MACROS = ("@startup", "@reboot")
_FORMS = "a cron expression, a macro such as @daily, 'every <duration>' or a mapping"

# Mapping keys from coarse to fine; a key finer than the finest given defaults to its minimum.
_MAPPING_KEYS = ("month", "day", "day_of_week", "hour", "minute", "second")
_MAPPING_MINIMUM = {"month": "1", "day": "1", "hour": "0", "minute": "0", "second": "0"}
_MAPPING_HINTS = {
    "weekday": "day_of_week",
    "dow": "day_of_week",
    "day_of_month": "day",
    "dom": "day",
    "sec": "second",
    "min": "minute",
}
_MAPPING_SPECS = {
    "second": _SECOND,
    "minute": _MINUTE,
    "hour": _HOUR,
    "day": _DAY,
    "month": _MONTH,
    "day_of_week": replace(
        _WEEKDAY,
        name="day_of_week",
        expected="expected sun-sat, a list or range of them, or items such as fri#3 (third "
        "Friday) or Lfri (last Friday)",
    ),
}


def parse_schedule(value: str | Mapping[str, Any], zone: ZoneInfo) -> Schedule:
    """Compile one schedule form for a job in ``zone``; raise ScheduleError if it is invalid."""
    if isinstance(value, Mapping):
        return _parse_mapping(value, zone)
    if not isinstance(value, str):
        raise ScheduleError(f"{value!r} is not a schedule (expected {_FORMS})")
    text = " ".join(value.split())
    if not text:
        raise ScheduleError(f"the schedule is empty (expected {_FORMS})")
    lowered = text.lower()
    if lowered.startswith("@"):
        return _parse_macro(text, zone)
    if lowered == "every" or lowered.startswith("every "):
        return _parse_interval(text)
    return _parse_cron(text, zone)


def _parse_macro(text: str, zone: ZoneInfo) -> Schedule:
    name = text.lower()
    if name in _STARTUP_MACROS:
        return StartupSchedule()
    if name not in _MACROS:
        known = ", ".join([*_MACROS, *_STARTUP_MACROS])
        raise ScheduleError(f"unknown macro {text!r} (expected one of {known})")
    fields = _compile_fields(_MACROS[name].split(), _SPECS)
    return CronSchedule(fields, zone, text)


def _parse_interval(text: str) -> IntervalSchedule:
    amount = text[len("every") :].strip()
    if not amount:
        raise ScheduleError(f"interval {text!r} has no duration (expected such as 'every 30s')")
    try:
        interval = parse_duration(amount)
    except DurationError as exc:
        raise ScheduleError(f"interval {text!r}: {exc}") from None
    if interval <= timedelta(0):
        raise ScheduleError(f"interval {text!r} must be longer than zero (such as 'every 30s')")
    return IntervalSchedule(interval)


def _parse_cron(text: str, zone: ZoneInfo) -> CronSchedule:
    parts = text.split()
    if len(parts) == 5:
        parts = ["0", *parts]
    elif len(parts) != 6:
        raise ScheduleError(
            "expected 5 fields (minute hour day month weekday) or 6 with seconds first, "
            f"got {len(parts)} in {text!r}"
        )
    return CronSchedule(_compile_fields(parts, _SPECS), zone, text)


def _mapping_value(key: str, value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str, list, tuple)):
        raise ScheduleError(
            f"{key} {value!r} is not valid (expected a number or a cron field such as '*/5')"
        )
    if isinstance(value, (list, tuple)):
        if not value:
            raise ScheduleError(f"{key} is an empty list (expected at least one value)")
        return ",".join(_mapping_value(key, v) for v in value)
    text = str(value).strip()
    if key == "day_of_week" and any(ch.isdigit() for ch in text.split("#")[0]):
        # APScheduler counts weekdays from Monday = 0, cron from Sunday = 0.
        raise ScheduleError(
            f"day_of_week {value!r} is ambiguous: APScheduler counts 0 as Monday and cron "
            "as Sunday (expected weekday names such as 'mon-fri', 'sun' or 'fri#3')"
        )
    return text


def _parse_mapping(value: Mapping[str, Any], zone: ZoneInfo) -> CronSchedule:
    if not value:
        raise ScheduleError(f"the schedule mapping is empty (expected keys {_join_keys()})")
    for key in value:
        if not isinstance(key, str) or key not in _MAPPING_KEYS:
            close = difflib.get_close_matches(str(key), _MAPPING_KEYS, n=1)
            hint = _MAPPING_HINTS.get(str(key)) or (close[0] if close else None)
            suggestion = f"did you mean {hint!r}?" if hint else f"expected {_join_keys()}"
            raise ScheduleError(f"unknown key {key!r} ({suggestion})")
    if "day" in value and "day_of_week" in value:
        raise ScheduleError(
            "give day or day_of_week, not both: cron would fire when EITHER matches, while "
            "APScheduler needs both (for the first Monday write day_of_week: 'mon#1')"
        )
    finest = max(_MAPPING_KEYS.index(k) for k in value)
    texts: dict[str, str] = {}
    for index, key in enumerate(_MAPPING_KEYS):
        if key in value:
            texts[key] = _mapping_value(key, value[key])
        elif index > finest and key != "day_of_week":
            texts[key] = _MAPPING_MINIMUM[key]
        else:
            texts[key] = "*"
    order = ("second", "minute", "hour", "day", "month", "day_of_week")
    fields = _compile_fields([texts[k] for k in order], [_MAPPING_SPECS[k] for k in order])
    return CronSchedule(fields, zone, fields.expression)


def _join_keys() -> str:
    return ", ".join(("second", "minute", "hour", "day", "month", "day_of_week"))


def union(schedules: Sequence[Schedule]) -> Schedule:
    """One schedule firing at every fire of any of ``schedules`` (a YAML list of forms)."""
    members: list[Schedule] = []
    seen: set[str] = set()
    for schedule in schedules:
        inner = schedule.members if isinstance(schedule, UnionSchedule) else (schedule,)
        for member in inner:
            if member.key not in seen:
                seen.add(member.key)
                members.append(member)
    if not members:
        raise ScheduleError(f"the schedule list is empty (expected at least one of {_FORMS})")
    if len(members) == 1:
        return members[0]
    return UnionSchedule(tuple(members))


def fires_between(
    schedule: Schedule, after: datetime, until: datetime, limit: int | None = None
) -> list[datetime]:
    """Fires in (after, until], ascending, at most ``limit`` of them."""
    _epoch_seconds(after, "fires_between")
    _epoch_seconds(until, "fires_between")
    fires: list[datetime] = []
    t: datetime | None = after
    while limit is None or len(fires) < limit:
        assert t is not None
        t = schedule.next_after(t)
        if t is None or t > until:
            break
        fires.append(t)
    return fires
