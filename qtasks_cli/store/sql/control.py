"""``SqlControl``: the ``ControlStore`` methods that are the same SQL in both stores.

Both control stores use a synchronous connection from one thread at a time, and both
drivers' connections ``execute`` a statement and hand back a cursor (``Db``): so the SQL
here is plain code over that connection, not a generator of queries as in ``reads.py``
(those must serve PostgreSQL's event loop as well). A store gives its connection and
transactions (``_do``), ``wake``, and what its engine says in its own way.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar

from qtasks_cli.models import Attempt, RunResult
from qtasks_cli.store.sql.dialect import Dialect
from qtasks_cli.store.sql.reads import attempts_query, run_query
from qtasks_cli.store.sql.rows import attempt_from_row, output_lines, row_to_run

_T = TypeVar("_T")


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Db(Protocol):
    """A connection of either driver (sqlite3, psycopg), as far as this module uses it."""

    def execute(self, query: str, params: Sequence[Any] = ..., /) -> Cursor: ...


class SqlControl(abc.ABC):
    """The ``ControlStore`` methods that are the same in both stores. A store gives its
    dialect and ``_do``, which runs a piece of work on its connection."""

    location: str
    _d: Dialect

    @abc.abstractmethod
    def _do(self, what: str, work: Callable[[Db], _T], *, atomic: bool = False) -> _T:
        """``work`` on the connection, in one transaction when ``atomic``; StoreError saying
        ``what`` failed."""

    def _execute(self, what: str, statement: str, params: Sequence[Any] = ()) -> None:
        self._do(what, lambda db: db.execute(statement, params))

    def _one(self, what: str, query: str, params: Sequence[Any] = ()) -> Any:
        return self._do(what, lambda db: db.execute(query, params).fetchone())

    def _all(self, what: str, query: str, params: Sequence[Any] = ()) -> list[Any]:
        return self._do(what, lambda db: db.execute(query, params).fetchall())

    # -- runs in full ----------------------------------------------------------------------

    def add_output(self, run_id: str, lines: Sequence[str]) -> None:
        d = self._d
        column = d.json_column("lines")
        self._execute(
            "keeping a run's output",
            f"INSERT INTO {d.table('run_output')} (run_id, {column}) VALUES ({d.marks(2)})"
            f" ON CONFLICT (run_id) DO UPDATE SET {column} = excluded.{column}",
            (run_id, output_lines(d, lines)),
        )

    def output(self, run_id: str) -> list[str]:
        d = self._d
        row = self._one(
            "reading a run's output",
            f"SELECT {d.json_column('lines')} FROM {d.table('run_output')} WHERE run_id = {d.mark}",
            (run_id,),
        )
        return [] if row is None else [str(line) for line in d.json_out(row[0])]

    def run(self, run_id: str) -> RunResult | None:
        row = self._one("reading a run", *run_query(self._d, run_id))
        return None if row is None else row_to_run(self._d, row)

    def attempts(self, run_id: str) -> list[Attempt]:
        rows = self._all("reading attempts", *attempts_query(self._d, run_id))
        return [attempt_from_row(self._d, row) for row in rows]

    def run_arguments(self, run_id: str) -> tuple[Any, Any] | None:
        d = self._d
        row = self._one(
            "reading a run's arguments",
            f"SELECT args_json, kwargs_json FROM {d.table('runs')} WHERE run_id = {d.mark}",
            (run_id,),
        )
        if row is None or (row[0] is None and row[1] is None):
            return None
        return json.loads(row[0] or "[]"), json.loads(row[1] or "{}")

    def last_successes(self) -> dict[str, datetime]:
        rows = self._all(
            "reading last successes",
            f"SELECT job, max(ended) FROM {self._d.table('runs')} WHERE status = 'succeeded'"
            " AND ended IS NOT NULL GROUP BY job",
        )
        return {job: self._d.time_out(ended) for job, ended in rows}
