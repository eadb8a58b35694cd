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

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Collection, Generator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg.types.json import Jsonb

from qtasks_cli.clock import utcnow as _utc_now
from qtasks_cli.errors import StoreError
from qtasks_cli.ledger import conclude
from qtasks_cli.models import RunResult, RunStatus
from qtasks_cli.store import sql
from qtasks_cli.store.base import (
    Claim,
    Fire,
    NodeInfo,
    QueuedRun,
    busy_error,
    encode_request,
    local_key,
    pid_alive,
)
from qtasks_cli.store.buffer import Write, WriteBuffer
from qtasks_cli.store.names import new_run_id, redact_url
from qtasks_cli.store.postgres_conn import connect_options, scrub
from qtasks_cli.store.postgres_conn import scrub as _scrub  # noqa: F401  (tests read it here)
from qtasks_cli.store.postgres_listen import Listener
from qtasks_cli.store.postgres_prune import prune as prune_schema
from qtasks_cli.store.postgres_schema import (
    CONTROL_KIND,
    DEFAULT_SCHEMA,
    aware,
    channel_name,
    check_schema,
    dialect,
    migrate,
    migrate_sync,
    must_utc,
    statements,
)
from qtasks_cli.store.postgres_schema import (
    MIGRATIONS as MIGRATIONS,
)

if TYPE_CHECKING:
    from qtasks_cli.store.base import Store

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_AsyncConn = psycopg.AsyncConnection[Any]
_LOCAL_KEY = local_key()

NODE_TIMEOUT = timedelta(seconds=30)  # the default of settings.node_timeout
FLUSH_INTERVAL = 0.2  # seconds between batched writes of start/finish
RETRY_INTERVAL = 2.0  # seconds between attempts to write the buffer while the server is away
BATCH_SIZE = 500  # more pending writes than this are written at once


def _row_to_node(row: Sequence[Any]) -> NodeInfo:
    return NodeInfo(
        node_id=row[0],
        host=row[1],
        pid=row[2],
        started=must_utc(row[3]),
        last_seen=must_utc(row[4]),
        digest=row[5],
        fingerprints=dict(row[6] or {}),
    )


# -- the synchronous fast path for enqueue() -----------------------------------------

_ENQUEUER = f"enqueue:{socket.gethostname()}:{os.getpid()}"


def _connect_sync(url: str, schema: str) -> psycopg.Connection[Any]:
    location = redact_url(url)
    try:
        conn = psycopg.Connection.connect(url, **connect_options(url))
    except psycopg.Error as exc:
        raise StoreError(f"{location}: cannot connect: {scrub(str(exc), url)}") from None
    try:
        migrate_sync(conn, schema, location)
        # Like the SQLite store's synchronous=NORMAL: a crash of the server (not of
        # this process) may lose the last fraction of a second of requests, and in
        # exchange enqueue_now does not wait for a disk flush (about 6x faster).
        conn.execute("SET synchronous_commit = off")
    except psycopg.Error as exc:
        conn.close()
        raise StoreError(
            f"{location}: cannot prepare schema {schema!r}: {scrub(str(exc), url)}"
        ) from None
    except BaseException:
        conn.close()
        raise
    return conn


def _usable(conn: psycopg.Connection[Any]) -> bool:
    return not conn.closed and not conn.broken


_cache: sql.ConnectionCache[psycopg.Connection[Any]] = sql.ConnectionCache(
    close=psycopg.Connection.close, usable=_usable
)


@functools.lru_cache(maxsize=16)
def _enqueue_statement(schema: str) -> tuple[str, str]:
    return statements(schema)["enqueue"], channel_name(schema)


