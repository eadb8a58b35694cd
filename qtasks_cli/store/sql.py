"""The SQL both stores share, written once over a small ``Dialect``.

The schema is the same in SQLite and PostgreSQL (``runs``, ``attempts``, ``jobs`` ...); what
differs is said by the dialect: the placeholder, the schema prefix of a table, how a time is
kept (integer microseconds or ``timestamptz``), whether ``runs`` has a ``node`` column, how
output lines and durations are spelled. Here live the statements, the rows' decoding, the
values of a write, and the reads' steps; ``sqlite.py`` and ``postgres.py`` keep their
connections, claims, locking and notifications.

A read that takes several queries (``stats_steps``) is a generator of (sql, params) that
is sent each query's rows back, so that one text serves SQLite's worker thread (``drive``)
and PostgreSQL's event loop (``drive_async``). No database driver is imported here.
"""

from __future__ import annotations

import abc
import atexit
import json
import os
import threading
from collections.abc import (
    Awaitable,
    Callable,
    Collection,
    Generator,
    Hashable,
    Iterable,
    Sequence,
)
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from qtasks_cli.ledger import Unfinished
from qtasks_cli.models import Attempt, RunResult, RunStatus, TriggerKind
from qtasks_cli.store.base import (
    Claim,
    Fire,
    JobStats,
    QueuedRun,
    RunRow,
    clip_lines,
    job_stats,
    pid_alive,
    storable,
    truncate_traceback,
)
from qtasks_cli.store.fence import cancel_by

if TYPE_CHECKING:
    from qtasks_cli.store.buffer import WriteBuffer

_T = TypeVar("_T")
_C = TypeVar("_C")

Query = tuple[str, Any]  # a statement and its parameters (None: none)

# The order of the newest runs, which the runs_job_time and runs_time indexes serve.
ORDER_NEWEST = "ORDER BY coalesce(started, scheduled, created) DESC, run_id DESC"

# Finished runs that have a duration: the condition of the runs_duration index, which a query
# must repeat word for word for either planner to use the index.
TIMED = (
    "status IN ('succeeded', 'failed', 'timed_out', 'cancelled', 'interrupted', 'skipped',"
    " 'missed') AND started IS NOT NULL AND ended IS NOT NULL"
)

_QUANTILES = (0.5, 0.95)


