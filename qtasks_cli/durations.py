"""Durations such as ``500ms``, ``30s``, ``1h30m`` or a plain number of seconds."""

from __future__ import annotations

import re
from datetime import timedelta

from qtasks_cli.errors import DurationError

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# ASCII digits only: Python's \d and float() also read other scripts' digits, and float()
# reads "1_0" as 10 and "1e3" as 1000.
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")
# Longer than any schedule or timeout can mean, and far inside timedelta's and datetime's range.
_MAX_SECONDS = 100 * 366 * 86400.0
_EXPECTED = "expected seconds or a duration such as 500ms, 30s, 5m, 2h, 1d or 1h30m"


def parse_duration(value: object) -> timedelta:
    """Return the non-negative timedelta that ``value`` spells, or raise DurationError."""
    if isinstance(value, bool):
        raise DurationError(f"{value!r} is not a duration ({_EXPECTED})")
    if isinstance(value, (int, float)):
        if value != value or value in (float("inf"), float("-inf")):
            raise DurationError(f"{value!r} is not a duration ({_EXPECTED})")
        if value < 0:
            raise DurationError(f"{value!r} is negative ({_EXPECTED})")
        if value > _MAX_SECONDS:
            raise DurationError(f"{value!r} is too long (at most 100 years)")
        return timedelta(seconds=value)
    if not isinstance(value, str):
        raise DurationError(f"{value!r} is not a duration ({_EXPECTED})")
    text = value.strip().lower().replace(" ", "")
    if text.startswith("-"):
        raise DurationError(f"{value!r} is negative ({_EXPECTED})")
    if _SECONDS.fullmatch(text):
        return parse_duration(float(text))
    pos, total = 0, 0.0
    # Part after part from where the last ended (finditer would retry at every later digit:
    # quadratic in a long run of digits without a unit).
    match = _PART.match(text)
    while match is not None:
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
        match = _PART.match(text, pos)
    if pos != len(text) or not text:
        raise DurationError(f"{value!r} is not a duration ({_EXPECTED})")
    if total > _MAX_SECONDS:
        raise DurationError(f"{value!r} is too long (at most 100 years)")
    return timedelta(seconds=total)


def format_duration(delta: timedelta) -> str:
    """Spell ``delta`` compactly (``1h30m``, ``500ms``); ``parse_duration`` reads it back."""
    ms = round(delta.total_seconds() * 1000)
    if ms == 0:
        return "0s"
    sign, ms = ("-", -ms) if ms < 0 else ("", ms)
    parts = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        count, ms = divmod(ms, size)
        if count:
            parts.append(f"{count}{unit}")
    if ms:
        parts.append(f"{ms}ms")
    return sign + "".join(parts)


def format_seconds(seconds: float) -> str:
    """``format_duration`` of a number of seconds."""
    return format_duration(timedelta(seconds=seconds))
