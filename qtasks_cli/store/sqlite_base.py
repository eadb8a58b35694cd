"""The SQLite store's worker thread and life cycle: every blocking call runs in one dedicated
thread that owns the connection (``_run``), so the event loop never waits on the disk or on
another process's lock. ``SqliteDaemon`` and ``SqliteStore`` build on it."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from qtasks_cli.clock import utcnow as _utc_now
from qtasks_cli.errors import StoreError
from qtasks_cli.models import RunResult
from qtasks_cli.store import sql
from qtasks_cli.store.sqlite_schema import (
    DIALECT,
)
from qtasks_cli.store.sqlite_schema import MIGRATIONS as MIGRATIONS  # _migrate reads it here

if TYPE_CHECKING:
    pass
from qtasks_cli.store.sqlite_file import BUSY_TIMEOUT, connect, held_locks, immediate, row_to_run

log = logging.getLogger("qtasks_cli.store.sqlite")

_T = TypeVar("_T")

FLUSH_INTERVAL = 0.2  # seconds between batched writes of start/finish
RETRY_INTERVAL = 2.0  # seconds between attempts to write the buffer while the file is locked
BATCH_SIZE = 500  # more pending writes than this are written at once


class SqliteBase(sql.SqlStore):
    """One SQLite file behind a worker thread, and its write buffer; see ``sqlite.py`` for
    the store as a whole."""

    _duplicate = sqlite3.IntegrityError

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = BUSY_TIMEOUT,
        flush_interval: float = FLUSH_INTERVAL,
        retry_interval: float = RETRY_INTERVAL,
        batch_size: int = BATCH_SIZE,
        clock: Callable[[], datetime] = _utc_now,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.path = Path(path).expanduser()
        self.location = str(self.path)
        self._busy_timeout = busy_timeout
        self._clock = clock
        self._sleep = sleep
        self._pid = os.getpid()
        self._host = socket.gethostname()
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # used only in the worker thread
        self._data_version = 0
        self._files_seen: tuple[int, ...] = ()
        self._closed = False
        self._lock_fd: int | None = None
        # Held around every write transaction of this store's connections: the prune's
        # chunks take turns with claims instead of making them wait on SQLite's busy loop.
        self._write_lock = threading.Lock()
        self._writes = self._write_buffer(
            log,
            flush_interval=flush_interval,
            retry_interval=retry_interval,
            batch_size=batch_size,
            sleep=sleep,
        )
        self.node_id = sql.node_name(self._host, self._pid)
        self._d = DIALECT

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            held_locks.discard(self._lock_fd)
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    # -- plumbing ---------------------------------------------------------------------

    def _is_open(self) -> bool:
        return self._executor is not None and not self._closed

    async def _run(self, what: str, fn: Callable[..., _T], *args: Any) -> _T:
        self._check_open()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as exc:
            transient = isinstance(exc, sqlite3.OperationalError)
            raise StoreError(f"{self.location}: {what} failed: {exc}", transient=transient) from exc

    async def _run_transaction(self, what: str, work: Callable[[sqlite3.Connection], _T]) -> _T:
        result: _T = await self._run(what, self._transaction, work)
        return result

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"{self.location}: the store is not open")
        return self._conn

    def _transaction(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn`` inside BEGIN IMMEDIATE ... COMMIT (worker thread)."""
        with self._write_lock:
            return immediate(self._db, fn)

    async def open(self) -> None:
        """Create or migrate the file; idempotent."""
        if self._closed:
            raise RuntimeError(f"{self.location}: the store was closed; make a new one")
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qtasks-store")
        try:
            await self._run("opening the state file", self._open_sync)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    def _open_sync(self) -> None:
        self._conn = connect(self.path, self._busy_timeout)
        self._data_version = self._conn.execute("PRAGMA data_version").fetchone()[0]

    async def close(self) -> None:
        """Write buffered rows (retrying a few times), close the file, release the lock."""
        if self._closed:
            return
        lost = 0
        failure: StoreError | None = None
        try:
            await self._writes.stop()
            if self._executor is not None:
                failure = await self._writes.drain()
                lost = len(self._writes.pending)
                await self._run("closing the state file", self._close_sync)
        finally:
            self._closed = True
            if self._executor is not None:
                self._executor.shutdown(wait=True)
            self._release_lock()
        self._writes.raise_lost(failure, lost)

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _fetch_all(self, query: str, params: Any) -> list[Any]:
        return self._db.execute(query, params).fetchall()

    def _execute(self, sql: str, params: tuple[Any, ...]) -> None:
        self._db.execute(sql, params)

    def _get_run_sync(self, run_id: str) -> RunResult | None:
        row = self._db.execute(*sql.run_query(DIALECT, run_id)).fetchone()
        return None if row is None else row_to_run(row)

    async def _fetch(self, what: str, query: str, params: Any = ()) -> list[Any]:
        return await self._run(what, self._fetch_all, query, params)

    async def _steps(self, what: str, steps: Generator[sql.Query, list[Any], _T]) -> _T:
        # All in the store's thread: one hop for the whole read.
        return await self._run(what, sql.drive, steps, self._fetch_all)