@dataclass(frozen=True, kw_only=True, slots=True)
class Dialect:
    """What differs between the stores' SQL, and nothing else."""

    mark: str  # the placeholder: "?" or "%s"
    prefix: str  # put before a table's name: "" or '"schema".'
    time_in: Callable[[datetime], Any]  # an aware datetime as stored; ValueError when naive
    time_out: Callable[[Any], datetime]  # a stored time as an aware UTC datetime
    node_column: bool  # runs has a ``node`` column (PostgreSQL); else the node is host:pid
    lines: Callable[[list[str]], Any]  # a run's output lines as stored (JSON text, jsonb)
    duration: str  # SQL selecting a timed run's duration, ordered by ``ended - started``
    seconds: Callable[[Any], float]  # that duration in seconds

    def table(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def opt_in(self, value: datetime | None) -> Any:
        return None if value is None else self.time_in(value)

    def opt_out(self, value: Any) -> datetime | None:
        return None if value is None else self.time_out(value)

    def marks(self, count: int) -> str:
        return ", ".join([self.mark] * count)


# -- runs as rows -----------------------------------------------------------------------

_RUN_COLUMNS = (
    "run_id, job, trigger, scheduled, started, ended, status, attempts, error_type, error,"
    " traceback, result, items, pid, host, created"
)


def run_columns(d: Dialect) -> str:
    """The columns ``row_to_run`` reads, in its order."""
    return _RUN_COLUMNS + (", node" if d.node_column else "")


def node_name(host: str, pid: int) -> str:
    """A SQLite daemon's node: one daemon per file (the flock), so a process is a node."""
    return f"{host}:{pid}"


def row_to_run(d: Dialect, row: Sequence[Any]) -> RunRow:
    """A ``runs`` row read as ``run_columns`` as history shows it."""
    pid, host = row[13], row[14]
    if d.node_column:
        node = row[16]
    else:
        node = None if pid is None or host is None else node_name(host, pid)
    return RunRow(
        run_id=row[0],
        job=row[1],
        trigger=TriggerKind(row[2]),
        scheduled=d.opt_out(row[3]),
        started=d.opt_out(row[4]),
        ended=d.opt_out(row[5]),
        status=RunStatus(row[6]),
        attempts=row[7],
        error_type=row[8],
        error=row[9],
        traceback=row[10],
        result=row[11],
        items=row[12],
        pid=pid,
        host=host,
        created=d.opt_out(row[15]),
        node=node,
    )


def insert_run_sql(d: Dialect) -> str:
    """The insert of a whole run, for ``run_values``."""
    node = ", node" if d.node_column else ""
    count = 19 if d.node_column else 18
    return (
        f"INSERT INTO {d.table('runs')} (run_id, job, trigger, scheduled, created, started,"
        " ended, status, attempts, error_type, error, traceback, result, items, pid, host"
        f"{node}, args_json, kwargs_json) VALUES ({d.marks(count)})"
    )


def run_values(
    d: Dialect,
    result: RunResult,
    *,
    created: datetime,
    pid: int,
    host: str,
    node: str,
    args: Any,
    kwargs: Any,
) -> tuple[Any, ...]:
    """The values of ``insert_run_sql`` for a run that has no scheduled time (manual)."""
    owner: tuple[Any, ...] = (pid, host, node) if d.node_column else (pid, host)
    return (
        result.run_id,
        result.job,
        result.trigger.value,
        d.opt_in(result.scheduled),
        d.time_in(created),
        d.opt_in(result.started),
        d.opt_in(result.ended),
        result.status.value,
        result.attempts,
        storable(result.error_type),
        storable(result.error),
        truncate_traceback(result.traceback),
        storable(result.result_preview),
        result.items,
        *owner,
        None if args is None else json.dumps(args, default=repr),
        None if kwargs is None else json.dumps(kwargs, default=repr),
    )


# -- the values of a finish -------------------------------------------------------------

FINISH_SET = (
    "status = {m}, started = coalesce({m}, started), ended = {m}, attempts = {m},"
    " error_type = {m}, error = {m}, traceback = {m}, result = {m}, items = {m}"
)


def finish_set(d: Dialect) -> str:
    """The SET clause of a finish, for ``finish_values``."""
    return FINISH_SET.format(m=d.mark)


def finish_values(d: Dialect, result: RunResult) -> tuple[Any, ...]:
    """A run's outcome, in the order of ``finish_set``."""
    return (
        result.status.value,
        d.opt_in(result.started),
        d.opt_in(result.ended),
        result.attempts,
        storable(result.error_type),
        storable(result.error),
        truncate_traceback(result.traceback),
        storable(result.result_preview),
        result.items,
    )


ATTEMPT_COLUMNS = "run_id, attempt, started, ended, status, error_type, error"


def attempt_values(d: Dialect, run_id: str, attempt: Attempt) -> tuple[Any, ...]:
    """One attempt's row, in the order of ``ATTEMPT_COLUMNS``."""
    return (
        run_id,
        attempt.number,
        d.time_in(attempt.started),
        d.opt_in(attempt.ended),
        attempt.status.value,
        storable(attempt.error_type),
        storable(attempt.error),
    )


def output_lines(d: Dialect, lines: Sequence[str]) -> Any:
    """A run's output as the store keeps it: the last lines, clipped."""
    return d.lines(clip_lines(lines))


# -- claims -----------------------------------------------------------------------------


def check_fires(d: Dialect, fires: Sequence[Fire]) -> None:
    """ValueError unless every fire is claimed, skipped or missed at an aware time."""
    for fire in fires:
        if fire.status not in (RunStatus.CLAIMED, RunStatus.SKIPPED, RunStatus.MISSED):
            raise ValueError(
                f"fire {fire.run_id!r} of {fire.job!r} has status {fire.status.value!r}; "
                "expected claimed, skipped or missed"
            )
        d.time_in(fire.scheduled)


def latest_fires(fires: Iterable[Fire]) -> dict[str, tuple[datetime, str]]:
    """Per job, the latest scheduled time among ``fires`` and its schedule key (the later
    of equal times wins)."""
    latest: dict[str, tuple[datetime, str]] = {}
    for fire in fires:
        if fire.job not in latest or fire.scheduled >= latest[fire.job][0]:
            latest[fire.job] = (fire.scheduled, fire.schedule_key)
    return latest


# -- recovery ---------------------------------------------------------------------------


def unfinished_sql(d: Dialect) -> str:
    """The columns of ``unfinished`` over ``runs AS r``, up to FROM and its table."""
    node = "node" if d.node_column else "NULL"
    return (
        f"SELECT run_id, job, status, trigger, pid, host, args_json, kwargs_json, {node},"
        f" {cancel_by(d.prefix)} FROM {d.table('runs')} AS r"
    )


def unfinished(
    rows: Iterable[Sequence[Any]],
    *,
    note: Callable[[str, str | None], str],
    runs_elsewhere: Callable[[int | None, str | None], bool],
) -> list[Unfinished]:
    """Rows of ``unfinished_sql`` for ``ledger.conclude``; ``note`` is given each row's
    status and node, ``runs_elsewhere`` its pid and host (for manual runs only)."""
    return [
        Unfinished(
            run_id=run_id,
            job=job,
            status=status,
            trigger=trigger,
            args_json=args_json,
            kwargs_json=kwargs_json,
            note=note(status, node),
            still_running=trigger == TriggerKind.MANUAL.value and runs_elsewhere(pid, host),
            cancel_by=by,
        )
        for run_id, job, status, trigger, pid, host, args_json, kwargs_json, node, by in rows
    ]


def rerun_sql(d: Dialect) -> str:
    """A re-run of an interrupted run: a new request with the same arguments."""
    return (
        f"INSERT INTO {d.table('runs')}"
        " (run_id, job, trigger, created, status, args_json, kwargs_json)"
        f" VALUES ({d.mark}, {d.mark}, 'rerun', {d.mark}, 'queued', {d.mark}, {d.mark})"
    )


def conclude_sql(d: Dialect, status: str) -> str:
    """Conclude one run as ``status`` (interrupted, cancelled): ended, error, run id."""
    return (
        f"UPDATE {d.table('runs')} SET status = '{status}', ended = {d.mark}, error = {d.mark}"
        f" WHERE run_id = {d.mark}"
    )


# -- reads ------------------------------------------------------------------------------


def run_query(d: Dialect, run_id: str) -> Query:
    return f"SELECT {run_columns(d)} FROM {d.table('runs')} WHERE run_id = {d.mark}", (run_id,)


def history_query(d: Dialect, job: str | None, status: RunStatus | None, limit: int) -> Query:
    """Newest first (by start, else scheduled, else created time)."""
    where: list[str] = []
    params: list[Any] = []
    if job is not None:
        where.append(f"job = {d.mark}")
        params.append(job)
    if status is not None:
        where.append(f"status = {d.mark}")
        params.append(status.value)
    clause = f"WHERE {' AND '.join(where)} " if where else ""
    sql = f"SELECT {run_columns(d)} FROM {d.table('runs')} {clause}{ORDER_NEWEST} LIMIT {d.mark}"
    return sql, (*params, limit)


def attempts_query(d: Dialect, run_id: str) -> Query:
    return (
        "SELECT attempt, started, ended, status, error_type, error"
        f" FROM {d.table('attempts')} WHERE run_id = {d.mark} ORDER BY attempt",
        (run_id,),
    )


def attempt_from_row(d: Dialect, row: Sequence[Any]) -> Attempt:
    number, started, ended, status, error_type, error = row
    return Attempt(
        number=number,
        started=d.time_out(started),
        ended=d.opt_out(ended),
        status=RunStatus(status),
        error_type=error_type,
        error=error,
    )


def last_fired_sql(d: Dialect) -> str:
    return f"SELECT job, last_scheduled, schedule_key FROM {d.table('jobs')}"


def queued_run(d: Dialect, row: Sequence[Any]) -> QueuedRun:
    """A taken request from (run_id, job, args_json, kwargs_json, created, trigger)."""
    run_id, job, args_json, kwargs_json, created, trigger = row
    return QueuedRun(
        run_id=run_id,
        job=job,
        args=None if args_json is None else tuple(json.loads(args_json)),
        kwargs=None if kwargs_json is None else json.loads(kwargs_json),
        enqueued=d.time_out(created),
        trigger=TriggerKind(trigger),
    )


def stats_steps(d: Dialect, job: str | None) -> Generator[Query, list[Any], list[JobStats]]:
    """Per job (sorted by name): counts, p50/p95 durations, last success and failure; a job
    named explicitly but never run gets a row of zeros. Percentiles (seconds; linear
    interpolation between closest ranks, numpy's default) each come from the two values at
    their ranks, read in order from the runs_duration index: no row per run is read."""
    runs = d.table("runs")
    where, params = (f"WHERE job = {d.mark}", (job,)) if job is not None else ("", ())
    counts: dict[str, dict[str, tuple[int, datetime | None]]] = {}
    rows = yield (
        f"SELECT job, status, count(*), max(ended) FROM {runs} {where} GROUP BY job, status",
        params,
    )
    for name, status, count, last_ended in rows:
        counts.setdefault(name, {})[status] = (count, d.opt_out(last_ended))
    and_job = f"AND job = {d.mark}" if job is not None else ""
    timed = yield (
        f"SELECT job, count(*) FROM {runs} WHERE {TIMED} {and_job} GROUP BY job",
        params,
    )
    percentiles: dict[str, tuple[float | None, float | None]] = {}
    for name, count in timed:
        found: list[float | None] = []
        for q in _QUANTILES:
            pos = q * (count - 1)
            low = int(pos)
            values = yield (
                f"SELECT {d.duration} FROM {runs} WHERE job = {d.mark} AND {TIMED}"
                f" ORDER BY ended - started LIMIT 2 OFFSET {d.mark}",
                (name, low),
            )
            if not values:
                found.append(None)
                continue
            first = d.seconds(values[0][0])
            second = d.seconds(values[1][0]) if len(values) > 1 else first
            found.append(first + (second - first) * (pos - low))
        percentiles[name] = (found[0], found[1])
    if job is not None:
        counts.setdefault(job, {})
    return [
        job_stats(name, counts[name], *percentiles.get(name, (None, None)))
        for name in sorted(counts)
    ]


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


# -- the store methods the two stores share ---------------------------------------------


class SqlStore(abc.ABC):
    """The ``Store`` methods that are the same SQL in both stores: reads, the claim's
    contract, flushing. A store gives its dialect, its writes' buffer and three
    primitives: ``_fetch`` (one query), ``_steps`` (a read of several) and ``_claim``."""

    location: str
    _d: Dialect
    _pid: int
    _host: str
    _writes: WriteBuffer

    @abc.abstractmethod
    async def _fetch(self, what: str, query: str, params: Any = ()) -> list[Any]:
        """The rows of one query; StoreError saying ``what`` failed."""

    @abc.abstractmethod
    async def _steps(self, what: str, steps: Generator[Query, list[Any], _T]) -> _T:
        """Run a read of several queries (``drive``); StoreError saying ``what`` failed."""

    @abc.abstractmethod
    async def _claim(self, fires: Sequence[Fire], exclusive_jobs: Collection[str]) -> list[Claim]:
        """``Store.claim`` of checked, non-empty ``fires``, as ``Claim`` per fire."""

    @overload
    async def claim(self, fires: Sequence[Fire]) -> list[bool]: ...

    @overload
    async def claim(
        self, fires: Sequence[Fire], *, exclusive_jobs: Collection[str]
    ) -> list[Claim]: ...

    async def claim(
        self, fires: Sequence[Fire], *, exclusive_jobs: Collection[str] | None = None
    ) -> list[bool] | list[Claim]:
        """Insert each fire unless its (job, scheduled) exists and advance last fires, in
        one transaction; see ``Store.claim`` for ``exclusive_jobs``."""
        if not fires:
            return []
        check_fires(self._d, fires)
        outcomes = await self._claim(fires, exclusive_jobs or ())
        if exclusive_jobs is None:
            return [outcome is Claim.INSERTED for outcome in outcomes]
        return outcomes

    async def last_fired(self) -> dict[str, tuple[datetime, str]]:
        """Per job, the last scheduled time recorded and its schedule key."""
        rows = await self._fetch("reading last fires", last_fired_sql(self._d))
        return {job: (self._d.time_out(when), key) for job, when, key in rows}

    async def flush(self) -> None:
        """Write buffered rows now; StoreError (rows kept) when the store cannot take them."""
        await self._writes.flush()

    async def get_run(self, run_id: str) -> RunRow | None:
        await self._writes.flush_for_read()
        rows = await self._fetch("reading a run", *run_query(self._d, run_id))
        return row_to_run(self._d, rows[0]) if rows else None

    async def history(
        self, job: str | None = None, *, limit: int = 50, status: RunStatus | None = None
    ) -> list[RunRow]:
        """Newest first (by start, else scheduled, else created time)."""
        await self._writes.flush_for_read()
        rows = await self._fetch("reading history", *history_query(self._d, job, status, limit))
        return [row_to_run(self._d, row) for row in rows]

    async def attempts(self, run_id: str) -> list[Attempt]:
        await self._writes.flush_for_read()
        rows = await self._fetch("reading attempts", *attempts_query(self._d, run_id))
        return [attempt_from_row(self._d, row) for row in rows]

    async def stats(self, job: str | None = None) -> list[JobStats]:
        """Per job (sorted by name): counts, p50/p95 durations, last success and failure
        (``stats_steps``); a job named explicitly but never run gets a row of zeros."""
        await self._writes.flush_for_read()
        return await self._steps("reading statistics", stats_steps(self._d, job))

    def _runs_elsewhere(self, pid: int | None, host: str | None) -> bool:
        """A manual run's process still runs on this host (``qtasks trigger``)."""
        return pid is not None and pid != self._pid and host == self._host and pid_alive(pid)


# -- connections kept for the synchronous enqueue --------------------------------------


class ConnectionCache(Generic[_C]):
    """One connection (and the lock that takes turns on it) per key and process, closed at
    exit: ``enqueue_now`` is called many times a second and must not connect each time."""

    def __init__(self, close: Callable[[_C], None], usable: Callable[[_C], bool]) -> None:
        self._close = close
        self._usable = usable
        self._entries: dict[tuple[int, Hashable], tuple[_C, threading.Lock]] = {}
        self._lock = threading.Lock()
        self._at_exit = False

    def get(self, key: Hashable, connect: Callable[[], _C]) -> tuple[_C, threading.Lock]:
        """The connection for ``key``, made by ``connect`` (under the cache's lock) when
        there is none or it is no longer usable."""
        # Keyed by pid too: a forked child must not share its parent's connection.
        full = (os.getpid(), key)
        with self._lock:
            entry = self._entries.get(full)
            if entry is not None and self._usable(entry[0]):
                return entry
            entry = (connect(), threading.Lock())
            self._entries[full] = entry
            if not self._at_exit:
                atexit.register(self.close_all)
                self._at_exit = True
            return entry

    def close_all(self) -> None:
        """Close every connection kept (tests; process exit)."""
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
        for conn, lock in entries:
            with lock:
                self._close(conn)
