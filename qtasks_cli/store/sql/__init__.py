"""The SQL both stores share, written once over a small ``Dialect``.

The schema is the same in SQLite and PostgreSQL (``runs``, ``attempts``, ``jobs`` ...); what
differs is said by the dialect: the placeholder, the schema prefix of a table, how a time is
kept (integer microseconds or ``timestamptz``), whether ``runs`` has a ``node`` column, how
output lines, JSON documents and durations are spelled, how a transaction locks a row it
read. Here live the statements, the rows' decoding, the values of a write, the reads' steps
and the operator's tables (``SqlControl``); ``sqlite.py`` and ``postgres.py`` keep their
connections, claims, locking and notifications, ``control_sqlite.py`` and
``control_postgres.py`` their connections, transactions and wake-ups.

A read that takes several queries (``stats_steps``) is a generator of (sql, params) that
is sent each query's rows back, so that one text serves SQLite's worker thread (``drive``)
and PostgreSQL's event loop (``drive_async``). The control stores are synchronous on both
engines, so their SQL is plain code over either driver's connection (``control.Db``). No
database driver is imported here.
"""

from qtasks_cli.store.sql.cache import ConnectionCache
from qtasks_cli.store.sql.common import SqlStore
from qtasks_cli.store.sql.control import RAN_STARTED, SqlControl
from qtasks_cli.store.sql.dialect import ORDER_NEWEST, TIMED, Dialect, Query, drive, drive_async
from qtasks_cli.store.sql.reads import (
    attempts_query,
    history_query,
    last_fired_sql,
    run_query,
    stats_steps,
)
from qtasks_cli.store.sql.recovery import (
    conclude_sql,
    rerun_sql,
    unfinished,
    unfinished_sql,
    verdict_writes,
)
from qtasks_cli.store.sql.rows import (
    ATTEMPT_COLUMNS,
    FINISH_SET,
    attempt_from_row,
    attempt_values,
    check_fires,
    finish_set,
    finish_values,
    insert_run_sql,
    latest_fires,
    node_name,
    output_lines,
    queued_run,
    row_to_run,
    run_columns,
    run_values,
)

__all__ = [
    "ATTEMPT_COLUMNS",
    "FINISH_SET",
    "ORDER_NEWEST",
    "RAN_STARTED",
    "TIMED",
    "ConnectionCache",
    "Dialect",
    "Query",
    "SqlControl",
    "SqlStore",
    "attempt_from_row",
    "attempt_values",
    "attempts_query",
    "check_fires",
    "conclude_sql",
    "drive",
    "drive_async",
    "finish_set",
    "finish_values",
    "history_query",
    "insert_run_sql",
    "last_fired_sql",
    "latest_fires",
    "node_name",
    "output_lines",
    "queued_run",
    "rerun_sql",
    "row_to_run",
    "run_columns",
    "run_query",
    "run_values",
    "stats_steps",
    "unfinished",
    "unfinished_sql",
    "verdict_writes",
]
