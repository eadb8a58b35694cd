"""The SQLite state store: one file shared by the daemon, ``trigger`` and ``history``.

Every blocking call runs in one dedicated worker thread that owns the connection, so
the event loop never waits on the disk or on another process's lock. ``start`` and
``finish`` are buffered and written in batches; ``claim``, ``enqueue`` and
``take_queued`` decide something and are written at once.

Times are stored as integer microseconds since the Unix epoch (UTC), so ordering is
numeric and every value reads back as an aware UTC datetime.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from qtasks_cli.errors import StoreError
from qtasks_cli.models import RunResult, RunStatus
from qtasks_cli.store import sql
from qtasks_cli.store.base import (
    Claim,
    Fire,
    QueuedRun,
    busy_error,
)
from qtasks_cli.store.base import encode_request as _encode_request
from qtasks_cli.store.buffer import Write
from qtasks_cli.store.names import new_run_id
from qtasks_cli.store.sqlite_prune import prune as prune_file
from qtasks_cli.store.sqlite_schema import (
    DIALECT,
    SQL_ADVANCE_JOB,
    SQL_ATTEMPT,
    SQL_BEGIN,
    SQL_CLAIM,
    SQL_ENQUEUE,
    SQL_FINISH,
    SQL_INSERT_RUN,
    SQL_OUTPUT,
    SQL_START,
    to_us,
)
from qtasks_cli.store.sqlite_schema import MIGRATIONS as MIGRATIONS  # _migrate reads it here

if TYPE_CHECKING:
    from qtasks_cli.store.base import Store
from qtasks_cli.store.sqlite_daemon import SqliteDaemon
from qtasks_cli.store.sqlite_file import (
    close_cached_connections as close_cached_connections,
)
from qtasks_cli.store.sqlite_file import connect, rollback
from qtasks_cli.store.sqlite_file import (
    enqueue_now as enqueue_now,
)

log = logging.getLogger(__name__)

_ORDER_NEWEST = sql.ORDER_NEWEST  # tests read it here

_T = TypeVar("_T")


class SqliteStore(SqliteDaemon):
    """The ``Store`` over one SQLite file; see the module docstring for the threading."""

    async def _claim(
        self, fires: Sequence[Fire], scheduled: list[Any], exclusive_jobs: Collection[str]
    ) -> list[Claim]:
        """The claim in one transaction; a busy exclusive job's fire is inserted SKIPPED."""
        created = to_us(self._clock())
        rows = [
            (
                fire.run_id,
                fire.job,
                fire.trigger.value,
                at,
                created,
                None if fire.status is RunStatus.CLAIMED else created,
                fire.status.value,
                fire.error,
                self._pid,
                self._host,
            )
            for fire, at in zip(fires, scheduled)
        ]
        latest = sql.latest_fires(fires)
        jobs = [(job, to_us(when), key) for job, (when, key) in latest.items()]
        exclusive = sorted({fire.job for fire in fires} & set(exclusive_jobs))
        return await self._run_transaction(
            "claiming fires", _claim_work(rows, jobs, exclusive, created, self._pid, self._host)
        )

    async def release(self, fires: Sequence[Fire]) -> None:
        """Delete unstarted claims and move last fires back before them (see ``Store``)."""
        if not fires:
            return
        await self._writes.flush()  # a buffered start must land first: it is never released
        earliest: dict[str, int] = {}
        for fire in fires:
            us = to_us(fire.scheduled)
            earliest[fire.job] = min(us, earliest.get(fire.job, us))
        ids = [(fire.run_id,) for fire in fires]
        back = [(us - 1, job, us) for job, us in earliest.items()]

        def work(conn: sqlite3.Connection) -> None:
            conn.executemany("DELETE FROM runs WHERE run_id = ? AND status = 'claimed'", ids)
            conn.executemany(
                "UPDATE jobs SET last_scheduled = ? WHERE job = ? AND last_scheduled >= ?", back
            )

        await self._run_transaction("releasing unstarted claims", work)

    async def _insert_run(self, row: tuple[Any, ...]) -> None:
        await self._run("recording a run", self._execute, SQL_INSERT_RUN, row)

    async def enqueue(
        self, job: str, args: Sequence[Any], kwargs: Mapping[str, Any], now: datetime
    ) -> str:
        """Write a pending request (status and trigger ``queued``); return its run id."""
        args_json, kwargs_json = _encode_request(job, args, kwargs)
        run_id = new_run_id()
        row = (run_id, job, to_us(now), args_json, kwargs_json)
        await self._run(f"enqueueing {job!r}", self._execute, SQL_ENQUEUE, row)
        return run_id

    def enqueue_sync(
        self, job: str, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None
    ) -> str:
        """``enqueue`` without an event loop (see ``enqueue_now``); needs no open()."""
        return enqueue_now(self.path, job, args, kwargs, now=self._clock())

    async def take_queued(self, now: datetime, limit: int = 100) -> list[QueuedRun]:
        """Move up to ``limit`` oldest pending requests to ``claimed`` and return them."""
        rows = await self._run_transaction("taking queued requests", self._take_work(limit))
        return [sql.queued_run(DIALECT, row) for row in rows]

    def _take_work(self, limit: int) -> Callable[[sqlite3.Connection], list[Any]]:
        # SELECT then UPDATE under the write lock is as atomic as UPDATE ... RETURNING,
        # which would need SQLite 3.35 (newer than Debian 11's or RHEL 9's).
        def work(conn: sqlite3.Connection) -> list[Any]:
            rows = conn.execute(
                "SELECT run_id, job, args_json, kwargs_json, created, trigger FROM runs"
                " WHERE status = 'queued' ORDER BY created, run_id LIMIT ?",
                (limit,),
            ).fetchall()
            conn.executemany(
                "UPDATE runs SET status = 'claimed', pid = ?, host = ?"
                " WHERE run_id = ? AND status = 'queued'",
                [(self._pid, self._host, row[0]) for row in rows],
            )
            return rows

        return work

    async def _prune(self, keep_runs: int | None, keep_days: float | None, now: datetime) -> int:
        self._check_open()
        work = functools.partial(
            prune_file,
            lambda: connect(self.path, self._busy_timeout),
            self._write_lock,
            keep=-1 if keep_runs is None else max(keep_runs, 0),
            cutoff=None if keep_days is None else to_us(now - timedelta(days=keep_days)),
            now=to_us(now),
            location=self.location,
        )
        try:
            # Its own thread and connection: the store's thread stays free for claims.
            deleted = await asyncio.get_running_loop().run_in_executor(None, work)
        except sqlite3.Error as exc:
            transient = isinstance(exc, sqlite3.OperationalError)
            raise StoreError(
                f"{self.location}: pruning history failed: {exc}", transient=transient
            ) from exc
        if deleted:
            log.info("%s: pruned %d finished runs", self.location, deleted)
        return deleted

    async def begin(self, run_id: str, started: datetime) -> bool:
        """Mark a taken request ``running``, committed before its body starts; False (and
        nothing written) when this daemon no longer owns it as ``claimed``."""
        params = (to_us(started), run_id, self._pid, self._host)

        def work(conn: sqlite3.Connection) -> bool:
            return conn.execute(SQL_BEGIN, params).rowcount == 1

        return await self._run_transaction("marking a run started", work)

    async def start(self, run_id: str, started: datetime) -> None:
        """Buffer: the run is running, in this process on this host."""
        params = (to_us(started), run_id, self._pid, self._host)
        self._buffer(Write(kind="start", run_id=run_id, statements=((SQL_START, params),)))

    async def finish(self, result: RunResult) -> None:
        """Buffer: the run's outcome, one row per attempt and its output lines, written in
        one transaction."""
        finish = sql.finish_values(DIALECT, result, result.run_id, self._pid, self._host)
        statements: list[tuple[str, tuple[Any, ...]]] = [(SQL_FINISH, finish)]
        for attempt in result.attempt_log:
            statements.append((SQL_ATTEMPT, sql.attempt_values(DIALECT, result.run_id, attempt)))
        if result.output:
            lines = sql.output_lines(DIALECT, result.output)
            statements.append((SQL_OUTPUT, (result.run_id, lines)))
        self._buffer(
            Write(kind="finish", run_id=result.run_id, statements=tuple(statements),
                  wanted=result.status.value)
        )  # fmt: skip

    async def _write_pending(self, batch: list[Write]) -> None:
        await self._run("writing run updates", self._write_batch, batch)

    def _write_batch(self, batch: list[Write]) -> None:
        with self._write_lock:
            self._write_batch_locked(batch)

    def _write_batch_locked(self, batch: list[Write]) -> None:
        conn = self._db
        try:
            conn.execute("BEGIN IMMEDIATE")
            for write in batch:
                self._apply(conn, write)
            conn.execute("COMMIT")
        except sqlite3.OperationalError:
            rollback(conn)
            raise  # locked, busy, read-only, full disk: worth retrying
        except Exception:  # rejected for good (sqlite3.Error), or a value it cannot bind
            rollback(conn)
            self._write_one_by_one(batch)

    def _write_one_by_one(self, batch: list[Write]) -> None:
        # A write SQLite rejects for good must not hold back the others forever.
        conn = self._db
        for write in batch:
            try:
                conn.execute("BEGIN IMMEDIATE")
                self._apply(conn, write)
                conn.execute("COMMIT")
            except sqlite3.OperationalError:
                rollback(conn)
                raise
            except Exception as exc:  # never leave the transaction open behind a bad write
                rollback(conn)
                self._writes.dropped(write, exc)

    def _apply(self, conn: sqlite3.Connection, write: Write) -> None:
        (first_sql, first_params), *rest = write.statements
        if conn.execute(first_sql, first_params).rowcount == 0:  # refused by the fence
            found = conn.execute(
                "SELECT job, status, error, host || ':' || pid FROM runs WHERE run_id = ?",
                (write.run_id,),
            ).fetchone()
            self._writes.ignored(write, found)
            return
        for statement, params in rest:
            conn.execute(statement, params)


