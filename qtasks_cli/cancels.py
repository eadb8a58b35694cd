"""One event for every run that ends ``cancelled``, however it was cancelled.

A run is cancelled by ``qtasks cancel`` while it runs, while it waits for a free
max_concurrent slot, while it waits behind its job's previous run, before a handed-over
request began, or before any daemon took it (the command then marks it in the store, and a
daemon's control thread reports it at its next look); at a stop; or because a reload removed
its job before it ran. Each path emits the same FINISHED event with status CANCELLED (so the
log says it once, with why, and ``qtasks_runs_total{status="cancelled"}`` counts it), built
here. The executor emits it itself for a run whose body had started (with its attempts and
duration); ``cancelled_event`` is for the runs whose body never started.
"""

from __future__ import annotations

import logging
from datetime import datetime

from qtasks_cli.events import Finished
from qtasks_cli.models import RunStatus, TriggerKind

AT_SHUTDOWN = "cancelled at shutdown"
ABANDONED_AT_SHUTDOWN = "cancelled at shutdown; it had not stopped when the daemon exited"
REMOVED = "the job was removed by a reload before it ran"


def cancelled_event(
    *,
    job: str,
    run_id: str,
    trigger: TriggerKind | None,
    scheduled: datetime | None,
    error: str,
    time: datetime,
) -> Finished:
    """The FINISHED event of a run cancelled before its body started."""
    return Finished(
        time=time,
        job=job,
        run_id=run_id,
        trigger=trigger,
        scheduled=scheduled,
        status=RunStatus.CANCELLED,
        error=error,
        level=logging.WARNING,
    )
