"""Frozen value types shared by every module; no I/O here."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from qtasks_cli.errors import Problem


class _StrEnum(str, enum.Enum):
    def __str__(self) -> str:
        return str(self.value)


class Overlap(_StrEnum):
    """What a fire does while the same job still runs."""

    SKIP = "skip"
    QUEUE = "queue"
    ALLOW = "allow"


class CatchUp(_StrEnum):
    """What happens to fires missed while the daemon was down or late."""

    NONE = "none"
    LATEST = "latest"
    ALL = "all"


class Isolation(_StrEnum):
    INLINE = "inline"
    PROCESS = "process"


class TriggerKind(_StrEnum):
    SCHEDULE = "schedule"
    CATCH_UP = "catch_up"
    STARTUP = "startup"
    MANUAL = "manual"
    QUEUED = "queued"
    RERUN = "rerun"  # retry_interrupted's re-run of an interrupted run; handed over like queued


class RunStatus(_StrEnum):
    QUEUED = "queued"  # handed over, waiting for a daemon
    CLAIMED = "claimed"  # claimed by a daemon, not started yet
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    MISSED = "missed"
    INTERRUPTED = "interrupted"

    @property
    def finished(self) -> bool:
        return self not in (RunStatus.QUEUED, RunStatus.CLAIMED, RunStatus.RUNNING)

    @property
    def ok(self) -> bool:
        return self in (RunStatus.SUCCEEDED, RunStatus.SKIPPED)


class Schedule(Protocol):
    """A compiled schedule (see ``qtasks_cli.schedule``): pure, never reads the clock."""

    @property
    def startup(self) -> bool:
        """True when the schedule also fires once each time the daemon starts."""

    @property
    def key(self) -> str:
        """A canonical text; a different key means the schedule changed."""

    def next_after(self, t: datetime) -> datetime | None:
        """The first fire strictly after aware ``t``, as an aware UTC datetime, or None."""

    def describe(self) -> str:
        """The schedule in words, such as ``at 23:59 every day``."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    """``retries`` retries after the first failed attempt; ``on`` empty means any Exception."""

    retries: int = 0
    on: tuple[str, ...] = ()
    delay: timedelta = timedelta(seconds=1)
    backoff: float = 2.0
    max_delay: timedelta = timedelta(minutes=5)
    jitter: timedelta = timedelta(0)

    @property
    def attempts(self) -> int:
        return self.retries + 1

    def base_delay(self, retry_number: int) -> float:
        """Seconds before retry ``retry_number`` (1-based), without jitter."""
        delay, cap = self.delay.total_seconds(), self.max_delay.total_seconds()
        if delay <= 0:
            return 0.0
        try:
            return min(delay * self.backoff ** (retry_number - 1), cap)
        except OverflowError:  # backoff ** n past float range: long since capped
            return cap


@dataclass(frozen=True, kw_only=True, slots=True)
class JobSpec:
    """One job as the YAML file defines it, validated."""

    name: str
    entrypoint: str
    schedule: Schedule | None = None
    schedule_text: str = ""  # as written, for listings
    timezone: str = "UTC"
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    retry: RetryPolicy = RetryPolicy()
    timeout: timedelta | None = None
    overlap: Overlap = Overlap.SKIP
    catch_up: CatchUp = CatchUp.LATEST
    misfire_grace: timedelta = timedelta(hours=1)
    generate_handler: str | None = None
    echo: bool = False
    on_failure: str | None = None
    on_success: str | None = None
    enabled: bool = True
    description: str = ""
    isolation: Isolation = Isolation.INLINE
    kill_grace: timedelta = timedelta(seconds=5)
    retry_interrupted: bool = False
    # (secret value, placeholder) pairs from ${NAME} interpolation: shown as the placeholder.
    secrets: tuple[tuple[str, str], ...] = ()
    # args and kwargs as written, ${NAME} kept (None: same as args/kwargs), and the values the
    # job file's ${NAME} placeholders had when it was read; see qtasks_cli.request.
    raw_args: tuple[Any, ...] | None = None
    raw_kwargs: Mapping[str, Any] | None = None
    variables: Mapping[str, str] = field(default_factory=dict)
    line: int = 0  # where the job is defined, for messages
    # digests.fingerprint's value, noted the first time (off the loop, as the file is read).
    _fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)

    def redact(self, text: str) -> str:
        """``text`` with every interpolated secret value replaced by its ``${NAME}``, in every
        spelling it can take (repr, ascii, bytes and JSON escapes; see ``qtasks_cli.redaction``):
        this job's, and every other job's of the loaded files (a job may read another's
        secret from the environment, and what it stores must not hold it either)."""
        if not text:
            return text
        from qtasks_cli.redaction import redact, redact_known

        return redact_known(redact(text, self.secrets) if self.secrets else text)


@dataclass(frozen=True, kw_only=True, slots=True)
class Settings:
    path: tuple[Path, ...] = ()
    state: str = ".qtasks/state.db"  # a path (relative to the job file) or a postgresql:// URL
    timezone: str = "UTC"
    max_concurrent: int = 16
    shutdown_grace: timedelta = timedelta(seconds=30)
    keep_runs: int | None = 1000
    keep_days: float | None = None
    max_catch_up: int = 100
    node_timeout: timedelta = timedelta(seconds=30)
    schema: str = "qtasks"
    metrics: tuple[str, int] | None = None  # (host, port) of the Prometheus endpoint; off


@dataclass(frozen=True, kw_only=True, slots=True)
class Config:
    """A whole job file: where it is, its settings and its jobs in file order."""

    path: Path
    settings: Settings
    jobs: Mapping[str, JobSpec]
    # Works out ``digest`` when first asked (digests.config_digest): 0.09 s for 10,000 jobs
    # that ``validate`` never needs and the daemon needs after its start, in a thread.
    digest_of: Callable[[], str] | None = field(default=None, repr=False, compare=False)
    warnings: tuple[Problem, ...] = ()  # what `validate` points out without refusing
    zone_source: str = ""  # where settings.timezone came from, for `list`
    # Where each settings key's value is written ("settings.metrics" -> (file, line, column)),
    # for errors found once the file is in use (a metrics port another program holds).
    where: Mapping[str, tuple[str, int, int]] = field(default_factory=dict)

    _digest: str | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def digest(self) -> str:
        """Hash of the definitions as written (digests.config_digest): no variable values;
        "" for a Config made without ``digest_of``."""
        found = self._digest
        if found is None:
            found = self.digest_of() if self.digest_of is not None else ""
            object.__setattr__(self, "_digest", found)
        return found

    def problem(self, key: str, message: str) -> Problem:
        """A located problem with the value of ``key`` (the file's top when unknown)."""
        file, line, column = self.where.get(key, (str(self.path), 1, 1))
        return Problem(file=file, line=line, column=column, key=key, message=message)


@dataclass(frozen=True, kw_only=True, slots=True)
class Attempt:
    """One attempt of a run."""

    number: int  # 1-based
    started: datetime
    ended: datetime | None
    status: RunStatus  # SUCCEEDED, FAILED, TIMED_OUT or CANCELLED
    error_type: str | None = None
    error: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class RunResult:
    """One run: its outcome as the executor made it (what hooks receive and what the store
    records), or as the store read it back (what history shows).

    Times are aware UTC. ``result`` is the value the job returned, in memory only: a run read
    back from the store has ``result`` None, and ``result_preview``, ``pid``, ``host``,
    ``created`` (when the run was claimed or enqueued) and ``node`` (the node that claimed or
    took it) from its row; ``attempt_log`` and ``output`` are written, not read back."""

    job: str
    run_id: str
    trigger: TriggerKind
    scheduled: datetime | None
    started: datetime | None
    ended: datetime | None
    attempts: int = 0
    status: RunStatus
    error_type: str | None = None
    error: str | None = None
    traceback: str | None = None
    result: Any = None
    result_preview: str | None = None  # short JSON or repr, secrets redacted
    items: int | None = None
    attempt_log: tuple[Attempt, ...] = ()
    # The last lines the run printed (qtasks_cli.output), secrets redacted: recorded with
    # its end, in the same transaction.
    output: tuple[str, ...] = ()
    pid: int | None = None
    host: str | None = None
    created: datetime | None = None
    node: str | None = None

    @property
    def duration(self) -> float | None:
        if self.started is None or self.ended is None:
            return None
        return (self.ended - self.started).total_seconds()


@dataclass(frozen=True, kw_only=True, slots=True)
class JobView:
    """What the daemon knows of one job at a moment, for displays."""

    name: str
    schedule: str  # in words
    enabled: bool
    next_fire: datetime | None
    running: int  # runs whose body runs (or is about to start: it has its slot)
    pending: int  # runs queued behind the job's own previous run (overlap, catch-up)
    max_attempts: int
    paused: bool = False  # by ``qtasks pause``: its fires are recorded, not run
    waiting: int = 0  # runs waiting for a free max_concurrent slot
    abandoned: int = 0  # runs given up on (timeout, cancel) whose thread or task still runs


@dataclass(frozen=True, kw_only=True, slots=True)
class Snapshot:
    """The daemon's state at a moment, for the live table and sd_notify STATUS."""

    now: datetime
    started_at: datetime
    jobs: tuple[JobView, ...]
    running: int  # runs whose body runs (not those waiting for a slot)
    queued: int  # runs queued behind their job's previous run
    state: str  # where history lives
    nodes: tuple[str, ...] = ()  # nodes alive (PostgreSQL)
    waiting: int = 0  # runs waiting for a free max_concurrent slot
    abandoned: int = 0  # runs given up on whose thread or task still runs (each holds a slot)
    # Every job paused in the state (``qtasks pause``), in the job file or not: a pause is
    # kept by name until resumed, across reloads that remove and re-add the job.
    paused_jobs: tuple[str, ...] = ()