def _claim_work(
    rows: list[tuple[Any, ...]],
    jobs: list[tuple[str, int, str]],
    exclusive: list[str],
    created: int,
    pid: int,
    host: str,
) -> Callable[[sqlite3.Connection], list[Claim]]:
    def work(conn: sqlite3.Connection) -> list[Claim]:
        busy: dict[str, str] = {}
        if exclusive:
            marks = ", ".join("?" * len(exclusive))
            for job, other_host, other_pid in conn.execute(
                "SELECT job, host, pid FROM runs WHERE status IN ('claimed', 'running')"
                f" AND trigger != 'manual' AND job IN ({marks})"
                " AND NOT (pid IS ? AND host IS ?) ORDER BY job, run_id",
                (*exclusive, pid, host),
            ):
                busy.setdefault(job, sql.node_name(other_host, other_pid))
        final: list[tuple[Any, ...]] = []
        wanted: list[Claim] = []
        for row in rows:
            job, status = row[1], row[6]
            skip = job in busy and status == RunStatus.CLAIMED.value
            if skip:
                row = (*row[:5], created, RunStatus.SKIPPED.value, busy_error(busy[job]), *row[8:])
            final.append(row)
            wanted.append(Claim.BUSY if skip else Claim.INSERTED)
        # One executemany for the whole batch (1,000 fires a second must stay cheap); only
        # when some row was already there do we ask which ones.
        before = conn.total_changes
        conn.executemany(SQL_CLAIM, final)
        if conn.total_changes - before != len(final):
            ours = _inserted(conn, final)
            wanted = [w if row[0] in ours else Claim.EXISTS for row, w in zip(final, wanted)]
        conn.executemany(SQL_ADVANCE_JOB, jobs)
        return wanted

    return work


def _inserted(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> set[str]:
    """The run ids of ``rows`` that are in the table (so this claim inserted them)."""
    ids = [row[0] for row in rows]
    found: set[str] = set()
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        found.update(
            r[0] for r in conn.execute(f"SELECT run_id FROM runs WHERE run_id IN ({marks})", chunk)
        )
    return found


if TYPE_CHECKING:
    _protocol_check: type[Store] = SqliteStore
