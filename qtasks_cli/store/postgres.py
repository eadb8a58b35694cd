"""The PostgreSQL state store: many equal daemons (nodes) share one schema, with no leader.

A fire belongs to the node whose transaction inserts its (job, scheduled) row first;
the same transaction advances the job's last fire and, for jobs that must not overlap,
checks under a per-job advisory lock that no other node is running the job. Nodes
heartbeat a row in ``nodes``; a survivor interrupts the runs of a node that went silent.
Handed-over requests are taken with ``FOR UPDATE SKIP LOCKED`` and announced with
NOTIFY, which a dedicated listening connection turns into ``wait_for_work`` wake-ups.

One connection carries every statement, one unit of work at a time; ``start`` and
``finish`` are buffered and written in batches as in the SQLite store. Times are
``timestamptz`` and read back as aware UTC datetimes. Only imported for a
``postgresql://`` state, so psycopg is imported at the top.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg

from qtasks_cli.models import RunResult, RunStatus
from qtasks_cli.store import sql
from qtasks_cli.store.base import (
    Claim,
    Fire,
    QueuedRun,
    busy_error,
    encode_request,
)
from qtasks_cli.store.buffer import Write
from qtasks_cli.store.names import new_run_id
from qtasks_cli.store.postgres_conn import scrub
from qtasks_cli.store.postgres_conn import scrub as _scrub  # noqa: F401  (tests read it here)
from qtasks_cli.store.postgres_prune import prune as prune_schema
from qtasks_cli.store.postgres_schema import (
    MIGRATIONS as MIGRATIONS,
)
from qtasks_cli.store.postgres_schema import (
    aware,
    check_schema,
)

if TYPE_CHECKING:
    from qtasks_cli.store.base import Store

from qtasks_cli.store.postgres_base import AsyncConn
from qtasks_cli.store.postgres_cluster import PostgresCluster
from qtasks_cli.store.postgres_conn import (
    close_cached_connections as close_cached_connections,
)
from qtasks_cli.store.postgres_conn import (
    enqueue_now as enqueue_now,
)

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class PostgresStore(PostgresCluster):
    """The ``Store`` over one schema of a PostgreSQL database; see the module docstring."""

    async def _claim(
        self, fires: Sequence[Fire], scheduled: list[Any], exclusive_jobs: Collection[str]
    ) -> list[Claim]:
        """The claim in one transaction; a busy exclusive job's fire is inserted SKIPPED
        under the job's advisory lock, so check and insert are atomic across nodes."""
        created = aware(self._clock())
        # One global order of inserts, so concurrent claims wait for each other instead
        # of deadlocking on the unique index.
        order = sorted(range(len(fires)), key=lambda i: (fires[i].job, fires[i].scheduled))
        ordered = [fires[i] for i in order]
        latest = sql.latest_fires(ordered)
        jobs = sorted(latest)
        exclusive = sorted(set(jobs) & set(exclusive_jobs))

        async def work(conn: AsyncConn) -> tuple[set[str], dict[str, str]]:
            async with conn.transaction():
                busy: dict[str, str] = {}
                if exclusive:
                    keys = [f"{self.schema}:{job}" for job in exclusive]
                    await conn.execute(self._sql["lock_jobs"], (keys,))
                    cur = await conn.execute(self._sql["busy"], (exclusive, self.node_id))
                    busy = {job: node for job, node in await cur.fetchall()}
                skipped = [f.status is RunStatus.CLAIMED and f.job in busy for f in ordered]
                params = {
                    "created": created,
                    "pid": self._pid,
                    "host": self._host,
                    "node": self.node_id,
                    "ids": [f.run_id for f in ordered],
                    "jobs": [f.job for f in ordered],
                    "triggers": [f.trigger.value for f in ordered],
                    "scheduled": [f.scheduled for f in ordered],
                    "ended": [
                        created if skip or f.status is not RunStatus.CLAIMED else None
                        for f, skip in zip(ordered, skipped)
                    ],
                    "statuses": [
                        RunStatus.SKIPPED.value if skip else f.status.value
                        for f, skip in zip(ordered, skipped)
                    ],
                    "errors": [
                        busy_error(busy[f.job]) if skip else f.error
                        for f, skip in zip(ordered, skipped)
                    ],
                }
                cur = await conn.execute(self._sql["claim"], params)
                inserted = {row[0] for row in await cur.fetchall()}
                await conn.execute(
                    self._sql["advance"],
                    (jobs, [latest[j][0] for j in jobs], [latest[j][1] for j in jobs]),
                )
                if inserted:
                    await self._notify(conn, "c")
            return inserted, busy

        inserted, busy = await self._do("claiming fires", work)
        outcomes = []
        for fire in fires:
            if fire.run_id not in inserted:
                outcomes.append(Claim.EXISTS)
            elif fire.status is RunStatus.CLAIMED and fire.job in busy:
                outcomes.append(Claim.BUSY)
            else:
                outcomes.append(Claim.INSERTED)
        return outcomes

    async def _insert_run(self, row: tuple[Any, ...]) -> None:
        async def work(conn: AsyncConn) -> None:
            async with conn.transaction():
                await conn.execute(self._sql["insert_run"], row)
                await self._notify(conn, "c")

        await self._do("recording a run", work)

    async def enqueue(
        self, job: str, args: Sequence[Any], kwargs: Mapping[str, Any], now: datetime
    ) -> str:
        """Write a pending request (status and trigger ``queued``), wake the nodes; return
        its run id."""
        args_json, kwargs_json = encode_request(job, args, kwargs)
        run_id = new_run_id()
        params = (
            run_id,
            job,
            aware(now),
            args_json,
            kwargs_json,
            self._channel,
            f"w:{self.node_id}",
        )

        async def work(conn: AsyncConn) -> None:
            await conn.execute(self._sql["enqueue"], params)

        await self._do(f"enqueueing {job!r}", work)
        return run_id

    def enqueue_sync(
        self, job: str, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None
    ) -> str:
        """``enqueue`` without an event loop (see ``enqueue_now``); needs no open()."""
        return enqueue_now(self.url, job, args, kwargs, schema=self.schema, now=self._clock())

    async def take_queued(self, now: datetime, limit: int = 100) -> list[QueuedRun]:
        """Take up to ``limit`` oldest pending requests (``claimed`` by this node); requests
        another node is taking at the same moment are skipped, not waited for."""
        params = (self._pid, self._host, self.node_id, limit)

        async def work(conn: AsyncConn) -> list[Any]:
            async with conn.transaction():
                cur = await conn.execute(self._sql["take"], params)
                rows = await cur.fetchall()
                if rows:
                    await self._notify(conn, "c")
            return rows

        rows = await self._do("taking queued requests", work)
        rows.sort(key=lambda row: (row[4], row[0]))
        return [sql.queued_run(self._d, row) for row in rows]

    async def _prune(self, keep_runs: int | None, keep_days: float | None, now: datetime) -> int:
        self._check_open()
        try:
            # A connection of its own: claims on the store's connection never wait for it.
            async with await self._connect() as conn:
                deleted = await prune_schema(
                    conn,
                    check_schema(self.schema),
                    keep_runs=keep_runs,
                    keep_days=keep_days,
                    now=now,
                )
        except psycopg.Error as exc:
            raise self._fail("pruning history", exc) from exc
        if deleted:
            log.info("%s: pruned %d finished runs", self.location, deleted)
        return deleted

    async def release(self, fires: Sequence[Fire]) -> None:
        """Delete unstarted claims and move last fires back before them (see ``Store``)."""
        if not fires:
            return
        await self._writes.flush()  # a buffered start must land first: it is never released
        quoted = check_schema(self.schema)
        earliest: dict[str, datetime] = {}
        for fire in fires:
            when = aware(fire.scheduled)
            earliest[fire.job] = min(when, earliest.get(fire.job, when))
        ids = [fire.run_id for fire in fires]

        async def work(conn: AsyncConn) -> None:
            async with conn.transaction():
                await conn.execute(
                    f"DELETE FROM {quoted}.runs WHERE run_id = ANY(%s) AND status = 'claimed'"
                    " AND node = %s",
                    (ids, self.node_id),
                )
                for job, when in earliest.items():
                    await conn.execute(
                        f"UPDATE {quoted}.jobs SET last_scheduled = %s"
                        " WHERE job = %s AND last_scheduled >= %s",
                        (when - timedelta(microseconds=1), job, when),
                    )

        await self._do("releasing unstarted claims", work)

    async def begin(self, run_id: str, started: datetime) -> bool:
        """Mark a taken request ``running``, committed before its body starts; False (and
        nothing written) when this node no longer owns it as ``claimed``."""
        params = (aware(started), run_id, self.node_id)

        async def work(conn: AsyncConn) -> bool:
            cur = await conn.execute(self._sql["begin"], params)
            return cur.rowcount == 1

        return await self._do("marking a run started", work)

    async def start(self, run_id: str, started: datetime) -> None:
        """Buffer: the run is running, in this process on this host (fenced: only while it
        is still this node's and unfinished)."""
        params = (aware(started), self._pid, self._host, run_id, self.node_id)
        self._buffer(Write(kind="start", run_id=run_id, statements=((self._sql["start"], params),)))

    async def finish(self, result: RunResult) -> None:
        """Buffer: the run's outcome, one row per attempt and its output lines, written in
        one transaction, all or nothing: only while the run is still this node's and
        unfinished (``fence``: a final status another node wrote is final)."""
        run_id, node = result.run_id, self.node_id
        statements: list[tuple[str, tuple[Any, ...]]] = [(self._sql["fence"], (run_id, node))]
        for attempt in result.attempt_log:
            params = sql.attempt_values(self._d, run_id, attempt, run_id, node)
            statements.append((self._sql["attempt"], params))
        if result.output:
            lines = sql.output_lines(self._d, result.output)
            statements.append((self._sql["output"], (run_id, lines, run_id, node)))
        finish = sql.finish_values(self._d, result, run_id, node)
        statements.append((self._sql["finish"], finish))
        self._buffer(
            Write(kind="finish", run_id=run_id, statements=tuple(statements),
                  wanted=result.status.value)
        )  # fmt: skip

    async def _write_pending(self, batch: list[Write]) -> None:
        await self._do("writing run updates", lambda conn: self._write_batch(conn, batch))

    async def _write_batch(self, conn: AsyncConn, batch: list[Write]) -> None:
        try:
            await self._apply(conn, batch)
        except psycopg.OperationalError:
            raise  # the server went away or refused: worth retrying
        except psycopg.Error:
            # A write the server rejects for good must not hold back the others forever.
            for write in batch:
                try:
                    await self._apply(conn, [write])
                except psycopg.OperationalError:
                    raise
                except psycopg.Error as exc:
                    self._writes.dropped(write, scrub(str(exc), self.url))

    async def _apply(self, conn: AsyncConn, batch: list[Write]) -> None:
        """Write ``batch`` in one transaction, pipelined: one round trip for all of it."""
        firsts: list[tuple[Write, psycopg.AsyncCursor[Any]]] = []
        async with conn.transaction(), conn.pipeline():
            for write in batch:
                (sql, params), *rest = write.statements
                cur = conn.cursor()
                await cur.execute(sql, params)
                firsts.append((write, cur))
                for sql, params in rest:
                    await conn.execute(sql, params)
            await self._notify(conn, "c")
        refused = [write for write, cur in firsts if cur.rowcount == 0]
        if refused:
            await self._refused(conn, refused)

    async def _refused(self, conn: AsyncConn, writes: list[Write]) -> None:
        """Say what the store holds instead of each write the fence refused."""
        try:
            cur = await conn.execute(
                f"SELECT run_id, job, status, error, node FROM {check_schema(self.schema)}.runs"
                " WHERE run_id = ANY(%s)",
                ([w.run_id for w in writes],),
            )
            found = {row[0]: row[1:] for row in await cur.fetchall()}
        except psycopg.Error:  # written already: only the words are lost
            found = {}
        for write in writes:
            self._writes.ignored(write, found.get(write.run_id))


if TYPE_CHECKING:
    _protocol_check: type[Store] = PostgresStore
