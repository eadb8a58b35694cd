"""``ControlStore`` over the SQLite state file: a connection of its own, used from one thread
at a time (the daemon's control thread, or a short-lived command). The SQL both stores
share is ``sql.SqlControl``; here are the connection, its transactions and what SQLite
says in its own way."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from qtasks_cli.errors import StoreError
from qtasks_cli.models import RunResult
from qtasks_cli.store import sql
from qtasks_cli.store.base import UNREPORTED
from qtasks_cli.store.sqlite_file import BUSY_TIMEOUT, connect, immediate
from qtasks_cli.store.sqlite_schema import DIALECT

if TYPE_CHECKING:
    from qtasks_cli.store.control import ControlStore

_T = TypeVar("_T")


class SqliteControl(sql.SqlControl):
    """The operator's tables in a state file; see ``ControlStore`` for the contract."""

    def __init__(self, path: str, *, busy_timeout: float = BUSY_TIMEOUT) -> None:
        self.path = Path(path).expanduser()
        self.location = str(self.path)
        self._d = DIALECT
        self._lock = threading.Lock()
        # check_same_thread off: the daemon's control thread opens it, the loop closes it.
        self._conn: sqlite3.Connection | None = connect(self.path, busy_timeout, threaded=True)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _do(
        self, what: str, work: Callable[[sqlite3.Connection], _T], *, atomic: bool = False
    ) -> _T:
        with self._lock:
            conn = self._conn
            if conn is None:
                raise StoreError(f"{self.location}: the state file is closed")
            try:
                return immediate(conn, work) if atomic else work(conn)
            except sqlite3.Error as exc:
                raise StoreError(f"{self.location}: {what} failed: {exc}") from None

    def wake(self) -> None:
        from qtasks_cli import wake

        wake.send(self.location, wake.CONTROL)

    # -- SQLite's own SQL ------------------------------------------------------------------

    def _last_ran_sql(self) -> str:
        return (
            f"SELECT {sql.run_columns(DIALECT)} FROM (SELECT *, row_number() OVER"
            f" (PARTITION BY job {sql.ORDER_NEWEST}) AS rank FROM runs"
            f" WHERE {sql.RAN_STARTED}) WHERE rank = 1"
        )

    def settle_cancel(self, run_ids: Sequence[str], outcome: str) -> None:
        def work(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE cancel_requests SET outcome = ? WHERE run_id = ?",
                [(outcome, run_id) for run_id in run_ids],
            )

        self._do("settling cancel requests", work, atomic=True)

    def take_unreported_cancels(self, outcome: str) -> list[RunResult]:
        def any_left(conn: sqlite3.Connection) -> bool:
            found = conn.execute(
                "SELECT 1 FROM cancel_requests WHERE outcome = ? LIMIT 1", (UNREPORTED,)
            )
            return found.fetchone() is not None

        if not self._do("reading cancels", any_left):  # no write lock each round
            return []

        # SELECT then UPDATE under the write lock is as atomic as UPDATE ... RETURNING,
        # which would need SQLite 3.35.
        def work(conn: sqlite3.Connection) -> list[Any]:
            rows = conn.execute(
                f"SELECT {sql.run_columns(DIALECT)} FROM runs WHERE run_id IN"
                " (SELECT run_id FROM cancel_requests WHERE outcome = ?)"
                " AND status = 'cancelled' ORDER BY ended, run_id",
                (UNREPORTED,),
            ).fetchall()
            conn.execute(
                "UPDATE cancel_requests SET outcome = ? WHERE outcome = ?", (outcome, UNREPORTED)
            )
            return rows

        rows = self._do("reporting cancels", work, atomic=True)
        return [sql.row_to_run(DIALECT, row) for row in rows]


if TYPE_CHECKING:
    _protocol_check: type[ControlStore] = SqliteControl
