"""What happens, as immutable events, one frozen class per kind, and a tiny fan-out to the
sinks that show them.

Every event has a time (aware UTC) and a level; the base fields ``job``, ``run_id`` and
``message`` are None where a kind has none. A run's events (``RunEvent``) always name the job
and the run, and each kind carries its own typed fields: a type checker knows that a
``Finished`` has a status and a ``Retrying`` a delay. ``kind`` (a ``ClassVar``) names the
class in logs, metrics and JSON; ``KINDS`` maps it back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

from qtasks_cli.models import RunStatus, TriggerKind
from qtasks_cli.models import _StrEnum as StrEnum

log = logging.getLogger(__name__)


class EventKind(StrEnum):
    FIRED = "fired"
    STARTED = "started"
    ATTEMPT_FAILED = "attempt failed"
    RETRYING = "retrying"
    ITEM = "item"
    FINISHED = "finished"  # status says how; see Finished.status
    SKIPPED = "skipped"
    MISSED = "missed"
    QUEUED = "queued"
    INTERRUPTED = "interrupted"
    NOTICE = "notice"  # a daemon message not tied to a run (reload, shutdown, store errors...)
    # The daemon's life cycle, for sinks such as sd_notify and the live table.
    READY = "ready"  # every job is scheduled
    RELOADING = "reloading"
    RELOADED = "reloaded"
    RELOAD_FAILED = "reload failed"  # the old configuration keeps running
    STOPPING = "stopping"


@dataclass(frozen=True, kw_only=True, slots=True)
class Event:
    """One thing that happened, at ``time`` (aware UTC)."""

    kind: ClassVar[EventKind]
    time: datetime
    level: int = logging.INFO
    job: str | None = None
    run_id: str | None = None
    message: str | None = None

    @property
    def label(self) -> str:
        """The event's name as logs show it (``succeeded`` rather than ``finished``)."""
        return str(self.kind)


# -- a run's events ---------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class RunEvent(Event):
    """An event of one run of one job: how it was triggered and, for a fire, its instant."""

    job: str
    run_id: str
    trigger: TriggerKind | None = None
    scheduled: datetime | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Fired(RunEvent):
    """A fire (or a handed-over request) is due: the run will start, wait or queue."""

    kind: ClassVar[EventKind] = EventKind.FIRED


@dataclass(frozen=True, kw_only=True, slots=True)
class Queued(RunEvent):
    """The run waits behind its job's previous run (overlap: queue)."""

    kind: ClassVar[EventKind] = EventKind.QUEUED


@dataclass(frozen=True, kw_only=True, slots=True)
class Started(RunEvent):
    """The run's body starts; it may take up to ``max_attempts`` attempts."""

    kind: ClassVar[EventKind] = EventKind.STARTED
    max_attempts: int = 1


@dataclass(frozen=True, kw_only=True, slots=True)
class AttemptFailed(RunEvent):
    """Attempt ``attempt`` of ``max_attempts`` ended as ``status`` (failed or timed out)."""

    kind: ClassVar[EventKind] = EventKind.ATTEMPT_FAILED
    level: int = logging.WARNING
    status: RunStatus
    attempt: int
    max_attempts: int
    error_type: str | None = None
    error: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Retrying(RunEvent):
    """Attempt ``attempt`` starts after ``delay`` seconds."""

    kind: ClassVar[EventKind] = EventKind.RETRYING
    attempt: int
    max_attempts: int
    delay: float  # seconds before the next attempt

    @property
    def label(self) -> str:
        return f"retrying in {self.delay:.1f}s"


@dataclass(frozen=True, kw_only=True, slots=True)
class Item(RunEvent):
    """A generator job yielded its ``items``-th value; ``item`` is its preview."""

    kind: ClassVar[EventKind] = EventKind.ITEM
    attempt: int
    item: str
    items: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Finished(RunEvent):
    """The run ended as ``status`` after ``attempt`` attempts, ``duration`` seconds."""

    kind: ClassVar[EventKind] = EventKind.FINISHED
    status: RunStatus
    attempt: int | None = None
    max_attempts: int | None = None
    duration: float | None = None  # seconds
    error_type: str | None = None
    error: str | None = None
    items: int | None = None
    # False on the event of a run another node had concluded while this daemon did not
    # answer (qtasks_cli.fencing): its record is that node's, and so is its count.
    recorded: bool = True

    @property
    def label(self) -> str:
        return str(self.status).replace("_", " ")


@dataclass(frozen=True, kw_only=True, slots=True)
class Skipped(RunEvent):
    """A fire was recorded as not run: ``error`` says why (overlap, paused, held back)."""

    kind: ClassVar[EventKind] = EventKind.SKIPPED
    level: int = logging.WARNING
    status: RunStatus = RunStatus.SKIPPED
    error: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Missed(RunEvent):
    """A fire was missed (the daemon was down or late past its catch-up): ``error`` says
    why."""

    kind: ClassVar[EventKind] = EventKind.MISSED
    level: int = logging.WARNING
    status: RunStatus = RunStatus.MISSED
    error: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Interrupted(RunEvent):
    """A run a dead daemon (or node) left unfinished was concluded at start-up or by
    reaping."""

    kind: ClassVar[EventKind] = EventKind.INTERRUPTED
    status: RunStatus = RunStatus.INTERRUPTED
    error: str | None = None


# -- the daemon's events ----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Notice(Event):
    """A daemon message, about a job or none (reload, shutdown, store errors...)."""

    kind: ClassVar[EventKind] = EventKind.NOTICE
    message: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Ready(Event):
    """Every job is scheduled."""

    kind: ClassVar[EventKind] = EventKind.READY


@dataclass(frozen=True, kw_only=True, slots=True)
class Reloading(Event):
    """A new job file is being read (SIGHUP)."""

    kind: ClassVar[EventKind] = EventKind.RELOADING


@dataclass(frozen=True, kw_only=True, slots=True)
class Reloaded(Event):
    """The new job file is applied; ``message`` counts what changed."""

    kind: ClassVar[EventKind] = EventKind.RELOADED
    message: str


@dataclass(frozen=True, kw_only=True, slots=True)
class ReloadFailed(Event):
    """The new job file was refused; the old configuration keeps running."""

    kind: ClassVar[EventKind] = EventKind.RELOAD_FAILED
    level: int = logging.ERROR
    message: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Stopping(Event):
    """The daemon stops (SIGTERM, Ctrl-C)."""

    kind: ClassVar[EventKind] = EventKind.STOPPING


KINDS: dict[EventKind, type[Event]] = {
    cls.kind: cls
    for cls in (
        Fired, Queued, Started, AttemptFailed, Retrying, Item, Finished, Skipped, Missed,
        Interrupted, Notice, Ready, Reloading, Reloaded, ReloadFailed, Stopping,
    )
}  # fmt: skip

Sink = Callable[[Event], None]


class EventBus:
    """Fan-out of events to sinks; a sink that raises is logged and never stops the others."""

    def __init__(self) -> None:
        self._sinks: list[Sink] = []

    def subscribe(self, sink: Sink) -> None:
        self._sinks.append(sink)

    def unsubscribe(self, sink: Sink) -> None:
        """Stop sending events to ``sink`` (a sink never subscribed is fine)."""
        if sink in self._sinks:
            self._sinks.remove(sink)

    def emit(self, event: Event) -> None:
        for sink in self._sinks:
            try:
                sink(event)
            except Exception:
                log.exception("event sink %r failed", sink)
