"""The PostgreSQL schema: its tables (``MIGRATIONS``), the statements the store runs on them,
the SQL dialect (store/sql/), and creating or migrating a schema, on the loop or not.

Everything lives in one schema (``settings.schema``, default ``qtasks``); ``{s}`` in a text
below is its quoted name. Several nodes starting at once take turns to migrate.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from collections.abc import Generator
from datetime import datetime, timezone
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from qtasks_cli.errors import StoreError
from qtasks_cli.store import sql
from qtasks_cli.store.fence import OWNED

log = logging.getLogger(__name__)

_AsyncConn = psycopg.AsyncConnection[Any]

DEFAULT_SCHEMA = "qtasks"
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}\Z")

# Step i brings a schema from version i to i + 1; append, never edit. ``{s}`` is the
# quoted schema name.
MIGRATIONS: list[tuple[str, ...]] = [
    (
        """
        CREATE TABLE {s}.runs (
            run_id text COLLATE "C" PRIMARY KEY,
            job text NOT NULL,
            trigger text NOT NULL,
            scheduled timestamptz,
            created timestamptz NOT NULL,
            started timestamptz,
            ended timestamptz,
            status text NOT NULL,
            attempts integer NOT NULL DEFAULT 0,
            error_type text,
            error text,
            traceback text,
            result text,
            items bigint,
            pid integer,
            host text,
            node text,
            args_json text,
            kwargs_json text,
            UNIQUE (job, scheduled)
        )
        """,
        """
        CREATE TABLE {s}.attempts (
            run_id text COLLATE "C" NOT NULL,
            attempt integer NOT NULL,
            started timestamptz NOT NULL,
            ended timestamptz,
            status text NOT NULL,
            error_type text,
            error text,
            PRIMARY KEY (run_id, attempt)
        )
        """,
        """
        CREATE TABLE {s}.jobs (
            job text PRIMARY KEY,
            last_scheduled timestamptz NOT NULL,
            schedule_key text NOT NULL
        )
        """,
        """
        CREATE TABLE {s}.nodes (
            node_id text PRIMARY KEY,
            host text NOT NULL,
            pid integer NOT NULL,
            started timestamptz NOT NULL,
            last_seen timestamptz NOT NULL,
            digest text NOT NULL DEFAULT '',
            fingerprints jsonb NOT NULL DEFAULT '{}',
            local_key text NOT NULL DEFAULT ''
        )
        """,
        "CREATE INDEX runs_job_time ON {s}.runs"
        " (job, (coalesce(started, scheduled, created)) DESC, run_id DESC)",
        "CREATE INDEX runs_time ON {s}.runs"
        " ((coalesce(started, scheduled, created)) DESC, run_id DESC)",
        "CREATE INDEX runs_queued ON {s}.runs (created, run_id) WHERE status = 'queued'",
        "CREATE INDEX runs_active ON {s}.runs (job, node) WHERE status IN ('claimed', 'running')",
        "CREATE INDEX runs_node ON {s}.runs (node) WHERE status IN ('claimed', 'running')",
    ),
    # The operator's tables (qtasks_cli/store/control_postgres.py): status, pause, cancel,
    # output.
    (
        """
        CREATE TABLE {s}.daemons (
            node_id text PRIMARY KEY,
            host text NOT NULL,
            pid integer NOT NULL,
            started timestamptz NOT NULL,
            last_seen timestamptz NOT NULL,
            info jsonb NOT NULL
        )
        """,
        """
        CREATE TABLE {s}.paused_jobs (
            job text PRIMARY KEY,
            since timestamptz NOT NULL,
            by_whom text NOT NULL
        )
        """,
        """
        CREATE TABLE {s}.cancel_requests (
            run_id text COLLATE "C" PRIMARY KEY,
            requested timestamptz NOT NULL,
            by_whom text NOT NULL,
            outcome text
        )
        """,
        """
        CREATE TABLE {s}.run_output (
            run_id text COLLATE "C" PRIMARY KEY,
            lines jsonb NOT NULL
        )
        """,
    ),
    # history --stats from indexes (issue 16): counts and last ends per (job, status), and
    # each job's percentiles by walking its durations in order.
    (
        "CREATE INDEX runs_job_status ON {s}.runs (job, status, ended)",
        "CREATE INDEX runs_duration ON {s}.runs (job, (ended - started)) WHERE " + sql.TIMED,
    ),
    # The percentiles' walk from the index alone (issue 16): PostgreSQL reads an expression's
    # columns from the table unless the index includes them; 3.6 -> 1.9 ms per walk of 19,000
    # runs, and no heap fetches once vacuumed.
    (
        "DROP INDEX {s}.runs_duration",
        "CREATE INDEX runs_duration ON {s}.runs (job, (ended - started)) INCLUDE (started, ended)"
        " WHERE " + sql.TIMED,
    ),
]

# Statements with ``{s}`` for the schema; each store formats them once.
_SQL = {
    "claim": (
        "INSERT INTO {s}.runs"
        " (run_id, job, trigger, scheduled, created, ended, status, error, pid, host, node)"
        " SELECT f.run_id, f.job, f.trigger, f.scheduled, %(created)s, f.ended, f.status,"
        " f.error, %(pid)s, %(host)s, %(node)s"
        " FROM unnest(%(ids)s::text[], %(jobs)s::text[], %(triggers)s::text[],"
        " %(scheduled)s::timestamptz[], %(ended)s::timestamptz[], %(statuses)s::text[],"
        " %(errors)s::text[]) WITH ORDINALITY"
        " AS f(run_id, job, trigger, scheduled, ended, status, error, n)"
        " ORDER BY f.n ON CONFLICT DO NOTHING RETURNING run_id"
    ),
    "advance": (
        "INSERT INTO {s}.jobs AS j (job, last_scheduled, schedule_key)"
        " SELECT * FROM unnest(%s::text[], %s::timestamptz[], %s::text[]) ORDER BY 1"
        " ON CONFLICT (job) DO UPDATE SET"
        " schedule_key = CASE WHEN excluded.last_scheduled >= j.last_scheduled"
        " THEN excluded.schedule_key ELSE j.schedule_key END,"
        " last_scheduled = greatest(j.last_scheduled, excluded.last_scheduled)"
    ),
    # The array is sorted, so every node takes the locks in one order: no deadlock.
    "lock_jobs": "SELECT pg_advisory_xact_lock(hashtext(k)) FROM unnest(%s::text[]) AS k",
    "busy": (
        "SELECT DISTINCT ON (job) job, coalesce(node, 'unknown') FROM {s}.runs"
        " WHERE job = ANY(%s) AND status IN ('claimed', 'running') AND trigger <> 'manual'"
        " AND node IS DISTINCT FROM %s ORDER BY job, run_id"
    ),
    # Fenced (store/fence.py): a run's row is written only while it is unfinished and this
    # node's; a finish first locks the row so, so its attempts and output go with it or not.
    "start": (
        "UPDATE {s}.runs SET status = 'running', started = %s, pid = %s, host = %s"
        f" WHERE run_id = %s AND {OWNED} AND node = %s"
    ),
    "fence": f"SELECT 1 FROM {{s}}.runs WHERE run_id = %s AND {OWNED} AND node = %s FOR UPDATE",
    "finish": (
        "UPDATE {s}.runs SET "
        + sql.FINISH_SET.format(m="%s")
        + f" WHERE run_id = %s AND {OWNED} AND node = %s"
    ),
    "output": (
        "INSERT INTO {s}.run_output (run_id, lines) SELECT %s, %s"
        f" WHERE EXISTS (SELECT 1 FROM {{s}}.runs WHERE run_id = %s AND {OWNED} AND node = %s)"
        " ON CONFLICT (run_id) DO UPDATE SET lines = excluded.lines"
    ),
    "attempt": (
        f"INSERT INTO {{s}}.attempts ({sql.ATTEMPT_COLUMNS}) SELECT %s, %s, %s, %s, %s, %s, %s"
        f" WHERE EXISTS (SELECT 1 FROM {{s}}.runs WHERE run_id = %s AND {OWNED} AND node = %s)"
        " ON CONFLICT (run_id, attempt) DO UPDATE SET started = excluded.started,"
        " ended = excluded.ended, status = excluded.status, error_type = excluded.error_type,"
        " error = excluded.error"
    ),
    # One statement, so the sync fast path is one round trip; NOTIFY fires at commit.
    "enqueue": (
        "WITH request AS (INSERT INTO {s}.runs"
        " (run_id, job, trigger, created, status, args_json, kwargs_json)"
        " VALUES (%s, %s, 'queued', %s, 'queued', %s, %s))"
        " SELECT pg_notify(%s, %s)"
    ),
    "take": (
        "UPDATE {s}.runs AS r SET status = 'claimed', pid = %s, host = %s, node = %s"
        " WHERE r.run_id IN (SELECT run_id FROM {s}.runs WHERE status = 'queued'"
        " ORDER BY created, run_id LIMIT %s FOR UPDATE SKIP LOCKED)"
        " RETURNING r.run_id, r.job, r.args_json, r.kwargs_json, r.created, r.trigger"
    ),
    "register": (
        "INSERT INTO {s}.nodes"
        " (node_id, host, pid, started, last_seen, digest, fingerprints, local_key)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (node_id) DO UPDATE SET"
        " last_seen = excluded.last_seen, digest = excluded.digest,"
        " fingerprints = excluded.fingerprints"
    ),
    "beat": (
        "UPDATE {s}.nodes SET last_seen = %s, digest = %s, fingerprints = %s WHERE node_id = %s"
    ),
    "nodes": (
        "SELECT node_id, host, pid, started, last_seen, digest, fingerprints FROM {s}.nodes"
        " WHERE last_seen >= %s ORDER BY node_id"
    ),
    # Rows another reaper holds are skipped, so each dead node is reaped once.
    "dead_candidates": (
        "SELECT node_id, local_key, pid, last_seen FROM {s}.nodes WHERE node_id <> %s"
        " AND (last_seen < %s OR (local_key = %s AND pid <> %s)) FOR UPDATE SKIP LOCKED"
    ),
    "unfinished_of_nodes": " WHERE node = ANY(%s) AND status IN ('claimed', 'running') FOR UPDATE",
    "begin": (
        "UPDATE {s}.runs SET status = 'running', started = %s"
        " WHERE run_id = %s AND status = 'claimed' AND node = %s"
    ),
    "forget_nodes": "DELETE FROM {s}.nodes WHERE node_id = ANY(%s)",
    "orphans": (
        " WHERE status IN ('claimed', 'running')"
        " AND NOT EXISTS (SELECT 1 FROM {s}.nodes AS n WHERE n.node_id = r.node)"
        " FOR UPDATE SKIP LOCKED"
    ),
    "notify": "SELECT pg_notify(%s, %s)",
}


def aware(value: datetime) -> datetime:
    """``value`` as stored (timestamptz); ValueError when it is naive."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value!r}; the store needs timezone-aware datetimes")
    return value


