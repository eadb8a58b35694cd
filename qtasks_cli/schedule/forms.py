"""The compiled schedules (cron, interval, startup, union) and the DST walk over a zone's
offsets; pure: ``next_after(t)`` is a function of ``t``."""

from __future__ import annotations

import logging
import math
import threading
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from qtasks_cli.durations import format_duration
from qtasks_cli.models import Schedule
from qtasks_cli.schedule.fields import _CronFields
from qtasks_cli.schedule.words import _describe_cron

log = logging.getLogger(__name__)

_UTC = timezone.utc
_ONE_SECOND = timedelta(seconds=1)
# Offset transitions are found by probing at this step and bisecting; tzdata has no zone
# that changes its offset twice within one probe step.
_PROBE_STEP = 86_400
# cron(8) (cronie's cron.c, the "large" wake-up) takes a change of the local time of 3 hours or
# more as a correction of the clock or the zone, not daylight saving time: the new time is used
# at once. It measures in minutes from one wake-up to the next, so a jump forward by J is
# large from J >= 180 min and one back from J >= 182 min (timeDiff = 1 + J or 1 - J, compared
# with 180).
LARGE_FORWARD = 180 * 60
LARGE_BACK = 182 * 60

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
                    if fixed and self._repeated(instant, o):
                        g = instant  # the repeated pass of a fixed wall time: fired already
                        continue
                    return datetime.fromtimestamp(instant, _UTC)
                new = _offset(zone, change)
                if fixed and 0 < new - o < LARGE_FORWARD and wall < change + new:
                    return datetime.fromtimestamp(change, _UTC)  # a wall time in the gap
                # Continue in the next segment from its first wall time, inclusive.
                g, o = change - 1, new
        except (OverflowError, ValueError, OSError):  # beyond the years datetime can hold
            return None

    def _repeated(self, instant: int, offset: int) -> bool:
        """Whether ``instant`` (at ``offset``) is the second pass of a wall time that a move
        back of less than cron(8)'s large change repeated; a larger move back is a correction,
        after which cron(8) fires by the new clock, repeated times again."""
        local = datetime.fromtimestamp(instant, self.zone)
        if not local.fold:
            return False
        first = local.replace(fold=0).utcoffset()
        assert first is not None
        return first // _ONE_SECOND - offset < LARGE_BACK

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
