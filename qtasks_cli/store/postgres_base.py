"""The PostgreSQL store's connection and life cycle: one connection carries every statement,
one unit of work at a time (``_do``); psycopg errors become StoreError without the URL's
password; ``open`` migrates the schema and ``close`` writes what is buffered and leaves the
cluster. ``PostgresCluster`` and ``PostgresStore`` build on it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Generator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg

from qtasks_cli.clock import utcnow as _utc_now
from qtasks_cli.errors import StoreError
from qtasks_cli.store import sql
from qtasks_cli.store.names import redact_url
from qtasks_cli.store.postgres_conn import connect_options, scrub
from qtasks_cli.store.postgres_conn import scrub as _scrub  # noqa: F401  (tests read it here)
from qtasks_cli.store.postgres_listen import Listener
from qtasks_cli.store.postgres_schema import (
    DEFAULT_SCHEMA,
    channel_name,
    dialect,
    migrate,
    statements,
)
from qtasks_cli.store.postgres_schema import (
    MIGRATIONS as MIGRATIONS,
)

if TYPE_CHECKING:
    pass

log = logging.getLogger("qtasks_cli.store.postgres")

_T = TypeVar("_T")
AsyncConn = psycopg.AsyncConnection[Any]

NODE_TIMEOUT = timedelta(seconds=30)  # the default of settings.node_timeout
FLUSH_INTERVAL = 0.2  # seconds between batched writes of start/finish
RETRY_INTERVAL = 2.0  # seconds between attempts to write the buffer while the server is away
BATCH_SIZE = 500  # more pending writes than this are written at once


class PostgresBase(sql.SqlStore):
    """A connection to one schema of a PostgreSQL database, its write buffer and its
    listening connection; see ``postgres.py`` for the store as a whole."""

    _duplicate = psycopg.errors.UniqueViolation
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
        self._conn: AsyncConn | None = None
        self._poisoned = False  # a unit of work was cancelled mid-statement: reconnect
        self._lock = asyncio.Lock()  # one unit of work at a time on the connection
        self._opened = False
        self._closed = False
        self._registered = False
        # StoreError's own text is shown, never its psycopg cause (it may quote the URL).
        self._writes = self._write_buffer(
            log,
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

    def _control(self) -> None:
        if self.on_control is not None:
            try:
                self.on_control()
            except Exception:
                log.exception("%s: handing over an operator's command failed", self.location)

    # -- plumbing ---------------------------------------------------------------------

    def _fail(self, what: str, exc: BaseException) -> StoreError:
        return StoreError(
            f"{self.location}: {what} failed: {scrub(str(exc), self.url)}",
            transient=isinstance(exc, psycopg.OperationalError),
        )

    async def _connect(self) -> AsyncConn:
        try:
            return await psycopg.AsyncConnection.connect(self.url, **self._connect_options)
        except psycopg.Error as exc:
            raise StoreError(
                f"{self.location}: cannot connect: {scrub(str(exc), self.url)}",
                transient=isinstance(exc, psycopg.OperationalError),
            ) from None

    async def _connection(self) -> AsyncConn:
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

    async def _do(self, what: str, work: Callable[[AsyncConn], Awaitable[_T]]) -> _T:
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

    async def _notify(self, conn: AsyncConn, kind: str) -> None:
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
        async def work(conn: AsyncConn) -> None:
            await conn.execute(self._sql["forget_nodes"], ([self.node_id],))

        try:
            await self._do("leaving the cluster", work)
        except StoreError as exc:
            log.warning("%s: %s", self.location, exc)
        self._registered = False

    async def _fetch(self, what: str, query: str, params: Any = ()) -> list[Any]:
        async def work(conn: AsyncConn) -> list[Any]:
            cur = await conn.execute(query, params)
            return await cur.fetchall()

        return await self._do(what, work)

    async def _steps(self, what: str, steps: Generator[sql.Query, list[Any], _T]) -> _T:
        async def fetch(query: str, params: Any) -> list[Any]:
            return await self._fetch(what, query, params)

        return await sql.drive_async(steps, fetch)
