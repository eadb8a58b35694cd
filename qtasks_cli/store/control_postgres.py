"""``ControlStore`` over a PostgreSQL schema: a synchronous connection of its own, used from
one thread at a time (a node's control thread, or a short-lived command). The SQL both
stores share is ``sql.SqlControl``; here are the connection, its transactions, the
schema's migration and what PostgreSQL says in its own way."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg

from qtasks_cli.errors import StoreError
from qtasks_cli.models import RunResult
from qtasks_cli.store import sql
from qtasks_cli.store.base import UNREPORTED
from qtasks_cli.store.names import redact_url
from qtasks_cli.store.postgres_conn import connect_options, scrub
from qtasks_cli.store.postgres_schema import (
    CONTROL_KIND,
    DEFAULT_SCHEMA,
    channel_name,
    check_schema,
    dialect,
    migrate_sync,
)

if TYPE_CHECKING:
    from qtasks_cli.store.control import ControlStore

_T = TypeVar("_T")
_Conn = psycopg.Connection[Any]


class PostgresControl(sql.SqlControl):
    """The operator's tables in a schema; see ``ControlStore`` for the contract."""

    _member = "node"

    def __init__(self, url: str, *, schema: str = DEFAULT_SCHEMA) -> None:
        self.url = url
        self.location = redact_url(url)
        self.schema = schema
        self._s = check_schema(schema)
        self._d = dialect(schema)
        self._lock = threading.Lock()
        try:
            conn = psycopg.Connection.connect(url, **connect_options(url))
        except psycopg.Error as exc:
            raise StoreError(f"{self.location}: cannot connect: {scrub(str(exc), url)}") from None
        try:
            migrate_sync(conn, schema, self.location)
        except psycopg.Error as exc:
            conn.close()
            raise StoreError(
                f"{self.location}: cannot prepare schema {schema!r}: {scrub(str(exc), url)}"
            ) from None
        self._conn: _Conn | None = conn

    def _announce(self, conn: _Conn) -> None:
        # Each node's listener hands this kind to its control thread (not to its loop).
        conn.execute(
            "SELECT pg_notify(%s, %s)", (channel_name(self.schema), f"{CONTROL_KIND}:control")
        )

    def wake(self) -> None:
        self._do("waking the nodes", self._announce)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _do(self, what: str, work: Callable[[_Conn], _T], *, atomic: bool = False) -> _T:
        with self._lock:
            conn = self._conn
            if conn is None:
                raise StoreError(f"{self.location}: the connection is closed")
            try:
                if conn.broken:  # the server went away: one new connection per call at most
                    conn = self._conn = psycopg.Connection.connect(
                        self.url, **connect_options(self.url)
                    )
                if not atomic:
                    return work(conn)
                with conn.transaction():
                    return work(conn)
            except psycopg.Error as exc:
                raise StoreError(
                    f"{self.location}: {what} failed: {scrub(str(exc), self.url)}"
                ) from None

    # -- PostgreSQL's own SQL --------------------------------------------------------------

    def _last_ran_sql(self) -> str:
        return (
            f"SELECT DISTINCT ON (job) {sql.run_columns(self._d)} FROM {self._s}.runs"
            f" WHERE {sql.RAN_STARTED} ORDER BY job, coalesce(started, scheduled, created) DESC,"
            " run_id DESC"
        )

    def settle_cancel(self, run_ids: Sequence[str], outcome: str) -> None:
        def work(conn: _Conn) -> None:
            conn.execute(
                f"UPDATE {self._s}.cancel_requests SET outcome = %s WHERE run_id = ANY(%s)",
                (outcome, list(run_ids)),
            )

        self._do("settling cancel requests", work)

    def take_unreported_cancels(self, outcome: str) -> list[RunResult]:
        s = self._s

        # Taken by the UPDATE: of two nodes at once, one takes each request.
        def work(conn: _Conn) -> list[Any]:
            taken = conn.execute(
                f"UPDATE {s}.cancel_requests SET outcome = %s WHERE outcome = %s RETURNING run_id",
                (outcome, UNREPORTED),
            ).fetchall()
            return conn.execute(
                f"SELECT {sql.run_columns(self._d)} FROM {s}.runs WHERE run_id = ANY(%s)"
                " AND status = 'cancelled' ORDER BY ended, run_id",
                ([r[0] for r in taken],),
            ).fetchall()

        rows = self._do("reporting cancels", work, atomic=True)
        return [sql.row_to_run(self._d, row) for row in rows]


if TYPE_CHECKING:
    _protocol_check: type[ControlStore] = PostgresControl
