"""Recovery's SQL: the unfinished rows of a dead daemon, read for ``recovery.conclude``, and
the writes of what it concluded; the same in both stores."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from qtasks_cli.models import TriggerKind
from qtasks_cli.recovery import Conclusion, Unfinished
from qtasks_cli.store.base import UNREPORTED
from qtasks_cli.store.fence import cancel_by
from qtasks_cli.store.sql.dialect import Dialect


def unfinished_sql(d: Dialect) -> str:
    """The columns of ``unfinished`` over ``runs AS r``, up to FROM and its table."""
    node = "node" if d.node_column else "NULL"
    return (
        f"SELECT run_id, job, status, trigger, pid, host, args_json, kwargs_json, {node},"
        f" {cancel_by(d.prefix)} FROM {d.table('runs')} AS r"
    )


def unfinished(
    rows: Iterable[Sequence[Any]],
    *,
    note: Callable[[str, str | None], str],
    runs_elsewhere: Callable[[int | None, str | None], bool],
) -> list[Unfinished]:
    """Rows of ``unfinished_sql`` for ``recovery.conclude``; ``note`` is given each row's
    status and node, ``runs_elsewhere`` its pid and host (for manual runs only)."""
    return [
        Unfinished(
            run_id=run_id,
            job=job,
            status=status,
            trigger=trigger,
            args_json=args_json,
            kwargs_json=kwargs_json,
            note=note(status, node),
            still_running=trigger == TriggerKind.MANUAL.value and runs_elsewhere(pid, host),
            cancel_by=by,
        )
        for run_id, job, status, trigger, pid, host, args_json, kwargs_json, node, by in rows
    ]


def rerun_sql(d: Dialect) -> str:
    """A re-run of an interrupted run: a new request with the same arguments."""
    return (
        f"INSERT INTO {d.table('runs')}"
        " (run_id, job, trigger, created, status, args_json, kwargs_json)"
        f" VALUES ({d.mark}, {d.mark}, 'rerun', {d.mark}, 'queued', {d.mark}, {d.mark})"
    )


def conclude_sql(d: Dialect, status: str) -> str:
    """Conclude one run as ``status`` (interrupted, cancelled): ended, error, run id."""
    return (
        f"UPDATE {d.table('runs')} SET status = '{status}', ended = {d.mark}, error = {d.mark}"
        f" WHERE run_id = {d.mark}"
    )


def verdict_writes(
    d: Dialect, done: Conclusion, now: datetime
) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """The writes of recovery's decisions at ``now``, each a statement and its rows (for
    ``executemany``), in one transaction with the read: requests given back, runs
    interrupted, re-runs, and runs cancelled with their requests left for a daemon's
    control thread to report (qtasks_cli.cancels). Empty batches are left out."""
    at = d.time_in(now)
    node = ", node = NULL" if d.node_column else ""
    batches: list[tuple[str, list[tuple[Any, ...]]]] = [
        (
            f"UPDATE {d.table('runs')} SET status = 'queued', pid = NULL, host = NULL{node}"
            f" WHERE run_id = {d.mark}",
            [(run_id,) for run_id in done.requeue],
        ),
        (conclude_sql(d, "interrupted"), [(at, error, run_id) for run_id, error in done.interrupt]),
        (rerun_sql(d), [(again, job, at, a, k) for again, job, a, k in done.reruns]),
        (conclude_sql(d, "cancelled"), [(at, error, run_id) for run_id, error in done.cancel]),
        (
            f"UPDATE {d.table('cancel_requests')} SET outcome = '{UNREPORTED}'"
            f" WHERE run_id = {d.mark}",
            [(run_id,) for run_id, _ in done.cancel],
        ),
    ]
    return [(statement, rows) for statement, rows in batches if rows]
