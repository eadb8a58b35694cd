"""The one interface every state store implements (SQLite now, PostgreSQL later)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from qtasks_cli.models import Attempt, RunResult, RunStatus, TriggerKind


@dataclass(frozen=True, kw_only=True, slots=True)
class Fire:
    """A (job, scheduled time) pair the daemon wants to record; the pair is unique forever."""

    job: str
    scheduled: datetime  # aware UTC
    trigger: TriggerKind
    run_id: str
    schedule_key: str  # the schedule's canonical text, stored with the job's last fire
    status: RunStatus = RunStatus.CLAIMED  # or SKIPPED / MISSED, recorded as finished at once
    error: str | None = None  # why it was skipped or missed


@dataclass(frozen=True, kw_only=True, slots=True)
class QueuedRun:
    """A run handed over by ``trigger --enqueue`` or ``enqueue()``, taken by one daemon."""

    run_id: str
    job: str
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    enqueued: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class RunRow:
    """One run as history shows it."""

    run_id: str
    job: str
    trigger: TriggerKind
    scheduled: datetime | None
    started: datetime | None
    ended: datetime | None
    status: RunStatus
    attempts: int = 0
    error_type: str | None = None
    error: str | None = None
    traceback: str | None = None
    result: str | None = None  # a short JSON or repr preview
    items: int | None = None
    pid: int | None = None
    host: str | None = None
    created: datetime | None = None

    @property
    def duration(self) -> float | None:
        if self.started is None or self.ended is None:
            return None
        return (self.ended - self.started).total_seconds()


@dataclass(frozen=True, kw_only=True, slots=True)
class JobStats:
    job: str
    runs: int
    succeeded: int
    failed: int  # failed, timed out, interrupted
    p50: float | None  # seconds, over finished runs that started
    p95: float | None
    last_success: datetime | None
    last_failure: datetime | None
    extra: Mapping[str, int] = field(default_factory=dict)  # counts per other status

    @property
    def success_rate(self) -> float | None:
        done = self.succeeded + self.failed
        return None if done == 0 else self.succeeded / done


class Store(Protocol):
    """History, last fires and queued requests; every method is safe to await from the loop.

    Writes that do not decide anything (``start``, ``finish``) may be buffered and
    written in batches; ``flush`` writes them now and reads always see them.
    """

    location: str  # for messages: a path, or a URL without its password

    async def open(self) -> None:
        """Create or migrate the schema."""

    async def close(self) -> None:
        """Flush buffered writes and release everything."""

    async def lock_daemon(self) -> None:
        """Become the daemon of this store, or raise StoreError naming the pid holding it."""

    async def recover(self, now: datetime) -> list[RunRow]:
        """Mark runs left in progress by a dead daemon ``interrupted``; give back claimed but
        unstarted queued requests; return the rows marked interrupted."""

    async def last_fired(self) -> dict[str, tuple[datetime, str]]:
        """Per job, the last scheduled time recorded and the schedule key it was recorded with."""

    async def claim(self, fires: Sequence[Fire]) -> list[bool]:
        """In one transaction, insert each fire under the unique (job, scheduled) key and
        advance the job's last fire; True for each fire this call inserted."""

    async def add_run(self, result: RunResult, *, args: Any = None, kwargs: Any = None) -> None:
        """Record a run that has no scheduled time (manual), usually RUNNING at first."""

    async def start(self, run_id: str, started: datetime) -> None:
        """The run has started (status RUNNING, pid and host set)."""

    async def finish(self, result: RunResult) -> None:
        """Record the final outcome of a run, with its attempts (``result.attempt_log``)."""

    async def flush(self) -> None:
        """Write buffered writes now."""

    async def enqueue(
        self, job: str, args: Sequence[Any], kwargs: Mapping[str, Any], now: datetime
    ) -> str:
        """Write a pending request; return its run id."""

    async def take_queued(self, now: datetime, limit: int = 100) -> list[QueuedRun]:
        """Atomically take up to ``limit`` pending requests, oldest first (status CLAIMED)."""

    async def changed(self) -> bool:
        """Cheaply tell whether anyone else wrote since the last call."""

    async def get_run(self, run_id: str) -> RunRow | None: ...

    async def history(
        self, job: str | None = None, *, limit: int = 50, status: RunStatus | None = None
    ) -> list[RunRow]:
        """Newest first."""

    async def attempts(self, run_id: str) -> list[Attempt]: ...

    async def stats(self, job: str | None = None) -> list[JobStats]: ...

    async def prune(self, *, keep_runs: int | None, keep_days: float | None, now: datetime) -> int:
        """Delete finished runs beyond the retention; return how many."""
