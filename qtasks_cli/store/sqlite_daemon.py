"""The SQLite store's daemon: the lock that admits one daemon per file (``lock_daemon``),
recovery of the runs a dead daemon left, and what others wrote (``changed``). One daemon per
file, so the store has no nodes to heartbeat or reap (it is no ``ClusterStore``), and its
wake-ups come as datagrams (``wake.py``: it is no ``Announcer``)."""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Collection
from datetime import datetime
from typing import TYPE_CHECKING

from qtasks_cli.errors import StoreError
from qtasks_cli.models import RunResult, RunStatus
from qtasks_cli.recovery import conclude
from qtasks_cli.store import sql
from qtasks_cli.store.fence import OWNED
from qtasks_cli.store.names import new_run_id
from qtasks_cli.store.paths import open_checked, open_folder
from qtasks_cli.store.sqlite_prune import compact_on_start
from qtasks_cli.store.sqlite_schema import (
    DIALECT,
    from_us,
    to_us,
)
from qtasks_cli.store.sqlite_schema import MIGRATIONS as MIGRATIONS  # _migrate reads it here

if TYPE_CHECKING:
    pass
from qtasks_cli.store.sqlite_base import SqliteBase
from qtasks_cli.store.sqlite_file import forget_locks_in_children, held_locks

log = logging.getLogger("qtasks_cli.store.sqlite")


class SqliteDaemon(SqliteBase):
    """The daemon lock, recovery and change detection over ``SqliteBase``'s thread."""

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
        held_locks.add(fd)
        forget_locks_in_children()

    def _compact_sync(self) -> None:
        with self._write_lock:
            compact_on_start(self._db, self.location)

    async def recover(self, now: datetime, *, rerun_jobs: Collection[str] = ()) -> list[RunResult]:
        """Conclude the runs a dead daemon left unfinished (``recovery.verdict``); re-run the
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