def enqueue_now(
    url: str,
    job: str,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    schema: str = DEFAULT_SCHEMA,
    now: datetime | None = None,
) -> str:
    """Write a pending request for ``job`` and wake the nodes; return its run id.

    Synchronous and fast (one connection per URL and schema is kept open, and the
    statement is prepared after a few calls), for the Python API.
    """
    args_json, kwargs_json = encode_request(job, args, kwargs or {})
    created = aware(now) if now is not None else _utc_now()
    sql, channel = _enqueue_statement(schema)
    run_id = new_run_id()
    params = (run_id, job, created, args_json, kwargs_json, channel, f"w:{_ENQUEUER}")
    conn, lock = _cache.get((url, schema), functools.partial(_connect_sync, url, schema))
    try:
        with lock:
            conn.execute(sql, params)
    except psycopg.Error as exc:
        raise StoreError(
            f"{redact_url(url)}: cannot enqueue {job!r}: {scrub(str(exc), url)}"
        ) from None
    return run_id


def close_cached_connections() -> None:
    """Close the connections ``enqueue_now`` keeps open (tests; process exit)."""
    _cache.close_all()


# -- the store ------------------------------------------------------------------------


class PostgresStore(sql.SqlStore):
    """The ``Store`` over one schema of a PostgreSQL database; see the module docstring."""

    _duplicate = psycopg.errors.UniqueViolation
    wakes_on_work = True
    multi_node = True
    on_control: Callable[[], None] | None = None

    def __init__(
        self,
        url: str,
        *,
        schema: str = DEFAULT_SCHEMA,
        node_timeout: timedelta = NODE_TIMEOUT,
        node_id: str | None = None,
        flush_interval: float = FLUSH_INTERVAL,
        retry_interval: float = RETRY_INTERVAL,
        batch_size: int = BATCH_SIZE,
        clock: Callable[[], datetime] = _utc_now,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.url = url
        self.location = redact_url(url)
        self.schema = schema
        self._sql = statements(schema)
        self._d = dialect(schema)
        self._connect_options = connect_options(url)
        self._channel = channel_name(schema)
        self._node_timeout = node_timeout
        self._pid = os.getpid()
        self._host = socket.gethostname()
        self.node_id = node_id or f"{self._host}:{self._pid}:{secrets.token_hex(4)}"
        self._clock = clock
        self._conn: _AsyncConn | None = None
        self._poisoned = False  # a unit of work was cancelled mid-statement: reconnect
        self._lock = asyncio.Lock()  # one unit of work at a time on the connection
        self._opened = False
        self._closed = False
        self._registered = False
        # StoreError's own text is shown, never its psycopg cause (it may quote the URL).
        self._writes = WriteBuffer(
            location=self.location,
            log=log,
            write_batch=self._write_pending,
            flush_interval=flush_interval,
            retry_interval=retry_interval,
            batch_size=batch_size,
            sleep=sleep,
            reason=lambda exc: exc,
        )
        # Listening for NOTIFY on a connection of its own.
        self._ear = Listener(
            connect=self._connect,
            channel=self._channel,
            node_id=self.node_id,
            location=self.location,
            url=url,
            on_control=self._control,
        )

    # -- plumbing ---------------------------------------------------------------------

    def _fail(self, what: str, exc: BaseException) -> StoreError:
        return StoreError(
            f"{self.location}: {what} failed: {scrub(str(exc), self.url)}",
            transient=isinstance(exc, psycopg.OperationalError),
        )

    async def _connect(self) -> _AsyncConn:
        try:
            return await psycopg.AsyncConnection.connect(self.url, **self._connect_options)
        except psycopg.Error as exc:
            raise StoreError(
                f"{self.location}: cannot connect: {scrub(str(exc), self.url)}",
                transient=isinstance(exc, psycopg.OperationalError),
            ) from None

    async def _connection(self) -> _AsyncConn:
        conn = self._conn
        if conn is None or conn.closed or conn.broken or self._poisoned:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
            self._conn = None
            self._poisoned = False
            self._conn = conn = await self._connect()
        return conn

    def _is_open(self) -> bool:
        return self._opened and not self._closed

    async def _do(self, what: str, work: Callable[[_AsyncConn], Awaitable[_T]]) -> _T:
        """Run ``work`` on the connection, alone; psycopg errors become StoreError."""
        self._check_open()
        async with self._lock:
            conn = await self._connection()
            try:
                return await work(conn)
            except psycopg.Error as exc:
                raise self._fail(what, exc) from exc
            except BaseException:
                # Cancelled mid-statement: the connection's state is unknown.
                self._poisoned = True
                raise

    async def _notify(self, conn: _AsyncConn, kind: str) -> None:
        await conn.execute(self._sql["notify"], (self._channel, f"{kind}:{self.node_id}"))

    # -- lifecycle --------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and create or migrate the schema; idempotent."""
        if self._closed:
            raise RuntimeError(f"{self.location}: the store was closed; make a new one")
        if self._opened:
            return
        conn = await self._connect()
        try:
            await migrate(conn, self.schema, self.location)
        except psycopg.Error as exc:
            await conn.close()
            raise StoreError(
                f"{self.location}: cannot prepare schema {self.schema!r}: "
                f"{scrub(str(exc), self.url)}",
                transient=isinstance(exc, psycopg.OperationalError),
            ) from None
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        self._opened = True

    async def close(self) -> None:
        """Write buffered rows (retrying a few times), leave the cluster, disconnect."""
        if self._closed:
            return
        lost = 0
        failure: StoreError | None = None
        try:
            await self._writes.stop()
            await self._ear.stop()
            if self._opened:
                failure = await self._writes.drain()
                lost = len(self._writes.pending)
                if self._registered:
                    await self._leave()
        finally:
            self._closed = True
            self._ear.cancel_syncs()
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    await self._conn.close()
                self._conn = None
        self._writes.raise_lost(failure, lost)

    async def _leave(self) -> None:
        # A clean exit: others need not wait node_timeout to know this node is gone.
        async def work(conn: _AsyncConn) -> None:
            await conn.execute(self._sql["forget_nodes"], ([self.node_id],))

        try:
            await self._do("leaving the cluster", work)
        except StoreError as exc:
            log.warning("%s: %s", self.location, exc)
        self._registered = False

    async def lock_daemon(self) -> None:
        """Register this node (no exclusive lock: nodes share the database) and listen for
        handed-over work."""
        now = self._clock()
        params = (self.node_id, self._host, self._pid, now, now, "", Jsonb({}), _LOCAL_KEY)

        async def work(conn: _AsyncConn) -> None:
            await conn.execute(self._sql["register"], params)

        await self._do("registering this node", work)
        self._registered = True
        await self._ear.start()

    # -- notifications ----------------------------------------------------------------

    def _control(self) -> None:
        if self.on_control is not None:
            try:
                self.on_control()
            except Exception:
                log.exception("%s: handing over an operator's command failed", self.location)

    @property
    def _listening(self) -> bool:
        return self._ear.listening

    async def wait_for_work(self, timeout: float) -> bool:
        """Return True as soon as a request is handed over (or the listener reconnected),
        False after ``timeout`` seconds; starts listening on first use."""
        return await self._ear.wait_for_work(timeout)

    async def changed(self) -> bool:
        """True when another store wrote since the last call (``Listener.changed``)."""

        async def send(payload: str) -> None:
            async def work(conn: _AsyncConn) -> None:
                await conn.execute(self._sql["notify"], (self._channel, payload))

            await self._do("checking for changes", work)

        return await self._ear.changed(send)

    # -- the cluster ------------------------------------------------------------------

    async def heartbeat(
        self, now: datetime, *, digest: str, fingerprints: Mapping[str, str]
    ) -> bool:
        """Record that this node is alive at ``now`` with its job file's digest; False when
        its row was gone (another node presumed it dead and concluded its runs)."""
        beat = (aware(now), digest, Jsonb(dict(fingerprints)), self.node_id)
        row = (
            self.node_id,
            self._host,
            self._pid,
            now,
            now,
            digest,
            Jsonb(dict(fingerprints)),
            _LOCAL_KEY,
        )

        async def work(conn: _AsyncConn) -> bool:
            cur = await conn.execute(self._sql["beat"], beat)
            if cur.rowcount:
                return True
            await conn.execute(self._sql["register"], row)
            return False

        found = await self._do("recording a heartbeat", work)
        reaped = not found and self._registered
        if reaped:
            log.warning(
                "%s: node %s had been presumed dead by another node (it did not answer for "
                "longer than node_timeout); its runs in progress were concluded there; "
                "registered again",
                self.location,
                self.node_id,
            )
        self._registered = True
        return not reaped

    async def nodes(self, now: datetime, timeout: timedelta) -> list[NodeInfo]:
        """The nodes that heartbeat within ``timeout`` of ``now``, by node id."""

        async def work(conn: _AsyncConn) -> list[Any]:
            cur = await conn.execute(self._sql["nodes"], (aware(now) - timeout,))
            return await cur.fetchall()

        return [_row_to_node(row) for row in await self._do("reading nodes", work)]

    async def reap_dead_nodes(
        self, now: datetime, timeout: timedelta, *, rerun_jobs: Collection[str] = ()
    ) -> list[RunResult]:
        """Conclude the runs of nodes silent for longer than ``timeout`` (or whose process
        is gone from this host) as ``recover`` does; forget the nodes."""
        await self._writes.flush_for_read()
        reruns = frozenset(rerun_jobs)

        async def work(conn: _AsyncConn) -> list[RunResult]:
            async with conn.transaction():
                interrupted, requeued = await self._reap(conn, aware(now), timeout, reruns)
                if interrupted or requeued:
                    await self._notify(conn, "w" if requeued else "c")
            return await self._rows(conn, interrupted)

        rows = await self._do("reaping dead nodes", work)
        if rows:
            log.info("%s: %d runs of dead nodes marked interrupted", self.location, len(rows))
        return rows

    async def _reap(
        self, conn: _AsyncConn, now: datetime, timeout: timedelta, rerun_jobs: frozenset[str]
    ) -> tuple[list[str], int]:
        """Inside a transaction: reap dead nodes; the interrupted run ids and requeued count."""
        # A node whose process is gone from this machine is dead at once, so a daemon
        # restarted after kill -9 need not wait node_timeout for its old runs.
        cur = await conn.execute(
            self._sql["dead_candidates"],
            (self.node_id, now - timeout, _LOCAL_KEY or "-", self._pid),
        )
        dead = {
            node: last_seen
            for node, local_key, pid, last_seen in await cur.fetchall()
            if now - last_seen > timeout or (local_key == _LOCAL_KEY and not pid_alive(pid))
        }
        if not dead:
            return [], 0
        names = list(dead)
        cur = await conn.execute(self._sql["unfinished_of_nodes"], (names,))
        rows = await cur.fetchall()
        noticed = now.isoformat()

        def note(node: str | None) -> str:
            when = must_utc(dead[node]).isoformat() if node in dead else "?"
            return f"node {node} silent since {when}; noticed at {noticed}"

        interrupted, requeued = await self._conclude(conn, rows, now, rerun_jobs, note)
        for node, last_seen in dead.items():
            log.warning(
                "%s: node %s silent since %s is presumed dead",
                self.location,
                node,
                must_utc(last_seen).isoformat(),
            )
        await conn.execute(self._sql["forget_nodes"], (names,))
        return interrupted, requeued

    async def _conclude(
        self,
        conn: _AsyncConn,
        rows: Sequence[Any],
        now: datetime,
        rerun_jobs: frozenset[str],
        note: Callable[[str | None], str],
    ) -> tuple[list[str], int]:
        """Apply ``ledger.verdict`` to unfinished rows (run_id, job, status, trigger, pid,
        host, args_json, kwargs_json, node, cancel_by); the interrupted run ids and the
        count of requeued, re-run and cancelled ones (others to be told)."""
        unfinished = sql.unfinished(
            rows, note=lambda _, node: note(node), runs_elsewhere=self._runs_elsewhere
        )
        done = conclude(unfinished, rerun_jobs, new_run_id)
        async with conn.cursor() as cur:
            for statement, batch in sql.verdict_writes(self._d, done, now):
                await cur.executemany(statement, batch)
        if done.cancel:  # a daemon's control thread reports them (qtasks_cli.cancels)
            await self._notify(conn, CONTROL_KIND)
        told = len(done.requeue) + len(done.reruns) + len(done.cancel)
        return [run_id for run_id, _ in done.interrupt], told

    async def _rows(self, conn: _AsyncConn, run_ids: list[str]) -> list[RunResult]:
        if not run_ids:
            return []
        cur = await conn.execute(
            f"SELECT {sql.run_columns(self._d)} FROM {self._d.table('runs')}"
            " WHERE run_id = ANY(%s) ORDER BY run_id",
            (run_ids,),
        )
        return [sql.row_to_run(self._d, row) for row in await cur.fetchall()]

    # -- decisions: written at once ---------------------------------------------------

    async def recover(self, now: datetime, *, rerun_jobs: Collection[str] = ()) -> list[RunResult]:
        """At a node's start: reap dead nodes (``node_timeout``), and conclude the runs left
        unfinished by processes that never registered as nodes (``qtasks trigger``, unless
        it still runs on this host) or whose node is gone, by ``ledger.verdict``."""
        await self._writes.flush_for_read()
        now = aware(now)
        reruns = frozenset(rerun_jobs)

        async def work(conn: _AsyncConn) -> list[RunResult]:
            async with conn.transaction():
                interrupted, requeued = await self._reap(conn, now, self._node_timeout, reruns)
                cur = await conn.execute(self._sql["orphans"])
                orphans = await cur.fetchall()
                more, again = await self._conclude(
                    conn, orphans, now, reruns, lambda _: f"noticed at {now.isoformat()}"
                )
                interrupted += more
                if interrupted or requeued or again:
                    await self._notify(conn, "w" if requeued or again else "c")
            return await self._rows(conn, interrupted)

        rows = await self._do("recovering unfinished runs", work)
        if rows:
            log.info("%s: %d unfinished runs marked interrupted", self.location, len(rows))
        return rows

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

        async def work(conn: _AsyncConn) -> tuple[set[str], dict[str, str]]:
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
        async def work(conn: _AsyncConn) -> None:
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

        async def work(conn: _AsyncConn) -> None:
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

        async def work(conn: _AsyncConn) -> list[Any]:
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

        async def work(conn: _AsyncConn) -> None:
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

        async def work(conn: _AsyncConn) -> bool:
            cur = await conn.execute(self._sql["begin"], params)
            return cur.rowcount == 1

        return await self._do("marking a run started", work)

    # -- buffered writes --------------------------------------------------------------

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

    async def _write_batch(self, conn: _AsyncConn, batch: list[Write]) -> None:
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

    async def _apply(self, conn: _AsyncConn, batch: list[Write]) -> None:
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

    async def _refused(self, conn: _AsyncConn, writes: list[Write]) -> None:
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

    # -- reads ------------------------------------------------------------------------

    async def _fetch(self, what: str, query: str, params: Any = ()) -> list[Any]:
        async def work(conn: _AsyncConn) -> list[Any]:
            cur = await conn.execute(query, params)
            return await cur.fetchall()

        return await self._do(what, work)

    async def _steps(self, what: str, steps: Generator[sql.Query, list[Any], _T]) -> _T:
        async def fetch(query: str, params: Any) -> list[Any]:
            return await self._fetch(what, query, params)

        return await sql.drive_async(steps, fetch)


if TYPE_CHECKING:
    _protocol_check: type[Store] = PostgresStore