def must_utc(value: datetime) -> datetime:
    """A timestamptz read back, in UTC."""
    return value.astimezone(timezone.utc)


def check_schema(schema: str) -> str:
    """``schema`` quoted for SQL, or StoreError unless it is a plain identifier."""
    if not _SCHEMA_NAME.match(schema):
        raise StoreError(
            f"invalid PostgreSQL schema name {schema!r}: expected letters, digits and "
            "underscores, not starting with a digit, at most 63 characters"
        )
    return f'"{schema}"'


def channel_name(schema: str) -> str:
    """The NOTIFY channel of a schema's cluster (at most 63 bytes, as PostgreSQL wants)."""
    name = f"qtasks_{schema}"
    if len(name) > 63:
        name = "qtasks_" + hashlib.sha256(schema.encode()).hexdigest()[:32]
    return name


# The kind of notification an operator's command sends (qtasks_cli.store.control_postgres):
# it wakes the nodes' control threads, not their loops.
CONTROL_KIND = "k"


@functools.lru_cache(maxsize=16)
def dialect(schema: str) -> sql.Dialect:
    """The SQL dialect of a schema (sql.py): ``%s``, ``"schema".runs``, timestamptz, jsonb."""
    return sql.Dialect(
        mark="%s",
        prefix=f"{check_schema(schema)}.",
        time_in=aware,
        time_out=must_utc,
        node_column=True,
        lines=Jsonb,
        jsonb=True,
        json_in=Jsonb,
        for_update=" FOR UPDATE",
        # The interval itself, read from the runs_duration index alone (an extract() per row
        # skipped by OFFSET tripled the walk); psycopg gives a timedelta.
        duration="ended - started",
        seconds=_seconds,
        timed_in_counts=True,
    )


