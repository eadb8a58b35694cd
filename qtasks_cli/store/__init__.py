"""State stores: the factory, run ids and URL redaction; import-light (no sqlite3 here)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qtasks_cli.errors import StoreError
from qtasks_cli.store.names import is_url, new_run_id, redact_url

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from datetime import timedelta
    from types import ModuleType

    from qtasks_cli.store.base import Store
    from qtasks_cli.store.control import ControlStore

__all__ = ["enqueue_now", "is_url", "new_run_id", "open_control", "open_store", "redact_url"]


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
