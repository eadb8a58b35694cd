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
import contextlib
import functools
import logging
import os
import socket
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Collection, Generator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

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
)
from qtasks_cli.store.base import encode_request as _encode_request
from qtasks_cli.store.buffer import Write, WriteBuffer
from qtasks_cli.store.fence import OWNED
from qtasks_cli.store.names import new_run_id
from qtasks_cli.store.paths import open_checked, open_folder, prepare_state_file
from qtasks_cli.store.sqlite_prune import compact_on_start
from qtasks_cli.store.sqlite_prune import prune as prune_file
from qtasks_cli.store.sqlite_schema import (
    DIALECT,
    MIN_SQLITE,
    SQL_ADVANCE_JOB,
    SQL_ATTEMPT,
    SQL_BEGIN,
    SQL_CLAIM,
    SQL_ENQUEUE,
    SQL_FINISH,
    SQL_INSERT_RUN,
    SQL_OUTPUT,
    SQL_START,
    from_us,
    to_us,
)
from qtasks_cli.store.sqlite_schema import MIGRATIONS as MIGRATIONS  # _migrate reads it here

if TYPE_CHECKING:
    from qtasks_cli.store.base import Store

log = logging.getLogger(__name__)

_ORDER_NEWEST = sql.ORDER_NEWEST  # tests read it here

_T = TypeVar("_T")

BUSY_TIMEOUT = 5.0  # seconds another process may hold the write lock before we give up
FLUSH_INTERVAL = 0.2  # seconds between batched writes of start/finish
RETRY_INTERVAL = 2.0  # seconds between attempts to write the buffer while the file is locked
BATCH_SIZE = 500  # more pending writes than this are written at once
# -- opening a file -------------------------------------------------------------------


def _prepare_file(path: Path) -> None:
    """Create the folder (0700) and the file (0600), or refuse an untrusted one (store.paths)."""
    prepare_state_file(path)


def _connect(path: Path, busy_timeout: float, *, threaded: bool = False) -> sqlite3.Connection:
    """An autocommit connection with WAL and the current schema, or StoreError."""
    if sqlite3.sqlite_version_info < MIN_SQLITE:
        need = ".".join(map(str, MIN_SQLITE))
        raise StoreError(
            f"{path}: qtasks needs SQLite {need} or newer, "
            f"but Python uses SQLite {sqlite3.sqlite_version}"
        )
    _prepare_file(path)
    try:
        conn = sqlite3.connect(
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=not threaded
        )
    except sqlite3.Error as exc:
        raise StoreError(
            f"{path}: cannot open the state file: {exc}",
            transient=isinstance(exc, sqlite3.OperationalError),
        ) from None
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        if conn.execute("PRAGMA page_count").fetchone()[0] == 0:
            # A new file gives pruned space back as it goes (store/sqlite_prune.py).
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning("%s: SQLite refused WAL mode (journal mode %s)", path, mode)
        conn.execute("PRAGMA synchronous = NORMAL")
        _migrate(conn, path)
    except StoreError:
        conn.close()
        raise
    except sqlite3.OperationalError as exc:
        # Locked, busy, a full disk, a read-only mount: the file checked out (store.paths),
        # so waiting may cure it; the daemon retries instead of exiting 2.
        conn.close()
        raise StoreError(f"{path}: cannot use the state file now: {exc}", transient=True) from None
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StoreError(f"{path}: not a usable qtasks state file: {exc}") from None
    return conn


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    target = len(MIGRATIONS)
    version = _check_version(conn, path, target)
    if version == target:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Another process may have migrated while we waited for the lock.
        version = _check_version(conn, path, target)
        for step in MIGRATIONS[version:]:
            for statement in step:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {target}")
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
    if version != target:
        log.info("%s: schema migrated from version %d to %d", path, version, target)


def _check_version(conn: sqlite3.Connection, path: Path, known: int) -> int:
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > known:
        raise StoreError(
            f"{path}: the state file was created by a newer qtasks (schema version {version}, "
            f"this qtasks knows up to {known}); upgrade qtasks or use another state file"
        )
    return version


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            log.debug("rollback failed", exc_info=True)


