"""Reaching a PostgreSQL server: the connection options qtasks adds to a URL, messages with the
URL's password taken out (a server or driver message may quote it), and the synchronous fast
path of ``enqueue()`` over a connection kept per URL and schema."""

from __future__ import annotations

import contextlib
import functools
import os
import socket
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from qtasks_cli.clock import utcnow as _utc_now
from qtasks_cli.errors import StoreError
from qtasks_cli.store import sql
from qtasks_cli.store.base import encode_request
from qtasks_cli.store.names import new_run_id, redact_url
from qtasks_cli.store.postgres_schema import (
    DEFAULT_SCHEMA,
    aware,
    channel_name,
    migrate_sync,
    statements,
)

CONNECT_TIMEOUT = 10  # seconds, unless the URL says otherwise


def connect_options(url: str) -> dict[str, Any]:
    """Keyword arguments for psycopg's connect: autocommit, UTC, a timeout and a name."""
    try:
        given = conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise StoreError(
            f"{redact_url(url)}: not a valid PostgreSQL URL: {scrub(str(exc), url)}"
        ) from None
    options: dict[str, Any] = {"autocommit": True}
    if "connect_timeout" not in given:
        options["connect_timeout"] = CONNECT_TIMEOUT
    if "application_name" not in given:
        options["application_name"] = "qtasks"
    if "options" not in given:
        options["options"] = "-c TimeZone=UTC"
    return options


def _password(url: str) -> str | None:
    with contextlib.suppress(psycopg.Error):
        value = conninfo_to_dict(url).get("password")
        return str(value) if value else None
    return None


def _raw_passwords(url: str) -> set[str]:
    """The password of ``url`` as written in its user info, and its pieces: a URL that does
    not parse (a raw ``%`` or ``@`` in the password) is quoted by the driver in parts."""
    from urllib.parse import unquote

    authority = url.split("://", 1)[-1].split("/", 1)[0]
    userinfo = authority.rpartition("@")[0]
    raw = userinfo.partition(":")[2]
    found = {raw, unquote(raw), *raw.split("@")} if raw else set()
    return {piece for piece in found if len(piece) >= 3}


def scrub(text: str, url: str) -> str:
    """``text`` without the password of ``url`` (a server or driver message could quote it,
    whole or in pieces when the URL does not parse)."""
    text = text.strip()
    secrets_ = {p for p in (_password(url),) if p} | _raw_passwords(url)
    for secret in sorted(secrets_, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


# -- the synchronous fast path for enqueue() -----------------------------------------

_ENQUEUER = f"enqueue:{socket.gethostname()}:{os.getpid()}"


def _connect_sync(url: str, schema: str) -> psycopg.Connection[Any]:
    location = redact_url(url)
    try:
        conn = psycopg.Connection.connect(url, **connect_options(url))
    except psycopg.Error as exc:
        raise StoreError(f"{location}: cannot connect: {scrub(str(exc), url)}") from None
    try:
        migrate_sync(conn, schema, location)
        # Like the SQLite store's synchronous=NORMAL: a crash of the server (not of
        # this process) may lose the last fraction of a second of requests, and in
        # exchange enqueue_now does not wait for a disk flush (about 6x faster).
        conn.execute("SET synchronous_commit = off")
    except psycopg.Error as exc:
        conn.close()
        raise StoreError(
            f"{location}: cannot prepare schema {schema!r}: {scrub(str(exc), url)}"
        ) from None
    except BaseException:
        conn.close()
        raise
    return conn


def _usable(conn: psycopg.Connection[Any]) -> bool:
    return not conn.closed and not conn.broken


_cache: sql.ConnectionCache[psycopg.Connection[Any]] = sql.ConnectionCache(
    close=psycopg.Connection.close, usable=_usable
)


@functools.lru_cache(maxsize=16)
def _enqueue_statement(schema: str) -> tuple[str, str]:
    return statements(schema)["enqueue"], channel_name(schema)


def enqueue_now(
    url: str,
    job: str,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    schema: str = DEFAULT_SCHEMA,
    now: datetime | None = None,
) -> str:
    """Write a pending request for ``job`` and wake the nodes; return its run id.

    Synchronous and fast (one connection per URL and schema is kept open, and the
    statement is prepared after a few calls), for the Python API.
    """
    args_json, kwargs_json = encode_request(job, args, kwargs or {})
    created = aware(now) if now is not None else _utc_now()
    sql, channel = _enqueue_statement(schema)
    run_id = new_run_id()
    params = (run_id, job, created, args_json, kwargs_json, channel, f"w:{_ENQUEUER}")
    conn, lock = _cache.get((url, schema), functools.partial(_connect_sync, url, schema))
    try:
        with lock:
            conn.execute(sql, params)
    except psycopg.Error as exc:
        raise StoreError(
            f"{redact_url(url)}: cannot enqueue {job!r}: {scrub(str(exc), url)}"
        ) from None
    return run_id


def close_cached_connections() -> None:
    """Close the connections ``enqueue_now`` keeps open (tests; process exit)."""
    _cache.close_all()
