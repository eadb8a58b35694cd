"""Runs as rows and back: the columns, the decoding of a row, the values of each write
(a run, a finish, an attempt, output lines), claims' checks and recovery's rows."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from qtasks_cli.models import Attempt, RunResult, RunStatus, TriggerKind
from qtasks_cli.store.base import Fire, QueuedRun, clip_lines, storable, truncate_traceback
from qtasks_cli.store.sql.dialect import Dialect

# -- runs as rows -----------------------------------------------------------------------

_RUN_COLUMNS = (
    "run_id, job, trigger, scheduled, started, ended, status, attempts, error_type, error,"
    " traceback, result, items, pid, host, created"
)


def run_columns(d: Dialect) -> str:
    """The columns ``row_to_run`` reads, in its order."""
    return _RUN_COLUMNS + (", node" if d.node_column else "")


def node_name(host: str, pid: int) -> str:
    """A SQLite daemon's node: one daemon per file (the flock), so a process is a node."""
    return f"{host}:{pid}"


def row_to_run(d: Dialect, row: Sequence[Any]) -> RunResult:
    """A ``runs`` row read as ``run_columns`` as history shows it."""
    pid, host = row[13], row[14]
    if d.node_column:
        node = row[16]
    else:
        node = None if pid is None or host is None else node_name(host, pid)
    out = d.time_out  # read for every row of history: no call per missing time
    scheduled, started, ended, created = row[3], row[4], row[5], row[15]
    return RunResult(
        run_id=row[0],
        job=row[1],
        trigger=TriggerKind(row[2]),
        scheduled=None if scheduled is None else out(scheduled),
        started=None if started is None else out(started),
        ended=None if ended is None else out(ended),
        status=RunStatus(row[6]),
        attempts=row[7],
        error_type=row[8],
        error=row[9],
        traceback=row[10],
        result_preview=row[11],
        items=row[12],
        pid=pid,
        host=host,
        created=None if created is None else out(created),
        node=node,
    )


def insert_run_sql(d: Dialect) -> str:
    """The insert of a whole run, for ``run_values``."""
    node = ", node" if d.node_column else ""
    count = 19 if d.node_column else 18
    return (
        f"INSERT INTO {d.table('runs')} (run_id, job, trigger, scheduled, created, started,"
        " ended, status, attempts, error_type, error, traceback, result, items, pid, host"
        f"{node}, args_json, kwargs_json) VALUES ({d.marks(count)})"
    )


def run_values(
    d: Dialect,
    result: RunResult,
    *,
    created: datetime,
    pid: int,
    host: str,
    node: str,
    args: Any,
    kwargs: Any,
) -> tuple[Any, ...]:
    """The values of ``insert_run_sql`` for a run that has no scheduled time (manual)."""
    owner: tuple[Any, ...] = (pid, host, node) if d.node_column else (pid, host)
    return (
        result.run_id,
        result.job,
        result.trigger.value,
        d.opt_in(result.scheduled),
        d.time_in(created),
        d.opt_in(result.started),
        d.opt_in(result.ended),
        result.status.value,
        result.attempts,
        storable(result.error_type),
        storable(result.error),
        truncate_traceback(result.traceback),
        storable(result.result_preview),
        result.items,
        *owner,
        None if args is None else json.dumps(args, default=repr),
        None if kwargs is None else json.dumps(kwargs, default=repr),
    )


# -- the values of a finish -------------------------------------------------------------

FINISH_SET = (
    "status = {m}, started = coalesce({m}, started), ended = {m}, attempts = {m},"
    " error_type = {m}, error = {m}, traceback = {m}, result = {m}, items = {m}"
)


def finish_set(d: Dialect) -> str:
    """The SET clause of a finish, for ``finish_values``."""
    return FINISH_SET.format(m=d.mark)


def finish_values(d: Dialect, result: RunResult, *where: Any) -> tuple[Any, ...]:
    """A run's outcome, in the order of ``finish_set``, then ``where`` (the WHERE clause's
    values: run id, owner)."""
    started, ended = result.started, result.ended  # written after every run: no calls spared
    return (
        result.status.value,
        None if started is None else d.time_in(started),
        None if ended is None else d.time_in(ended),
        result.attempts,
        storable(result.error_type),
        storable(result.error),
        truncate_traceback(result.traceback),
        storable(result.result_preview),
        result.items,
        *where,
    )


ATTEMPT_COLUMNS = "run_id, attempt, started, ended, status, error_type, error"


def attempt_values(d: Dialect, run_id: str, attempt: Attempt, *more: Any) -> tuple[Any, ...]:
    """One attempt's row, in the order of ``ATTEMPT_COLUMNS``, then ``more`` (the values of
    a fence, where the store has one)."""
    ended = attempt.ended
    return (
        run_id,
        attempt.number,
        d.time_in(attempt.started),
        None if ended is None else d.time_in(ended),
        attempt.status.value,
        storable(attempt.error_type),
        storable(attempt.error),
        *more,
    )


def output_lines(d: Dialect, lines: Sequence[str]) -> Any:
    """A run's output as the store keeps it: the last lines, clipped."""
    return d.lines(clip_lines(lines))


# -- claims -----------------------------------------------------------------------------


def check_fires(d: Dialect, fires: Sequence[Fire]) -> list[Any]:
    """Each fire's scheduled time as stored; ValueError (for the first bad fire) unless
    every fire is claimed, skipped or missed at an aware time."""
    stored = []
    for fire in fires:
        if fire.status not in (RunStatus.CLAIMED, RunStatus.SKIPPED, RunStatus.MISSED):
            raise ValueError(
                f"fire {fire.run_id!r} of {fire.job!r} has status {fire.status.value!r}; "
                "expected claimed, skipped or missed"
            )
        stored.append(d.time_in(fire.scheduled))
    return stored


def latest_fires(fires: Iterable[Fire]) -> dict[str, tuple[datetime, str]]:
    """Per job, the latest scheduled time among ``fires`` and its schedule key (the later
    of equal times wins)."""
    latest: dict[str, tuple[datetime, str]] = {}
    for fire in fires:
        if fire.job not in latest or fire.scheduled >= latest[fire.job][0]:
            latest[fire.job] = (fire.scheduled, fire.schedule_key)
    return latest


def attempt_from_row(d: Dialect, row: Sequence[Any]) -> Attempt:
    number, started, ended, status, error_type, error = row
    return Attempt(
        number=number,
        started=d.time_out(started),
        ended=d.opt_out(ended),
        status=RunStatus(status),
        error_type=error_type,
        error=error,
    )


def queued_run(d: Dialect, row: Sequence[Any]) -> QueuedRun:
    """A taken request from (run_id, job, args_json, kwargs_json, created, trigger)."""
    run_id, job, args_json, kwargs_json, created, trigger = row
    return QueuedRun(
        run_id=run_id,
        job=job,
        args=None if args_json is None else tuple(json.loads(args_json)),
        kwargs=None if kwargs_json is None else json.loads(kwargs_json),
        enqueued=d.time_out(created),
        trigger=TriggerKind(trigger),
    )
