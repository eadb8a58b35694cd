"""Schedule forms compiled to pure ``Schedule`` objects; the only home of the DST rules.

Forms: cron with 5 fields (minute hour day month weekday) or 6 with seconds first, the macros
``@yearly @annually @monthly @weekly @daily @midnight @hourly``, ``@startup``/``@reboot``,
intervals (``every 1h30m``) and APScheduler-style mappings (``{hour: 23, minute: 59}``).
Nothing here reads the clock: ``next_after(t)`` is a function of ``t``.

Cron follows cron(8)/crontab(5) of Vixie/ISC cron as Debian and cronie ship it; both rules key
on a field that *starts with* ``*`` (cronie's entry.c: DOM_STAR, DOW_STAR, MIN_STAR, HR_STAR):

* day-of-month and weekday: a day matches if EITHER matches when neither field starts with
  ``*``, else BOTH must (``1 1 1-7 * */7`` is the first Sunday of the month);
* DST, on the wall clock of the job's zone, fires returned as UTC instants: a job whose minute
  or hour field starts with ``*`` follows the clock as it is (gap times do not fire, the
  repeated hour fires in both passes); any other cron job is fixed-time: a wall time in a
  spring-forward gap fires once at the first instant after the gap (several collapse into one)
  and a wall time in the repeated hour fires once, at its first occurrence. Intervals follow
  elapsed time.

Modules: ``fields`` (validation, the two rules' flags), ``words`` (descriptions), ``forms`` (the
compiled schedules and the DST walk); this one parses the forms.

croniter is imported lazily (it is slow to import) and only iterates over naive wall times;
fields are validated and expanded to explicit lists here, so its parsing quirks never apply.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from qtasks_cli.durations import parse_duration
from qtasks_cli.errors import DurationError, ScheduleError
from qtasks_cli.models import Schedule
from qtasks_cli.schedule.fields import (
    _DAY,
    _HOUR,
    _MINUTE,
    _MONTH,
    _SECOND,
    _SPECS,
    _WEEKDAY,
    _compile_fields,
)
from qtasks_cli.schedule.forms import (
    CronSchedule,
    IntervalSchedule,
    StartupSchedule,
    UnionSchedule,
    _epoch_seconds,
)

__all__ = [
    "CronSchedule",
    "IntervalSchedule",
    "StartupSchedule",
    "UnionSchedule",
    "fires_between",
    "parse_schedule",
    "union",
]

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
_STARTUP_MACROS = ("@startup",)
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
    """Compile one schedule form for a job in ``zone``; raise ScheduleError if it is invalid.

    A schedule written as text is compiled once per (text, zone) and the object shared (it
    never changes): ten thousand jobs ``*/5 * * * *`` hold one schedule, not ten thousand."""
    if isinstance(value, Mapping):
        return _parse_mapping(value, zone)
    if not isinstance(value, str):
        raise ScheduleError(f"{value!r} is not a schedule (expected {_FORMS})")
    key = (value, zone)
    found = _COMPILED.get(key)
    if found is None:
        found = _parse_text(value, zone)
        if len(_COMPILED) >= _COMPILED_MAX:
            _COMPILED.clear()
        _COMPILED[key] = found
    return found


_COMPILED: dict[tuple[str, ZoneInfo], Schedule] = {}
_COMPILED_MAX = 4096


def _parse_text(value: str, zone: ZoneInfo) -> Schedule:
    # crontab(5): fields are separated by spaces and tabs; leading and trailing blanks (and a
    # YAML block's final newline) are ignored. Any other character is no part of cron's syntax.
    text = value.strip(" \t\r\n")
    odd = next((ch for ch in text if not (ch.isascii() and ch.isprintable()) and ch != "\t"), None)
    if odd is not None:
        raise ScheduleError(
            f"the schedule {value!r} has a character cron(8) does not read "
            f"(U+{ord(odd):04X}); separate the fields with spaces"
        )
    text = " ".join(text.split())
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
    if name == "@reboot":
        # cron(8) runs @reboot once per boot of the machine (cronie keeps a lock file until
        # the next boot); a restart of the daemon is no boot, and qtasks cannot tell them apart.
        raise ScheduleError(
            f"{text!r} runs once per boot of the machine in cron(8), which qtasks cannot tell "
            "from a restart of the daemon; write '@startup' to run each time the daemon starts"
        )
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
    text = ",".join(part.strip() for part in str(value).split(","))
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
