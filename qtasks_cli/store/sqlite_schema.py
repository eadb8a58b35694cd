"""The SQLite state file's schema: its tables (``MIGRATIONS``, applied by ``sqlite_file.connect``),
the statements the store runs on them, and the SQL dialect (store/sql/).

Times are stored as integer microseconds since the Unix epoch (UTC), so ordering is numeric
and every value reads back as an aware UTC datetime.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

from qtasks_cli.store import sql
from qtasks_cli.store.fence import OWNED

MIN_SQLITE = (3, 25, 0)  # upserts and window functions

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)

# Step i brings a file from ``user_version`` i to i + 1; append, never edit.
MIGRATIONS: list[tuple[str, ...]] = [
    (
        """
        CREATE TABLE runs (
            run_id TEXT PRIMARY KEY,
            job TEXT NOT NULL,
            trigger TEXT NOT NULL,
            scheduled INTEGER,
            created INTEGER NOT NULL,
            started INTEGER,
            ended INTEGER,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            error_type TEXT,
            error TEXT,
            traceback TEXT,
            result TEXT,
            items INTEGER,
            pid INTEGER,
            host TEXT,
            args_json TEXT,
            kwargs_json TEXT,
            UNIQUE (job, scheduled)
        )
        """,
        """
        CREATE TABLE attempts (
            run_id TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            started INTEGER NOT NULL,
            ended INTEGER,
            status TEXT NOT NULL,
            error_type TEXT,
            error TEXT,
            PRIMARY KEY (run_id, attempt)
        ) WITHOUT ROWID
        """,
        """
        CREATE TABLE jobs (
            job TEXT PRIMARY KEY,
            last_scheduled INTEGER NOT NULL,
            schedule_key TEXT NOT NULL
        ) WITHOUT ROWID
        """,
        "CREATE INDEX runs_job_time ON runs"
        " (job, coalesce(started, scheduled, created) DESC, run_id DESC)",
        "CREATE INDEX runs_time ON runs (coalesce(started, scheduled, created) DESC, run_id DESC)",
        "CREATE INDEX runs_queued ON runs (created, run_id) WHERE status = 'queued'",
        "CREATE INDEX runs_active ON runs (status) WHERE status IN ('claimed', 'running')",
    ),
    # The operator's tables (qtasks_cli/store/control_sqlite.py): status, pause, cancel, output.
    (
        """
        CREATE TABLE daemons (
            node_id TEXT PRIMARY KEY,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            started INTEGER NOT NULL,
            last_seen INTEGER NOT NULL,
            info_json TEXT NOT NULL
        ) WITHOUT ROWID
        """,
        """
        CREATE TABLE paused_jobs (
            job TEXT PRIMARY KEY,
            since INTEGER NOT NULL,
            by_whom TEXT NOT NULL
        ) WITHOUT ROWID
        """,
        """
        CREATE TABLE cancel_requests (
            run_id TEXT PRIMARY KEY,
            requested INTEGER NOT NULL,
            by_whom TEXT NOT NULL,
            outcome TEXT
        ) WITHOUT ROWID
        """,
        """
        CREATE TABLE run_output (
            run_id TEXT PRIMARY KEY,
            lines_json TEXT NOT NULL
        ) WITHOUT ROWID
        """,
    ),
    # history --stats from indexes (issue 16): counts and last ends per (job, status) from
    # one covering scan, percentiles by walking each job's durations in order.
    (
        "CREATE INDEX runs_job_status ON runs (job, status, ended)",
        f"CREATE INDEX runs_duration ON runs (job, ended - started) WHERE {sql.TIMED}",
    ),
]

SQL_CLAIM = (
    "INSERT INTO runs (run_id, job, trigger, scheduled, created, ended, status, error, pid, host)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (job, scheduled) DO NOTHING"
)
SQL_ADVANCE_JOB = (
    "INSERT INTO jobs (job, last_scheduled, schedule_key) VALUES (?, ?, ?)"
    " ON CONFLICT (job) DO UPDATE SET"
    " schedule_key = CASE WHEN excluded.last_scheduled >= jobs.last_scheduled"
    " THEN excluded.schedule_key ELSE jobs.schedule_key END,"
    " last_scheduled = max(jobs.last_scheduled, excluded.last_scheduled)"
)
# Fenced (store/fence.py): written only while the run is unfinished and this daemon's.
_OWN = f" AND {OWNED} AND pid IS ? AND host IS ?"
SQL_START = "UPDATE runs SET status = 'running', started = ? WHERE run_id = ?" + _OWN
SQL_BEGIN = (
    "UPDATE runs SET status = 'running', started = ?"
    " WHERE run_id = ? AND status = 'claimed' AND pid IS ? AND host IS ?"
)
SQL_OUTPUT = "INSERT OR REPLACE INTO run_output (run_id, lines_json) VALUES (?, ?)"
SQL_ATTEMPT = (
    f"INSERT OR REPLACE INTO attempts ({sql.ATTEMPT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
SQL_ENQUEUE = (
    "INSERT INTO runs (run_id, job, trigger, created, status, args_json, kwargs_json)"
    " VALUES (?, ?, 'queued', ?, 'queued', ?, ?)"
)


def to_us(value: datetime) -> int:
    """An aware datetime as stored: microseconds since the epoch; ValueError when naive."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value!r}; the store needs timezone-aware datetimes")
    return (value - _EPOCH) // _MICROSECOND


def from_us(value: int | None) -> datetime | None:
    """A stored time (or NULL) read back as an aware UTC datetime."""
    return None if value is None else _EPOCH + timedelta(microseconds=value)


def us_time(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def _compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _seconds(micros: int) -> float:
    return micros / 1e6


DIALECT = sql.Dialect(
    mark="?",
    prefix="",
    time_in=to_us,
    time_out=us_time,
    node_column=False,
    lines=json.dumps,
    jsonb=False,
    json_in=_compact_json,
    for_update="",
    duration="ended - started",
    seconds=_seconds,
)
SQL_FINISH = f"UPDATE runs SET {sql.finish_set(DIALECT)} WHERE run_id = ?" + _OWN
SQL_INSERT_RUN = sql.insert_run_sql(DIALECT)
