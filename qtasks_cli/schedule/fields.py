"""Cron fields: validation, expansion to values, and the day and DST rules keyed on a leading
``*`` (cron(8), crontab(5) of Vixie/ISC cron and cronie)."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from qtasks_cli.errors import ScheduleError

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


# Bounded repeats: a long run of digits is refused as invalid, never handed to int().
_ITEM_RE = re.compile(r"(\*|[a-z0-9]{1,9})(?:-([a-z0-9]{1,9}))?(?:/([0-9]{1,9}))?")
_NTH_RE = re.compile(r"([a-z0-9]{1,9})#([0-9]{1,9})")
_LAST_WEEKDAY_RE = re.compile(r"l([a-z0-9]{1,9})|([a-z0-9]{1,9})l")


def _parse_value(token: str, spec: _FieldSpec, field_text: str, part: str) -> int:
    if token.isdigit():
        if len(token) > 4:  # cron's fields are at most 2 digits; keep int() away from huge text
            raise ScheduleError(
                spec.message(field_text, part, f"is out of range ({spec.low}-{spec.high})")
            )
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
    """Values from ``a`` to ``b`` (``a <= b``); weekday 7 is Sunday, 0."""
    if spec.kind == "weekday":
        return [v % 7 for v in range(a, b + 1)]
    return list(range(a, b + 1))


def _backwards(spec: _FieldSpec, field_text: str, part: str, a: int, b: int) -> ScheduleError:
    """cron(8) refuses a range whose start is after its end (cronie's entry.c: num1 > num2);
    it never wraps around the field's cycle."""
    if spec.kind == "weekday":  # 7 is Sunday again
        low, high, end = 1, 7, 7 if b == 0 else b
    else:
        low, high, end = spec.low, spec.high, b
    first = f"{a}-{high}" if a < high else f"{high}"
    split = first if end == high else f"{first},{low}-{end}" if end > low else f"{first},{low}"
    return ScheduleError(
        spec.message(
            field_text,
            part,
            f"runs backwards ({a} is after {b}); cron(8) refuses such a range, it does not "
            f"wrap around: write {split}",
        )
    )


def _parse_item(part: str, spec: _FieldSpec, field_text: str) -> _Item:
    p = part.lower()
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
        if step == 0:
            raise ScheduleError(
                spec.message(field_text, part, "has step 0 (expected a step of at least 1)")
            )
        if step > spec.high:
            # cronie (1.5.5 on) refuses a step above the field's largest value; Debian's cron
            # takes the first value only. Either way it does not mean "every N".
            raise ScheduleError(
                spec.message(
                    field_text,
                    part,
                    f"has step {step}, larger than the field's largest value {spec.high}; "
                    "cron(8) refuses it",
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
        # cronie refuses "a/step"; old Vixie cron read it as "a"; croniter as "a-max/step".
        raise ScheduleError(
            spec.message(
                field_text,
                part,
                "has a step after a single value, which cron(8) refuses (and other crons read "
                f"differently); write {start}-{spec.high}/{step} for every {step} from {start}",
            )
        )
    b = (
        spec.high
        if (spec.kind == "day" and end == "l")
        else _parse_value(end, spec, field_text, part)
    )
    if a > b:
        raise _backwards(spec, field_text, part, a, b)
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
    stripped = text
    if not stripped:
        raise ScheduleError(f"{spec.name} field is empty ({spec.expected})")
    if not (stripped.isascii() and stripped.isprintable()) or " " in stripped:
        raise ScheduleError(
            f"{spec.name} field {stripped!r} has a character cron(8) does not read "
            f"({spec.expected})"
        )
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
