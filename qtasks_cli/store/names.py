"""Run ids and how a store is named: the leaf both stores and the factory import."""

from __future__ import annotations

import os
import threading
import time

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class _RunIds:
    """Time-ordered ids: 12 hex digits of Unix milliseconds, then 8 hex digits.

    The low part starts random in each millisecond and counts up within it, so ids
    made by one process sort in creation order and ids of different processes collide
    only if they draw neighbouring random numbers in the same millisecond.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ms = 0
        self._low = 0

    def next(self) -> str:
        ms = time.time_ns() // 1_000_000
        with self._lock:
            if ms > self._ms:
                # 31 random bits leave room to count up within a busy millisecond.
                low = int.from_bytes(os.urandom(4), "big") >> 1
            else:
                # Same millisecond, or the wall clock stepped back: stay monotonic.
                ms, low = self._ms, self._low + 1
                if low > 0xFFFFFFFF:
                    ms, low = ms + 1, int.from_bytes(os.urandom(4), "big") >> 1
            self._ms, self._low = ms, low
        return f"{ms:012x}{low:08x}"


_run_ids = _RunIds()


def new_run_id() -> str:
    """A short, unique run id (20 hex digits) that sorts by creation time."""
    return _run_ids.next()


def is_url(state: str) -> bool:
    """True when ``state`` names a PostgreSQL database rather than a file."""
    return state.startswith(_POSTGRES_SCHEMES)


def redact_url(url: str) -> str:
    """``url`` without its password (in the user info or a ``password=`` parameter). Read the
    way a connection URI is written, not as ``urllib`` would read it: the user info runs to the
    last ``@`` before the parameters, so a password holding ``#``, ``?``, ``/`` or ``@`` is
    hidden whole (more than libpq would take as the password, never less); never raises (an
    unclosed ``[`` of an IPv6 host is left as it is)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    query_at = rest.find("?", rest.rfind("@") + 1)
    cut = rest.rfind("@", 0, query_at if query_at >= 0 else len(rest))
    if cut >= 0:
        user = rest[:cut].split(":", 1)[0]
        rest = (f"{user}@" if user else "") + rest[cut + 1 :]
    base, mark, query = rest.partition("?")
    if mark:
        pairs = [pair for pair in query.split("&") if pair]
        kept = [pair for pair in pairs if pair.split("=", 1)[0].lower() != "password"]
        query = "&".join(kept)
        rest = base + ("?" + query if query else "")
    return f"{scheme}://{rest}"
