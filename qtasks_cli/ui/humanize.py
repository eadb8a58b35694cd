"""Times in words for people: ``in 3m 12s``, ``2m ago``, ``1.3s``, ``13:05:00``; one place for
the live table, ``status`` and ``show``. Pure; imports nothing heavy."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, tzinfo


def span(seconds: float) -> str:
    """A duration in at most two units: ``12s``, ``3m 12s``, ``2h 5m``, ``3d 4h``."""
    s = max(0, int(seconds))
    days, rest = divmod(s, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m {secs}s" if secs else f"{minutes}m"
    return f"{secs}s"


def countdown(seconds: float) -> str:
    """``in 3m 12s``; ``now`` once due. Rounded up, so ``in 1s`` shows until the fire."""
    if seconds <= 0:
        return "now"
    return f"in {span(math.ceil(seconds))}"


def ago(seconds: float) -> str:
    """How long ago, in one unit: ``12s ago``, ``2m ago``, ``3h ago``, ``2d ago``."""
    s = max(0, int(seconds))
    for size, unit in ((86_400, "d"), (3600, "h"), (60, "m")):
        if s >= size:
            return f"{s // size}{unit} ago"
    return f"{s}s ago"


def elapsed(seconds: float) -> str:
    """A run's duration: ``4ms``, ``420ms``, ``1.3s``, ``12s``, ``3m 12s``."""
    if seconds < 1:
        return f"{max(0.0, seconds) * 1000:.0f}ms"
    if seconds < 10:
        return f"{seconds:.1f}s"
    return span(seconds)


def clock_time(when: datetime, now: datetime, zone: tzinfo | None = None) -> str:
    """``14:05:00`` today, ``Tue 23:59`` within a week, else ``2026-03-29 02:30``."""
    local, today = when.astimezone(zone), now.astimezone(zone)
    if local.date() == today.date():
        return local.strftime("%H:%M:%S")
    if timedelta(0) < local - today < timedelta(days=6):
        return local.strftime("%a %H:%M")
    return local.strftime("%Y-%m-%d %H:%M")