def _seconds(value: Any) -> float:
    return float(value.total_seconds())


def statements(schema: str) -> dict[str, str]:
    quoted = check_schema(schema)
    d = dialect(schema)
    found = {name: text.replace("{s}", quoted) for name, text in _SQL.items()}
    found["unfinished_of_nodes"] = sql.unfinished_sql(d) + found["unfinished_of_nodes"]
    found["orphans"] = sql.unfinished_sql(d) + found["orphans"]
    found["insert_run"] = sql.insert_run_sql(d)
    return found


# -- migrations -------------------------------------------------------------------------

_MIGRATE_LOCK = "SELECT pg_advisory_xact_lock(hashtext(%s))"


def _version_table(quoted: str) -> str:
    return f"{quoted}.schema_version"


def _check_version(version: int, location: str, schema: str) -> None:
    known = len(MIGRATIONS)
    if version > known:
        raise StoreError(
            f"{location}: schema {schema!r} was created by a newer qtasks (schema version "
            f"{version}, this qtasks knows up to {known}); upgrade qtasks or use another schema"
        )


def _current(schema: str, location: str) -> Generator[sql.Query, list[Any], bool]:
    """Whether the schema is at this qtasks's version, read without a lock."""
    table = _version_table(check_schema(schema))
    rows = yield "SELECT to_regclass(%s) IS NOT NULL", (table,)
    if rows and rows[0][0]:
        found = yield f"SELECT version FROM {table}", None
        if found and found[0][0] >= len(MIGRATIONS):
            _check_version(found[0][0], location, schema)
            return True
    return False


