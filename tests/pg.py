"""Where the PostgreSQL server for the tests is, and throwaway schemas on it.

``QTASKS_TEST_POSTGRES`` names the server (a URL); without it the local default is
used if it answers within a second. When no server answers, PostgreSQL tests are
skipped with the reason, except in CI (``CI`` set and ``QTASKS_TEST_POSTGRES_OPTIONAL``
not): there they fail, so a missing server is never mistaken for a pass.
"""

from __future__ import annotations

import functools
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


@functools.cache
def _find_server() -> tuple[str | None, str]:
    """(url, "") when a server answers, else (None, why not)."""
    try:
        import psycopg
    except ImportError as exc:
        return None, f"psycopg cannot be imported ({exc})"
    given = os.environ.get("QTASKS_TEST_POSTGRES")
    url = given or DEFAULT_URL
    try:
        with psycopg.connect(url, connect_timeout=5 if given else 1, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        source = "QTASKS_TEST_POSTGRES" if given else "the default URL"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        return None, f"{source} ({redact(url)}) does not answer: {first_line}"
    return url, ""


def redact(url: str) -> str:
    from qtasks_cli.store import redact_url

    return redact_url(url)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def postgres_url() -> str:
    """The test server's URL; skips the test when there is none (fails in CI)."""
    url, problem = _find_server()
    if url is not None:
        return url
    if _in_ci() and not os.environ.get("QTASKS_TEST_POSTGRES_OPTIONAL"):
        pytest.fail(
            f"PostgreSQL tests need a server and CI is set: {problem}. Start one, point "
            "QTASKS_TEST_POSTGRES at it, or set QTASKS_TEST_POSTGRES_OPTIONAL=1 to skip",
            pytrace=False,
        )
    pytest.skip(f"no PostgreSQL server: {problem}; set QTASKS_TEST_POSTGRES to a URL")


def new_schema_name() -> str:
    return f"qt_test_{os.getpid()}_{secrets.token_hex(4)}"


def drop_schema(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url, connect_timeout=5, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextmanager
def fresh_schema(url: str) -> Iterator[str]:
    """A schema name nobody uses; the schema (if a store created it) is dropped after."""
    schema = new_schema_name()
    try:
        yield schema
    finally:
        from qtasks_cli.store.postgres import close_cached_connections

        close_cached_connections()
        drop_schema(url, schema)
