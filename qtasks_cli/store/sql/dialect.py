"""What differs between the stores' SQL (``Dialect``), and how a read of several
queries is run on either (``drive``, ``drive_async``)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

_T = TypeVar("_T")


Query = tuple[str, Any]  # a statement and its parameters (None: none)

# The order of the newest runs, which the runs_job_time and runs_time indexes serve.
ORDER_NEWEST = "ORDER BY coalesce(started, scheduled, created) DESC, run_id DESC"

# Finished runs that have a duration: the condition of the runs_duration index, which a query
# must repeat word for word for either planner to use the index.
TIMED_STATUSES = (
    "succeeded",
    "failed",
    "timed_out",
    "cancelled",
    "interrupted",
    "skipped",
    "missed",
)
TIMED = (
    "status IN ('succeeded', 'failed', 'timed_out', 'cancelled', 'interrupted', 'skipped',"
    " 'missed') AND started IS NOT NULL AND ended IS NOT NULL"
)
assert TIMED.startswith(f"status IN ({', '.join(repr(s) for s in TIMED_STATUSES)})")


@dataclass(frozen=True, kw_only=True, slots=True)
class Dialect:
    """What differs between the stores' SQL, and nothing else."""

    mark: str  # the placeholder: "?" or "%s"
    prefix: str  # put before a table's name: "" or '"schema".'
    time_in: Callable[[datetime], Any]  # an aware datetime as stored; ValueError when naive
    time_out: Callable[[Any], datetime]  # a stored time as an aware UTC datetime
    # Daemons are nodes (PostgreSQL): runs has a ``node`` column, and ``nodes`` their
    # heartbeats; else a daemon is a process, and the node is host:pid.
    node_column: bool
    lines: Callable[[list[str]], Any]  # a run's output lines as stored (JSON text, jsonb)
    # The operator's JSON documents (run_output's lines, a daemon's description) are jsonb
    # columns named plainly (PostgreSQL), else JSON text in columns named ``*_json``.
    jsonb: bool
    json_in: Callable[[Any], Any]  # a JSON document as stored (compact JSON text, jsonb)
    # Put after a SELECT whose rows the transaction then changes: " FOR UPDATE", or "" where
    # a transaction holds the write lock of the whole file from its start (SQLite's IMMEDIATE).
    for_update: str
    duration: str  # SQL selecting a timed run's duration, ordered by ``ended - started``
    seconds: Callable[[Any], float]  # that duration in seconds
    # The counts per (job, status) read the table itself (PostgreSQL: a parallel scan), so
    # the count of timed runs comes from the same pass; else (SQLite) they read a covering
    # index without ``started`` and the timed runs are counted by a second query.
    timed_in_counts: bool = False

    def table(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def opt_in(self, value: datetime | None) -> Any:
        return None if value is None else self.time_in(value)

    def opt_out(self, value: Any) -> datetime | None:
        return None if value is None else self.time_out(value)

    def marks(self, count: int) -> str:
        return ", ".join([self.mark] * count)

    def json_column(self, name: str) -> str:
        """The column of an operator's table that keeps the JSON document ``name``."""
        return name if self.jsonb else f"{name}_json"

    def json_out(self, value: Any) -> Any:
        """A JSON document of ``json_column`` as read back: decoded."""
        return value if self.jsonb else json.loads(value)


def drive(steps: Generator[Query, list[Any], _T], fetch: Callable[[str, Any], list[Any]]) -> _T:
    """Run ``steps``, answering each query with ``fetch(sql, params)``."""
    try:
        query = next(steps)
        while True:
            query = steps.send(fetch(*query))
    except StopIteration as stop:
        result: _T = stop.value
        return result


async def drive_async(
    steps: Generator[Query, list[Any], _T], fetch: Callable[[str, Any], Awaitable[list[Any]]]
) -> _T:
    """``drive`` with an awaited ``fetch``."""
    try:
        query = next(steps)
        while True:
            query = steps.send(await fetch(*query))
    except StopIteration as stop:
        result: _T = stop.value
        return result
