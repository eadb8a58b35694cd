"""Opening a SQLite state file: checks of the file and its folder (``store.paths``), WAL and
the schema's migrations (``connect``), ``BEGIN IMMEDIATE`` transactions (``immediate``), the
synchronous fast path of ``enqueue()``, and the daemon lock's descriptors across fork()."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from qtasks_cli.clock import utcnow as _utc_now
from qtasks_cli.errors import StoreError
from qtasks_cli.models import RunResult
from qtasks_cli.store import sql
from qtasks_cli.store.base import encode_request as _encode_request
from qtasks_cli.store.names import new_run_id
from qtasks_cli.store.paths import prepare_state_file
from qtasks_cli.store.sqlite_schema import (
    DIALECT,
    MIN_SQLITE,
    SQL_ENQUEUE,
    to_us,
)
from qtasks_cli.store.sqlite_schema import MIGRATIONS as MIGRATIONS  # _migrate reads it here

if TYPE_CHECKING:
    pass

log = logging.getLogger("qtasks_cli.store.sqlite")

_T = TypeVar("_T")

BUSY_TIMEOUT = 5.0  # seconds another process may hold the write lock before we give up


# -- opening a file -------------------------------------------------------------------


def _prepare_file(path: Path) -> None:
    """Create the folder (0700) and the file (0600), or refuse an untrusted one (store.paths)."""
    prepare_state_file(path)


def connect(path: Path, busy_timeout: float, *, threaded: bool = False) -> sqlite3.Connection:
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
        rollback(conn)
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


def rollback(conn: sqlite3.Connection) -> None:
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
        rollback(conn)
        raise
    return result


def row_to_run(row: Sequence[Any]) -> RunResult:
    return sql.row_to_run(DIALECT, row)


# -- the synchronous fast path for enqueue() -----------------------------------------


def _open_threaded(path: str) -> sqlite3.Connection:
    return connect(Path(path), BUSY_TIMEOUT, threaded=True)


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

held_locks: set[int] = set()
_fork_hook_registered = False


def forget_locks_in_children() -> None:
    # A forked job process shares the lock's open file description; if it kept it,
    # the lock would outlive a dead daemon. Closing the child's copy leaves ours held.
    global _fork_hook_registered
    if not _fork_hook_registered and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_close_held_locks)
        _fork_hook_registered = True


def _close_held_locks() -> None:
    for fd in held_locks:
        with contextlib.suppress(OSError):
            os.close(fd)
    held_locks.clear()
