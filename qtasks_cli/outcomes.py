"""The outcome of a run whose body did not run to its end through the executor, as recorded
and as said: its arguments refused as it started, a fault of the daemon's (no thread could
start), a cancel before its body started, or a request for a job the file no longer has; and a run a
dead daemon left behind.
Each builds the history row and the one event that says it; the caller records and emits.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

from qtasks_cli import cancels
from qtasks_cli.errors import QtasksError
from qtasks_cli.events import Event, Finished, Interrupted
from qtasks_cli.models import JobSpec, RunResult, RunStatus, TriggerKind
from qtasks_cli.recovery import never_ran

# The runs' logger: these records keep the name they had (the JSON log's "logger").
log = logging.getLogger("qtasks_cli.runs")


def refused(
    spec: JobSpec,
    run_id: str,
    trigger: TriggerKind,
    scheduled: datetime | None,
    exc: QtasksError,
    now: datetime,
) -> tuple[RunResult, Event]:
    """A run whose arguments were refused as it started: failed, with the reason (its
    secrets hidden); ``now``: aware UTC."""
    result = RunResult(
        job=spec.name,
        run_id=run_id,
        trigger=trigger,
        scheduled=scheduled,
        started=now,
        ended=now,
        attempts=0,
        status=RunStatus.FAILED,
        error_type=type(exc).__name__,
        error=spec.redact(str(exc)),
    )
    return result, _failed(result, now)


def not_run(
    spec: JobSpec,
    run_id: str,
    trigger: TriggerKind,
    scheduled: datetime | None,
    exc: Exception,
    now: datetime,
) -> RunResult:
    """A run the daemon could not carry through (``execute`` raised: a bug of ours, or no
    thread could start): recorded ``failed`` with what stood in the way, never lost; the
    exception is logged with its traceback here."""
    log.error(
        "%s %s: the daemon could not run it: %s: %s",
        spec.name,
        run_id,
        type(exc).__name__,
        exc,
        exc_info=exc,
    )
    return never_ran(
        job=spec.name,
        run_id=run_id,
        trigger=trigger,
        scheduled=scheduled,
        ended=now,
        status=RunStatus.FAILED,
        error=f"the daemon could not run it: {type(exc).__name__}: {exc}",
    )


def never_started(
    job: str,
    run_id: str,
    trigger: TriggerKind,
    scheduled: datetime | None,
    reason: str,
    now: datetime,
) -> tuple[RunResult, Event]:
    """A run cancelled before its body started: ``cancelled`` with ``reason``
    (qtasks_cli.cancels)."""
    result = never_ran(
        job=job,
        run_id=run_id,
        trigger=trigger,
        scheduled=scheduled,
        ended=now,
        status=RunStatus.CANCELLED,
        error=reason,
    )
    event = cancels.cancelled_event(
        job=job, run_id=run_id, trigger=trigger, scheduled=scheduled, error=reason, time=now
    )
    return result, event


def unknown_job(
    job: str, run_id: str, trigger: TriggerKind, path: Path, now: datetime
) -> tuple[RunResult, Event]:
    """A handed-over request for a job the file at ``path`` no longer has: failed at once."""
    result = never_ran(
        job=job,
        run_id=run_id,
        trigger=trigger,
        scheduled=None,
        ended=now,
        status=RunStatus.FAILED,
        error=f"no job named {job!r} in {path}",
        error_type="UnknownJob",
    )
    return result, _failed(result, now)


def interrupted(row: RunResult, now: datetime) -> Event:
    """What is said of a run a dead daemon left behind, as recovery concluded it."""
    return Interrupted(
        time=now,
        job=row.job,
        run_id=row.run_id,
        trigger=row.trigger,
        scheduled=row.scheduled,
        status=RunStatus.INTERRUPTED,
        error=row.error,
        level=logging.WARNING,
    )


def _failed(result: RunResult, now: datetime) -> Event:
    return Finished(
        time=now,
        job=result.job,
        run_id=result.run_id,
        trigger=result.trigger,
        scheduled=result.scheduled,
        status=RunStatus.FAILED,
        error=result.error,
        level=logging.ERROR,
    )