def immediate(conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], _T]) -> _T:
    """``work(conn)`` inside BEGIN IMMEDIATE ... COMMIT, rolled back when it raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = work(conn)
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
    return result


def _row_to_run(row: Sequence[Any]) -> RunResult:
    return sql.row_to_run(DIALECT, row)


# -- the synchronous fast path for enqueue() -----------------------------------------


def _open_threaded(path: str) -> sqlite3.Connection:
    return _connect(Path(path), BUSY_TIMEOUT, threaded=True)


_cache: sql.ConnectionCache[sqlite3.Connection] = sql.ConnectionCache(
    close=sqlite3.Connection.close, usable=lambda conn: True
)


def enqueue_now(
    path: str | os.PathLike[str],
    job: str,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    now: datetime | None = None,
) -> str:
    """Write a pending request for ``job`` to the state file at ``path``; return its run id.

    Synchronous and fast (one connection per file is kept open), for the Python API.
    """
    args_json, kwargs_json = _encode_request(job, args, kwargs or {})
    created = to_us(now if now is not None else _utc_now())
    where = os.path.abspath(os.path.expanduser(path))
    conn, lock = _cache.get(where, functools.partial(_open_threaded, where))
    run_id = new_run_id()
    try:
        with lock:
            conn.execute(SQL_ENQUEUE, (run_id, job, created, args_json, kwargs_json))
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot enqueue {job!r}: {exc}") from None
    return run_id


def close_cached_connections() -> None:
    """Close the connections ``enqueue_now`` keeps open (tests; process exit)."""
    _cache.close_all()


# -- the daemon lock across fork() --------------------------------------------------

_held_locks: set[int] = set()
_fork_hook_registered = False


def _forget_locks_in_children() -> None:
    # A forked job process shares the lock's open file description; if it kept it,
    # the lock would outlive a dead daemon. Closing the child's copy leaves ours held.
    global _fork_hook_registered
    if not _fork_hook_registered and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_close_held_locks)
        _fork_hook_registered = True


def _close_held_locks() -> None:
    for fd in _held_locks:
        with contextlib.suppress(OSError):
            os.close(fd)
    _held_locks.clear()


# -- the store ------------------------------------------------------------------------


class SqliteStore(sql.SqlStore):
    """The ``Store`` over one SQLite file; see the module docstring for the threading."""

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
        self._writes = WriteBuffer(
            location=self.location,
            log=log,
            write_batch=self._write_pending,
            flush_interval=flush_interval,
            retry_interval=retry_interval,
            batch_size=batch_size,
            sleep=sleep,
        )
        self.node_id = sql.node_name(self._host, self._pid)
        self._d = DIALECT
        self._node: NodeInfo | None = None  # set by lock_daemon and heartbeat

    _duplicate = sqlite3.IntegrityError
    wakes_on_work = False  # nothing tells a SQLite reader that a request was written
    multi_node = False  # the daemon lock admits one daemon per file
    on_control: Callable[[], None] | None = None  # never called: commands come as datagrams

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

    # -- lifecycle --------------------------------------------------------------------

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
        self._conn = _connect(self.path, self._busy_timeout)
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

    async def lock_daemon(self) -> None:
        """Hold an exclusive flock on ``<file>.lock`` until close() or process exit."""
        import fcntl

        if self._lock_fd is not None:
            return
        lock_path = f"{self.location}.lock"
        folder = open_folder(self.path.parent)
        try:
            fd = open_checked(lock_path, "lock file", folder=folder)
        finally:
            os.close(folder)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise StoreError(
                f"{self.location}: another qtasks daemon (pid {holder}) is using this state file"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise StoreError(f"{lock_path}: cannot lock: {exc.strerror}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self._pid}\n".encode(), 0)
        if self._executor is not None:  # an old file with much free space: compact it now
            await self._run("compacting the state file", self._compact_sync)
        self._lock_fd = fd
        _held_locks.add(fd)
        _forget_locks_in_children()
        now = self._clock()
        self._node = NodeInfo(
            node_id=self.node_id,
            host=self._host,
            pid=self._pid,
            started=now,
            last_seen=now,
            digest="",
        )

    def _compact_sync(self) -> None:
        with self._write_lock:
            compact_on_start(self._db, self.location)

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            _held_locks.discard(self._lock_fd)
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    # -- decisions: written at once ---------------------------------------------------

    async def recover(self, now: datetime, *, rerun_jobs: Collection[str] = ()) -> list[RunResult]:
        """Conclude the runs a dead daemon left unfinished (``ledger.verdict``); re-run the
        interrupted runs of ``rerun_jobs`` as new requests, in the same transaction."""
        await self._writes.flush_for_read()
        return await self._run(
            "recovering unfinished runs", self._recover_sync, to_us(now), frozenset(rerun_jobs)
        )

    def _recover_sync(self, now_us: int, rerun_jobs: frozenset[str]) -> list[RunResult]:
        notice = from_us(now_us)
        assert notice is not None
        noticed = f"noticed at {notice.isoformat()}"

        def work(conn: sqlite3.Connection) -> list[str]:
            rows = sql.unfinished(
                conn.execute(f"{sql.unfinished_sql(DIALECT)} WHERE {OWNED}"),
                note=lambda status, _: noticed if status == RunStatus.RUNNING.value else "",
                runs_elsewhere=self._runs_elsewhere,
            )
            done = conclude(rows, rerun_jobs, new_run_id)
            for statement, batch in sql.verdict_writes(DIALECT, done, notice):
                conn.executemany(statement, batch)
            cancelled.extend(run_id for run_id, _ in done.cancel)
            return [run_id for run_id, _ in done.interrupt]

        cancelled: list[str] = []
        interrupted = self._transaction(work)
        if cancelled:  # the control thread reports them: tell it now, as NOTIFY does
            from qtasks_cli import wake

            wake.send(self.location, wake.CONTROL)
        if interrupted:
            log.info("%s: %d unfinished runs marked interrupted", self.location, len(interrupted))
        return [row for run_id in interrupted if (row := self._get_run_sync(run_id)) is not None]

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

    async def changed(self) -> bool:
        """True when another connection committed since the last call (or since open).

        The daemon asks once a second while idle, so the common answer costs two ``stat``
        calls on the loop's thread; only when the files changed is the database asked."""
        signature = self._file_signature()
        if signature == self._files_seen:
            return False
        self._files_seen = signature
        return await self._run("checking for changes", self._changed_sync)

    def _file_signature(self) -> tuple[int, ...]:
        parts: list[int] = []
        for suffix in ("", "-wal"):
            try:
                st = os.stat(f"{self.path}{suffix}")
            except OSError:
                parts += [-1, -1]
            else:
                parts += [st.st_mtime_ns, st.st_size]
        return tuple(parts)

    def _changed_sync(self) -> bool:
        version = self._db.execute("PRAGMA data_version").fetchone()[0]
        changed = version != self._data_version
        self._data_version = version
        return bool(changed)

    async def wait_for_work(self, timeout: float) -> bool:
        """SQLite cannot be woken by a writer: sleep ``timeout`` and say False."""
        await self._sleep(timeout)
        return False

    # -- the cluster view: one daemon per file, so only this process -------------------

    async def heartbeat(
        self, now: datetime, *, digest: str, fingerprints: Mapping[str, str]
    ) -> bool:
        """Remember this daemon's job file digest and fingerprints (in memory); always True:
        no other daemon can hold this file, so none presumes this one dead."""
        started = now if self._node is None else self._node.started
        self._node = NodeInfo(
            node_id=self.node_id,
            host=self._host,
            pid=self._pid,
            started=started,
            last_seen=now,
            digest=digest,
            fingerprints=dict(fingerprints),
        )
        return True

    async def nodes(self, now: datetime, timeout: timedelta) -> list[NodeInfo]:
        """This daemon, if it heartbeat within ``timeout``: the flock excludes any other."""
        node = self._node
        return [] if node is None or now - node.last_seen > timeout else [node]

    async def reap_dead_nodes(
        self, now: datetime, timeout: timedelta, *, rerun_jobs: Collection[str] = ()
    ) -> list[RunResult]:
        """Nothing to do: no other daemon can hold this file, and ``recover`` cleaned up
        after the previous one."""
        return []

    async def _prune(self, keep_runs: int | None, keep_days: float | None, now: datetime) -> int:
        self._check_open()
        work = functools.partial(
            prune_file,
            lambda: _connect(self.path, self._busy_timeout),
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

    # -- buffered writes --------------------------------------------------------------

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
            _rollback(conn)
            raise  # locked, busy, read-only, full disk: worth retrying
        except Exception:  # rejected for good (sqlite3.Error), or a value it cannot bind
            _rollback(conn)
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
                _rollback(conn)
                raise
            except Exception as exc:  # never leave the transaction open behind a bad write
                _rollback(conn)
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

    # -- reads ------------------------------------------------------------------------

    def _fetch_all(self, query: str, params: Any) -> list[Any]:
        return self._db.execute(query, params).fetchall()

    def _execute(self, sql: str, params: tuple[Any, ...]) -> None:
        self._db.execute(sql, params)

    def _get_run_sync(self, run_id: str) -> RunResult | None:
        row = self._db.execute(*sql.run_query(DIALECT, run_id)).fetchone()
        return None if row is None else _row_to_run(row)

    async def _fetch(self, what: str, query: str, params: Any = ()) -> list[Any]:
        return await self._run(what, self._fetch_all, query, params)

    async def _steps(self, what: str, steps: Generator[sql.Query, list[Any], _T]) -> _T:
        # All in the store's thread: one hop for the whole read.
        return await self._run(what, sql.drive, steps, self._fetch_all)


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
