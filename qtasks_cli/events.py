"""What happens, as immutable events, and a tiny fan-out to the sinks that show them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from qtasks_cli.models import RunStatus, TriggerKind
from qtasks_cli.models import _StrEnum as StrEnum

log = logging.getLogger(__name__)


class EventKind(StrEnum):
    FIRED = "fired"
    STARTED = "started"
    ATTEMPT_FAILED = "attempt failed"
    RETRYING = "retrying"
    ITEM = "item"
    FINISHED = "finished"  # status says how; see Event.status
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
    """One thing that happened; every field but ``kind`` and ``time`` is optional."""

    kind: EventKind
    time: datetime
    job: str | None = None
    run_id: str | None = None
    trigger: TriggerKind | None = None
    scheduled: datetime | None = None
    status: RunStatus | None = None
    attempt: int | None = None
    max_attempts: int | None = None
    delay: float | None = None  # seconds before the next attempt
    duration: float | None = None  # seconds
    error_type: str | None = None
    error: str | None = None
    item: str | None = None  # preview of a yielded item
    items: int | None = None
    message: str | None = None
    level: int = logging.INFO
    # False on the FINISHED event of a run another node had concluded while this daemon did
    # not answer (qtasks_cli.fencing): its record is that node's, and so is its count.
    recorded: bool = True

    @property
    def label(self) -> str:
        """The event's name as logs show it (``succeeded`` rather than ``finished``)."""
        if self.kind is EventKind.FINISHED and self.status is not None:
            return str(self.status).replace("_", " ")
        if self.kind is EventKind.RETRYING and self.delay is not None:
            return f"retrying in {self.delay:.1f}s"
        return str(self.kind)


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
