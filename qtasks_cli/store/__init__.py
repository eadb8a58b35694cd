"""State stores: the factory, run ids and URL redaction; import-light (no sqlite3 here)."""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Any

from qtasks_cli.errors import StoreError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from datetime import timedelta
    from types import ModuleType

    from qtasks_cli.store.base import Store
    from qtasks_cli.store.control import ControlStore

__all__ = ["enqueue_now", "is_url", "new_run_id", "open_control", "open_store", "redact_url"]

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class _RunIds:
    """Time-ordered ids: 12 hex digits of Unix milliseconds, then 8 hex digits.

    The low part starts random in each millisecond and counts up within it, so ids
    made by one process sort in creation order and ids of different processes collide
    only if they draw neighbouring random numbers in the same millisecond.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ms = 0
        self._low = 0

    def next(self) -> str:
        ms = time.time_ns() // 1_000_000
        with self._lock:
            if ms > self._ms:
                # 31 random bits leave room to count up within a busy millisecond.
                low = int.from_bytes(os.urandom(4), "big") >> 1
            else:
                # Same millisecond, or the wall clock stepped back: stay monotonic.
                ms, low = self._ms, self._low + 1
                if low > 0xFFFFFFFF:
                    ms, low = ms + 1, int.from_bytes(os.urandom(4), "big") >> 1
            self._ms, self._low = ms, low
        return f"{ms:012x}{low:08x}"


_run_ids = _RunIds()


def new_run_id() -> str:
    """A short, unique run id (20 hex digits) that sorts by creation time."""
    return _run_ids.next()


def is_url(state: str) -> bool:
    """True when ``state`` names a PostgreSQL database rather than a file."""
    return state.startswith(_POSTGRES_SCHEMES)


def redact_url(url: str) -> str:
    """``url`` without its password (in the user info or a ``password=`` parameter). Read the
    way a connection URI is written, not as ``urllib`` would read it: the user info runs to the
    last ``@`` before the parameters, so a password holding ``#``, ``?``, ``/`` or ``@`` is
    hidden whole (more than libpq would take as the password, never less); never raises (an
    unclosed ``[`` of an IPv6 host is left as it is)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    query_at = rest.find("?", rest.rfind("@") + 1)
    cut = rest.rfind("@", 0, query_at if query_at >= 0 else len(rest))
    if cut >= 0:
        user = rest[:cut].split(":", 1)[0]
        rest = (f"{user}@" if user else "") + rest[cut + 1 :]
    base, mark, query = rest.partition("?")
    if mark:
        pairs = [pair for pair in query.split("&") if pair]
        kept = [pair for pair in pairs if pair.split("=", 1)[0].lower() != "password"]
        query = "&".join(kept)
        rest = base + ("?" + query if query else "")
    return f"{scheme}://{rest}"


def open_store(
    state: str, *, schema: str = "qtasks", node_timeout: timedelta | None = None
) -> Store:
    """The store for ``state`` (a file path or a ``postgresql://`` URL), not opened yet.

    ``schema`` (``settings.schema``) and ``node_timeout`` (``settings.node_timeout``,
    used by ``recover``) matter only for PostgreSQL.
    """
    if is_url(state):
        module = _postgres_module(state)
        options: dict[str, Any] = {"schema": schema}
        if node_timeout is not None:
            options["node_timeout"] = node_timeout
        store: Store = module.PostgresStore(state, **options)
        return store
    from qtasks_cli.store.sqlite import SqliteStore

    return SqliteStore(state)


def enqueue_now(
    state: str,
    job: str,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    schema: str = "qtasks",
) -> str:
    """Synchronously write a pending request for ``job`` to ``state``; return its run id."""
    if is_url(state):
        module = _postgres_module(state)
        run_id: str = module.enqueue_now(state, job, args, kwargs, schema=schema)
        return run_id
    from qtasks_cli import wake
    from qtasks_cli.store import sqlite

    run_id = sqlite.enqueue_now(state, job, args, kwargs)
    wake.send(state)
    return run_id


def _postgres_module(url: str) -> ModuleType:
    import importlib

    name = "qtasks_cli.store.postgres"
    try:
        return importlib.import_module(name)
    except ImportError as exc:  # psycopg is an extra: say how to install it
        raise StoreError(_install_hint(url, exc)) from None


def _install_hint(url: str, exc: ImportError) -> str:
    return (
        f"{redact_url(url)}: the PostgreSQL store needs psycopg, which cannot be imported "
        f"({exc}); install it with: pip install 'qtasks-cli[postgres]'"
    )


def open_control(state: str, *, schema: str = "qtasks") -> ControlStore:
    """The control store for ``state`` (a file path or a ``postgresql://`` URL), opened and
    migrated; StoreError when it cannot be."""
    if is_url(state):
        _postgres_module(state)  # a clear message when psycopg is missing
        from qtasks_cli.store.control_postgres import PostgresControl

        return PostgresControl(state, schema=schema)
    from qtasks_cli.store.control_sqlite import SqliteControl

    return SqliteControl(state)
