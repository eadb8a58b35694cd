"""What recovery concludes about the runs a dead daemon left unfinished: pure rules, shared by
both stores (their SQL is ``store/sql/recovery.py``) and quoted by the README ("Exactly once").

A ``claimed`` fire may have started (claims are written ahead of the instant), so it is
interrupted and never fired again; a handed-over request still ``claimed`` was never begun, so
it goes back to the queue; a ``running`` row is interrupted; a run an operator asked to cancel
is cancelled.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from qtasks_cli.models import RunResult, RunStatus, TriggerKind

# What a recovered row's error says; tests and the README quote these.
IN_PROGRESS = "daemon stopped while the run was in progress"
MAY_HAVE_RUN = (
    "daemon stopped after claiming this fire, at about its start; the run may have started "
    "(a claim is written before the instant, the start mark after it)"
)


class Verdict(enum.Enum):
    """What recovery does with one unfinished row a dead daemon left."""

    INTERRUPT_RUNNING = "interrupt_running"  # it was running: interrupted
    INTERRUPT_CLAIMED = "interrupt_claimed"  # claimed fire: may have run, interrupted
    REQUEUE = "requeue"  # a request taken but never begun: offer it again


def verdict(status: str, trigger: str) -> Verdict:
    """Recovery's rule for one ``claimed`` or ``running`` row of a dead owner.

    A request (trigger ``queued`` or ``rerun``) is begun durably before its body runs, so
    while it is still ``claimed`` it has not run: it goes back to the queue. Every other
    claim may have started (claims are written ahead of the instant), so it is interrupted,
    never re-fired.
    """
    if status == RunStatus.RUNNING.value:
        return Verdict.INTERRUPT_RUNNING
    if trigger in (TriggerKind.QUEUED.value, TriggerKind.RERUN.value):
        return Verdict.REQUEUE
    return Verdict.INTERRUPT_CLAIMED


@dataclass(frozen=True, kw_only=True, slots=True)
class Unfinished:
    """One ``claimed`` or ``running`` row a store found for recovery."""

    run_id: str
    job: str
    status: str
    trigger: str
    args_json: str | None
    kwargs_json: str | None
    note: str = ""  # appended to the error in brackets (when, which node)
    still_running: bool = False  # a `qtasks trigger` process on this host still runs it
    cancel_by: str | None = None  # a ``qtasks cancel`` of it no daemon had settled: who


@dataclass(frozen=True, kw_only=True, slots=True)
class Conclusion:
    """What recovery writes, in one transaction: requests given back, runs interrupted
    (run id, error), re-runs (new run id, job, args_json, kwargs_json) and runs cancelled
    (run id, error): an operator asked to stop them and their daemon died first, so they
    are neither re-run nor given back (the request's outcome becomes UNREPORTED, for a
    daemon to report, qtasks_cli.cancels)."""

    requeue: list[str]
    interrupt: list[tuple[str, str]]
    reruns: list[tuple[str, str, str | None, str | None]]
    cancel: list[tuple[str, str]] = dataclasses.field(default_factory=list)


def conclude(
    rows: Sequence[Unfinished], rerun_jobs: Collection[str], new_id: Callable[[], str]
) -> Conclusion:
    """Recovery's decisions for unfinished rows, by ``verdict``; pure, shared by the stores."""
    requeue: list[str] = []
    interrupt: list[tuple[str, str]] = []
    reruns: list[tuple[str, str, str | None, str | None]] = []
    cancel: list[tuple[str, str]] = []
    for row in rows:
        if row.still_running and row.status == RunStatus.RUNNING.value:
            continue
        decided = verdict(row.status, row.trigger)
        if row.cancel_by is not None:  # asked to stop, then its daemon died: stopped
            why = {
                Verdict.INTERRUPT_RUNNING: "while it ran",
                Verdict.INTERRUPT_CLAIMED: "at about its start",  # see MAY_HAVE_RUN
                Verdict.REQUEUE: "before it began",
            }[decided]
            note = f" ({row.note})" if row.note else ""
            cancel.append(
                (row.run_id, f"cancelled by {row.cancel_by}; its daemon stopped {why}{note}")
            )
            continue
        if decided is Verdict.REQUEUE:
            requeue.append(row.run_id)
            continue
        error = IN_PROGRESS if decided is Verdict.INTERRUPT_RUNNING else MAY_HAVE_RUN
        if row.note:
            error += f" ({row.note})"
        if row.job in rerun_jobs and row.trigger == TriggerKind.RERUN.value:
            error += "; not re-run again: it was itself a re-run (retry_interrupted re-runs once)"
        elif row.job in rerun_jobs:
            again = new_id()
            reruns.append((again, row.job, row.args_json, row.kwargs_json))
            error += rerun_note(again)
        interrupt.append((row.run_id, error))
    return Conclusion(requeue=requeue, interrupt=interrupt, reruns=reruns, cancel=cancel)


def never_ran(
    *,
    job: str,
    run_id: str,
    trigger: TriggerKind,
    scheduled: datetime | None,
    ended: datetime,
    status: RunStatus,
    error: str,
    error_type: str | None = None,
) -> RunResult:
    """The outcome of a run whose body never started (skipped, missed, cancelled before it
    began, a request for a job the file does not have): no start time, no attempts;
    ``ended`` is aware UTC."""
    return RunResult(
        job=job,
        run_id=run_id,
        trigger=trigger,
        scheduled=scheduled,
        started=None,
        ended=ended,
        attempts=0,
        status=status,
        error=error,
        error_type=error_type,
    )


def rerun_note(run_id: str) -> str:
    """The text appended to an interrupted run's error when ``retry_interrupted`` re-runs it."""
    return f"; re-run as {run_id} (retry_interrupted)"