def _upgrade(schema: str, location: str) -> Generator[sql.Query, list[Any], int]:
    """Inside a transaction: create or migrate the schema; the version it had."""
    quoted = check_schema(schema)
    table = _version_table(quoted)
    # CREATE SCHEMA IF NOT EXISTS alone still races: two creators can both miss it.
    yield _MIGRATE_LOCK, (f"qtasks-migrate:{schema}",)
    yield f"CREATE SCHEMA IF NOT EXISTS {quoted}", None
    yield f"CREATE TABLE IF NOT EXISTS {table} (version integer NOT NULL)", None
    found = yield f"SELECT version FROM {table}", None
    version = int(found[0][0]) if found else 0
    if not found:
        yield f"INSERT INTO {table} (version) VALUES (0)", None
    _check_version(version, location, schema)
    for step in MIGRATIONS[version:]:
        for statement in step:
            yield statement.replace("{s}", quoted), None
    yield f"UPDATE {table} SET version = %s", (len(MIGRATIONS),)
    return version


def _migrated(location: str, schema: str, version: int) -> None:
    if version != len(MIGRATIONS):
        target = len(MIGRATIONS)
        log.info("%s: schema %s migrated from version %d to %d", location, schema, version, target)


async def migrate(conn: _AsyncConn, schema: str, location: str) -> None:
    """Create or migrate the schema; several nodes starting at once take turns."""

    async def fetch(query: str, params: Any) -> list[Any]:
        cur = await conn.execute(query, params)
        return await cur.fetchall() if cur.description is not None else []

    if await sql.drive_async(_current(schema, location), fetch):
        return
    async with conn.transaction():
        version = await sql.drive_async(_upgrade(schema, location), fetch)
    _migrated(location, schema, version)


def migrate_sync(conn: psycopg.Connection[Any], schema: str, location: str) -> None:
    """``migrate`` for the synchronous enqueue path and the operator's commands."""

    def fetch(query: str, params: Any) -> list[Any]:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description is not None else []

    if sql.drive(_current(schema, location), fetch):
        return
    with conn.transaction():
        version = sql.drive(_upgrade(schema, location), fetch)
    _migrated(location, schema, version)
