"""What the events since the start say about each job (``record``): the live table's and
``status --watch``'s state. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from qtasks_cli.events import Event, Finished, Fired, Retrying, Started
from qtasks_cli.models import RunStatus
from qtasks_cli.text import clean_line

_FAILED = frozenset({RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.INTERRUPTED})


@dataclass(frozen=True, kw_only=True, slots=True)
class EventLine:
    """One line of the events area: an event, a log record or a line a job printed."""

    time: datetime
    level: int
    text: str


@dataclass(slots=True)
class RunProgress:
    """A run that has started and not finished."""

    started: datetime
    attempt: int = 1
    max_attempts: int = 1
    retry_at: datetime | None = None  # while waiting before the next attempt


@dataclass(slots=True)
class JobTally:
    """What the events since the start say about one job; updated by ``record``."""

    successes: int = 0
    failures: int = 0
    last_status: RunStatus | None = None
    last_error_type: str | None = None
    last_ended: datetime | None = None
    last_duration: float | None = None
    runs: dict[str, RunProgress] = field(default_factory=dict)  # started, not finished
    waiting: set[str] = field(default_factory=set)  # fired, not started (the concurrency cap)

    @property
    def failing(self) -> bool:
        return self.last_status in _FAILED


def record(stats: dict[str, JobTally], event: Event) -> bool:
    """Fold one event into the per-job statistics; True if it concerned a job."""
    if event.job is None:
        return False
    job = stats.get(event.job)
    if job is None:
        job = stats[event.job] = JobTally()
    run_id = event.run_id or ""
    if isinstance(event, Fired):
        job.waiting.add(run_id)
    elif isinstance(event, Started):
        job.waiting.discard(run_id)
        job.runs[run_id] = RunProgress(
            started=event.time, attempt=1, max_attempts=event.max_attempts or 1
        )
    elif isinstance(event, Retrying):
        progress = job.runs.get(run_id)
        if progress is not None:
            progress.attempt = event.attempt or progress.attempt + 1
            progress.max_attempts = event.max_attempts or progress.max_attempts
            progress.retry_at = event.time + timedelta(seconds=event.delay or 0.0)
    elif isinstance(event, Finished):
        job.waiting.discard(run_id)
        job.runs.pop(run_id, None)
        status = event.status
        if status is RunStatus.SUCCEEDED:
            job.successes += 1
        elif status in _FAILED:
            job.failures += 1
        job.last_status = status
        job.last_error_type = clean_line(event.error_type) if event.error_type else None
        job.last_ended = event.time
        job.last_duration = event.duration
    return True
