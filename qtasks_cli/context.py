"""What a running job can learn about its own run: ``qtasks_cli.current_run()``.

Like Celery's ``self.request``: a job that writes a side effect can tag it with its run id,
so its effects can be matched with ``qtasks history`` (the crash tests do exactly that).
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class RunInfo:
    """The run a job body belongs to."""

    job: str
    run_id: str
    trigger: str  # "schedule", "catch_up", "queued", "manual", "startup"
    scheduled: datetime | None  # aware UTC; None for manual and handed-over runs


RUN_VAR: ContextVar[RunInfo | None] = ContextVar("qtasks_current_run", default=None)


def current_run() -> RunInfo | None:
    """The run whose body calls this (async, thread or generator job), else None.

    Not available inside ``isolation: process`` jobs, which run in another process."""
    return RUN_VAR.get()
