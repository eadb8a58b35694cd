"""Cron fields in words, for ``qtasks list`` and the daemon's log."""

from __future__ import annotations

from collections.abc import Sequence

from qtasks_cli.schedule.fields import _MONTH_NAMES, _WEEKDAY_NAMES, _CronFields, _Field

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
        # Both must match (a field starts with "*"): say it, or fall back to the fields.
        day_words = _describe_days(day)
        plain = all(item.kind in ("all", "value", "range") for item in weekday.items)
        if day_words is None or not plain or not weekday.values:
            return None
        names = [_WEEKDAY_NAMES[v].title() for v in sorted(weekday.values)]
        either = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
        on = f"on {day_words} when that is a {either}"
    else:
        day_words = None if day.star else _describe_days(day)
        weekday_words = None if weekday.star else _describe_weekdays(weekday)
        if (not day.star and day_words is None) or (not weekday.star and weekday_words is None):
            return None
        # Both restricted: cron fires when EITHER matches, and the words must say so.
        on = " or ".join(f"on {w}" for w in (day_words, weekday_words) if w)
    parts = [text, on, f"in {month_words}" if month_words else ""]
    return " ".join(p for p in parts if p)
