"""``ControlStore`` over the SQLite state file: a connection of its own, used from one thread
at a time (the daemon's control thread, or a short-lived command)."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from qtasks_cli.errors import StoreError
from qtasks_cli.models import RunResult
from qtasks_cli.store import sql
from qtasks_cli.store.base import UNREPORTED
from qtasks_cli.store.control import (
    DaemonInfo,
    info_body,
    info_from_row,
)
from qtasks_cli.store.sqlite import BUSY_TIMEOUT, _connect, _rollback, _row_to_run
from qtasks_cli.store.sqlite_schema import DIALECT, from_us, to_us

if TYPE_CHECKING:
    from qtasks_cli.store.control import ControlStore

_RUN_COLUMNS = sql.run_columns(DIALECT)

_T = TypeVar("_T")


def _time(value: int) -> datetime:
    result = from_us(value)
    assert result is not None
    return result


class SqliteControl(sql.SqlControl):
    """The operator's tables in a state file; see ``ControlStore`` for the contract."""

    def __init__(self, path: str, *, busy_timeout: float = BUSY_TIMEOUT) -> None:
        self.path = Path(path).expanduser()
        self.location = str(self.path)
        self._d = DIALECT
        self._lock = threading.Lock()
        # check_same_thread off: the daemon's control thread opens it, the loop closes it.
        self._conn: sqlite3.Connection | None = _connect(self.path, busy_timeout, threaded=True)

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
                if not atomic:
                    return work(conn)
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = work(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    _rollback(conn)
                    raise
                return result
            except sqlite3.Error as exc:
                raise StoreError(f"{self.location}: {what} failed: {exc}") from None

    # -- daemons ---------------------------------------------------------------------------

    def publish(self, info: DaemonInfo) -> None:
        body = json.dumps(info_body(info), separators=(",", ":"))
        params = (
            info.node_id,
            info.host,
            info.pid,
            to_us(info.started),
            to_us(info.last_seen),
            body,
        )

        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO daemons"
                " (node_id, host, pid, started, last_seen, info_json) VALUES (?, ?, ?, ?, ?, ?)",
                params,
            )

        self._do("publishing the daemon's status", work)

    def withdraw(self, node_id: str) -> None:
        def work(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM daemons WHERE node_id = ?", (node_id,))

        self._do("withdrawing the daemon's status", work)

    def wake(self) -> None:
        from qtasks_cli import wake

        wake.send(self.location, wake.CONTROL)

    def daemons(self) -> list[DaemonInfo]:
        def work(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(
                "SELECT node_id, host, pid, started, last_seen, info_json FROM daemons"
                " ORDER BY node_id"
            ).fetchall()

        found = []
        for node_id, host, pid, started, last_seen, body in self._do("reading daemons", work):
            found.append(
                info_from_row(
                    node_id, host, pid, _time(started), _time(last_seen), json.loads(body)
                )
            )
        return found

    # -- cancel ----------------------------------------------------------------------------

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

        def work(conn: sqlite3.Connection) -> list[Any]:
            rows = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id IN"
                " (SELECT run_id FROM cancel_requests WHERE outcome = ?)"
                " AND status = 'cancelled' ORDER BY ended, run_id",
                (UNREPORTED,),
            ).fetchall()
            conn.execute(
                "UPDATE cancel_requests SET outcome = ? WHERE outcome = ?", (outcome, UNREPORTED)
            )
            return rows

        return [_row_to_run(r) for r in self._do("reporting cancels", work, atomic=True)]

    # -- engine's own ----------------------------------------------------------------------

    def _last_ran_sql(self) -> str:
        return (
            f"SELECT {sql.run_columns(self._d)} FROM (SELECT *, row_number() OVER"
            f" (PARTITION BY job {sql.ORDER_NEWEST}) AS rank FROM runs"
            f" WHERE {sql.RAN_STARTED}) WHERE rank = 1"
        )


if TYPE_CHECKING:
    _protocol_check: type[ControlStore] = SqliteControl
