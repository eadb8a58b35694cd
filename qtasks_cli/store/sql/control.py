"""``SqlControl``: the ``ControlStore`` methods that are the same SQL in both stores.

Both control stores use a synchronous connection from one thread at a time, and both
drivers' connections ``execute`` a statement and hand back a cursor (``Db``): so the SQL
here is plain code over that connection, not a generator of queries as in ``reads.py``
(those must serve PostgreSQL's event loop as well). A store gives its connection and
transactions (``_do``), ``wake``, and what its engine says in its own way: each job's last
run that ran (``_last_ran_sql``), settling a list of cancel requests, and taking the
unreported cancels so that one daemon of several takes each.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar

from qtasks_cli.models import Attempt, RunResult
from qtasks_cli.store.base import UNREPORTED
from qtasks_cli.store.control import (
    RAN,
    CancelRequest,
    DaemonInfo,
    Overview,
    Pause,
    info_body,
    info_from_row,
)
from qtasks_cli.store.sql.dialect import Dialect
from qtasks_cli.store.sql.reads import attempts_query, run_query
from qtasks_cli.store.sql.rows import attempt_from_row, output_lines, row_to_run, run_columns

_T = TypeVar("_T")

# Runs that ran (for a job's last result): not skipped or missed, nor cancelled unstarted.
_RAN = ", ".join(f"'{status}'" for status in RAN)
RAN_STARTED = f"status IN ({_RAN}) AND started IS NOT NULL"


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
    _member = "daemon"  # what messages call a daemon

    @abc.abstractmethod
    def _do(self, what: str, work: Callable[[Db], _T], *, atomic: bool = False) -> _T:
        """``work`` on the connection, in one transaction when ``atomic``; StoreError saying
        ``what`` failed."""

    @abc.abstractmethod
    def _last_ran_sql(self) -> str:
        """Each job's newest run (``ORDER_NEWEST``) that is ``RAN_STARTED``, as
        ``run_columns``: the engines say it differently (a window function, DISTINCT ON)."""

    def _execute(self, what: str, statement: str, params: Sequence[Any] = ()) -> None:
        self._do(what, lambda db: db.execute(statement, params))

    def _one(self, what: str, query: str, params: Sequence[Any] = ()) -> Any:
        return self._do(what, lambda db: db.execute(query, params).fetchone())

    def _all(self, what: str, query: str, params: Sequence[Any] = ()) -> list[Any]:
        return self._do(what, lambda db: db.execute(query, params).fetchall())

    # -- daemons ---------------------------------------------------------------------------

    def publish(self, info: DaemonInfo) -> None:
        d = self._d
        body = d.json_column("info")
        self._execute(
            f"publishing the {self._member}'s status",
            f"INSERT INTO {d.table('daemons')} (node_id, host, pid, started, last_seen, {body})"
            f" VALUES ({d.marks(6)}) ON CONFLICT (node_id) DO UPDATE SET host = excluded.host,"
            " pid = excluded.pid, started = excluded.started, last_seen = excluded.last_seen,"
            f" {body} = excluded.{body}",
            (
                info.node_id,
                info.host,
                info.pid,
                d.time_in(info.started),
                d.time_in(info.last_seen),
                d.json_in(info_body(info)),
            ),
        )

    def withdraw(self, node_id: str) -> None:
        d = self._d
        self._execute(
            f"withdrawing the {self._member}'s status",
            f"DELETE FROM {d.table('daemons')} WHERE node_id = {d.mark}",
            (node_id,),
        )

    def daemons(self) -> list[DaemonInfo]:
        d = self._d
        # A node's row in ``nodes`` is its heartbeat (every few seconds, from its loop); its
        # row here is rewritten only now and then, and when asked (``wake``).
        beat, nodes = (
            ("n.last_seen", f" LEFT JOIN {d.table('nodes')} AS n ON n.node_id = m.node_id")
            if d.node_column
            else ("NULL", "")
        )
        rows = self._all(
            f"reading {self._member}s",
            "SELECT m.node_id, m.host, m.pid, m.started, m.last_seen,"
            f" m.{d.json_column('info')}, {beat} FROM {d.table('daemons')} AS m{nodes}"
            " ORDER BY m.node_id",
        )
        return [
            info_from_row(
                node,
                host,
                pid,
                d.time_out(started),
                d.time_out(seen),
                d.json_out(body),
                beat=d.opt_out(last_beat),
            )
            for node, host, pid, started, seen, body, last_beat in rows
        ]

    # -- pause -----------------------------------------------------------------------------

    def pause(self, job: str, by: str, now: datetime) -> Pause:
        d = self._d
        paused = d.table("paused_jobs")
        since = d.time_in(now)

        def work(db: Db) -> Pause:
            db.execute(
                f"INSERT INTO {paused} (job, since, by_whom) VALUES ({d.marks(3)})"
                " ON CONFLICT (job) DO NOTHING",
                (job, since, by),
            )
            first, whom = db.execute(
                f"SELECT since, by_whom FROM {paused} WHERE job = {d.mark}", (job,)
            ).fetchone()
            return Pause(job=job, since=d.time_out(first), by=whom)

        return self._do(f"pausing {job!r}", work, atomic=True)

    def resume(self, job: str) -> Pause | None:
        d = self._d
        paused = d.table("paused_jobs")

        def work(db: Db) -> Pause | None:
            row = db.execute(
                f"SELECT since, by_whom FROM {paused} WHERE job = {d.mark}{d.for_update}", (job,)
            ).fetchone()
            if row is None:
                return None
            db.execute(f"DELETE FROM {paused} WHERE job = {d.mark}", (job,))
            return Pause(job=job, since=d.time_out(row[0]), by=row[1])

        return self._do(f"resuming {job!r}", work, atomic=True)

    def paused(self) -> dict[str, Pause]:
        rows = self._all(
            "reading paused jobs", f"SELECT job, since, by_whom FROM {self._d.table('paused_jobs')}"
        )
        return {job: Pause(job=job, since=self._d.time_out(t), by=by) for job, t, by in rows}

    # -- cancel ----------------------------------------------------------------------------

    def request_cancel(self, run_id: str, by: str, now: datetime) -> str:
        d = self._d
        runs, requests = d.table("runs"), d.table("cancel_requests")
        at = d.time_in(now)

        def work(db: Db) -> str:
            row = db.execute(
                f"SELECT status FROM {runs} WHERE run_id = {d.mark}{d.for_update}", (run_id,)
            ).fetchone()
            if row is None:
                return "unknown"
            status = str(row[0])
            if status == "queued":
                db.execute(
                    f"UPDATE {runs} SET status = 'cancelled', ended = {d.mark}, error = {d.mark}"
                    f" WHERE run_id = {d.mark} AND status = 'queued'",
                    (at, f"cancelled by {by} before it started", run_id),
                )
                db.execute(
                    f"INSERT INTO {requests} (run_id, requested, by_whom, outcome)"
                    f" VALUES ({d.marks(4)}) ON CONFLICT (run_id) DO UPDATE SET"
                    " outcome = excluded.outcome",
                    (run_id, at, by, UNREPORTED),
                )
                return "cancelled"
            if status in ("claimed", "running"):
                db.execute(
                    f"INSERT INTO {requests} (run_id, requested, by_whom)"
                    f" VALUES ({d.marks(3)}) ON CONFLICT (run_id) DO NOTHING",
                    (run_id, at, by),
                )
                return "requested"
            return status

        return self._do(f"cancelling run {run_id}", work, atomic=True)

    def cancel_requests(self) -> list[CancelRequest]:
        d = self._d
        rows = self._all(
            "reading cancel requests",
            f"SELECT c.run_id, c.requested, c.by_whom FROM {d.table('cancel_requests')} AS c"
            f" JOIN {d.table('runs')} AS r ON r.run_id = c.run_id WHERE c.outcome IS NULL"
            " AND r.status IN ('claimed', 'running') ORDER BY c.requested, c.run_id",
        )
        return [CancelRequest(run_id=r, requested=d.time_out(t), by=b) for r, t, b in rows]

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

    def overview(self, *, since: datetime | None, recent: int = 20) -> Overview:
        d = self._d
        runs, columns = d.table("runs"), run_columns(d)
        ended, params = (
            (f"ended >= {d.mark}", (d.time_in(since),))
            if since is not None
            else ("ended IS NOT NULL", ())
        )
        last_ran = self._last_ran_sql()

        def work(db: Db) -> tuple[list[Any], ...]:
            return (
                db.execute(
                    f"SELECT {columns} FROM {runs} WHERE status IN ('claimed', 'running')"
                    " ORDER BY coalesce(started, created), run_id"
                ).fetchall(),
                db.execute(last_ran).fetchall(),
                db.execute(
                    f"SELECT job, count(*) FROM {runs} WHERE status = 'queued' GROUP BY job"
                ).fetchall(),
                db.execute(
                    f"SELECT job, status, count(*) FROM {runs} WHERE {ended} GROUP BY job, status",
                    params,
                ).fetchall(),
                db.execute(
                    f"SELECT {columns} FROM {runs} WHERE ended IS NOT NULL"
                    f" ORDER BY ended DESC, run_id DESC LIMIT {d.mark}",
                    (recent,),
                ).fetchall(),
            )

        active, last, waiting, ended_rows, latest = self._do("reading runs", work)
        counts: dict[str, dict[str, int]] = {}
        for job, status, count in ended_rows:
            counts.setdefault(job, {})[status] = count
        return Overview(
            active=[row_to_run(d, row) for row in active],
            last={run.job: run for run in (row_to_run(d, row) for row in last)},
            waiting={job: int(count) for job, count in waiting},
            counts=counts,
            recent=[row_to_run(d, row) for row in latest],
        )

    def tidy(self) -> int:
        d = self._d
        runs = d.table("runs")

        def work(db: Db) -> int:
            gone = 0
            for table in ("run_output", "cancel_requests"):
                gone += db.execute(
                    f"DELETE FROM {d.table(table)} WHERE NOT EXISTS"
                    f" (SELECT 1 FROM {runs} AS r WHERE r.run_id = {table}.run_id)"
                ).rowcount
            return gone

        return self._do("tidying the operator's tables", work)
