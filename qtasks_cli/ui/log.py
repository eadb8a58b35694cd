"""Plain, JSON and journald log lines, for events and ordinary log records alike.

Logging is configured here and nowhere else."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any, TextIO

from qtasks_cli.events import (
    Event,
    EventKind,
    Finished,
    Fired,
    Interrupted,
    Item,
    Missed,
    Skipped,
)
from qtasks_cli.models import RunStatus
from qtasks_cli.redaction import redact_known, redact_known_value
from qtasks_cli.text import clean_line, clean_text, json_safe
from qtasks_cli.ui import records

EVENT_LOGGER = "qtasks.events"
_event_log = logging.getLogger(EVENT_LOGGER)

_FAILED = {RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.INTERRUPTED}
_JOURNAL_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def event_level(event: Event) -> int:
    """How loud an event is: failures are errors, skips and retries are warnings."""
    if isinstance(event, Finished):
        if event.status in _FAILED:
            return logging.ERROR
        if event.status is RunStatus.CANCELLED:
            return logging.WARNING
    if event.kind in (
        EventKind.ATTEMPT_FAILED,
        EventKind.RETRYING,
        EventKind.SKIPPED,
        EventKind.MISSED,
        EventKind.INTERRUPTED,
    ):
        return max(event.level, logging.WARNING)
    return event.level


def log_event(event: Event) -> None:
    """The sink that turns events into log records (then formatted by the active handler).

    On the event loop the records are made once the loop is done with the current burst:
    a thousand fires start their jobs first and pay for three thousand log lines after."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        _log_now(event)
        return
    _waiting.append(event)
    if len(_waiting) == 1:
        loop.call_soon(_log_waiting)


_waiting: list[Event] = []


def drain() -> None:
    """Log the events still waiting, then give the output a bounded time to be written (the
    CLI calls it before exiting; a reader that stopped reading does not hold the exit)."""
    _log_waiting()
    from qtasks_cli.ui import output

    output.settle()


def _log_waiting() -> None:
    events = _waiting[:]
    _waiting.clear()
    for event in events:
        _log_now(event)


def _log_now(event: Event) -> None:
    level = event_level(event)
    if not _event_log.isEnabledFor(level):
        return
    # makeRecord skips Logger.findCaller's stack walk, the costliest part of a log call.
    record = _event_log.makeRecord(
        EVENT_LOGGER,
        level,
        __file__,
        0,
        "%s",
        (event.label,),
        None,
        extra={"qtasks_event": event},
    )
    record.created = event.time.timestamp()  # when it happened, not when it was written
    _event_log.handle(record)


def _detail(event: Event, name: str) -> Any:
    """A field of ``event``'s kind by name, None where the kind has no such field: for the
    readers of every kind (the JSON log, the one-line description)."""
    return getattr(event, name, None)


def event_fields(event: Event) -> dict[str, Any]:
    """The event as a flat JSON-ready mapping, without empty fields."""
    status, trigger, scheduled, delay, duration = (
        _detail(event, name) for name in ("status", "trigger", "scheduled", "delay", "duration")
    )
    fields: dict[str, Any] = {
        "time": _iso(event.time),
        "level": logging.getLevelName(event_level(event)).lower(),
        "job": event.job,
        "run_id": event.run_id,
        "event": event.label if event.kind is not EventKind.RETRYING else "retrying",
        "status": str(status) if status is not None else None,
        "trigger": str(trigger) if trigger is not None else None,
        "scheduled": _iso(scheduled) if scheduled is not None else None,
        "attempt": _detail(event, "attempt"),
        "max_attempts": _detail(event, "max_attempts"),
        "delay": round(delay, 3) if delay is not None else None,
        "duration": round(duration, 3) if duration is not None else None,
        "error_type": _detail(event, "error_type"),
        "error": _detail(event, "error"),
        "item": _detail(event, "item"),
        "items": _detail(event, "items"),
        "message": event.message,
    }
    return {k: v for k, v in fields.items() if v is not None}


def event_text(event: Event) -> tuple[str, str]:
    """``event`` as the text of its record's line and the lines that follow it ("" for none).

    A job's text (an error, an item) stays on the record's line: shown there with
    ``clean_line``, its line breaks are the two characters ``\n``, so a value cannot forge a
    line of its own. The daemon's own message (a refused job file's problems, one per line)
    ends the record's line with its first line; its other lines follow."""
    if event.message and "\n" in event.message:
        head, more = event.message.split("\n", 1)
        return describe_event(replace(event, message=head)), more
    return describe_event(event), ""


def describe_event(event: Event) -> str:
    """The event in one human line, without time and level."""
    parts = [event.job or "qtasks"]
    if event.run_id:
        parts.append(event.run_id)
    if event.kind is not EventKind.NOTICE:
        parts.append(event.label)
    if isinstance(event, Fired) and event.trigger is not None:
        parts.append(f"({event.trigger}{_at(event.scheduled)})")
    attempt: int | None = _detail(event, "attempt")
    max_attempts: int | None = _detail(event, "max_attempts")
    if (
        attempt is not None
        and max_attempts is not None
        and (event.kind is EventKind.ATTEMPT_FAILED or attempt > 1)
    ):
        parts.append(f"attempt {attempt}/{max_attempts}")
    if isinstance(event, Finished) and event.duration is not None:
        parts.append(f"in {event.duration:.3f}s")
    if isinstance(event, Item):
        parts[-1] = f"item #{event.items}:"
        parts.append(event.item)
    elif isinstance(event, Finished) and event.items is not None:
        parts.append(f"{event.items} item(s)")
    error_type: str | None = _detail(event, "error_type")
    error: str | None = _detail(event, "error")
    if error_type or error:
        parts.append(": ".join(x for x in (error_type, error) if x))
    if event.message:
        parts.append(event.message)
    if isinstance(event, (Missed, Skipped, Interrupted)):
        parts.append(f"(scheduled{_at(event.scheduled)})" if event.scheduled else "")
    return " ".join(p for p in parts if p)


def _at(when: datetime | None) -> str:
    return f" {_iso(when)}" if when is not None else ""


def _iso(when: datetime) -> str:
    return when.astimezone().isoformat(timespec="milliseconds")


class PlainFormatter(logging.Formatter):
    """``TIME LEVEL job run_id event details``; with ``journal`` a ``<N>`` prefix, no time."""

    def __init__(self, *, journal: bool = False) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        event: Event | None = getattr(record, "qtasks_event", None)
        # Job and state-file text may hold terminal escapes: cleaned, one line per record
        # (a value cannot forge a line), and the lines of a traceback after it.
        # Every secret of the loaded job files is hidden first: a record that is not a run's
        # event (a debug line with a job's exception, say) was not redacted by its job.
        if event is None:
            records.settle(record, "helper")  # already, unless a handler of a job's logs it
        more = ""
        if event is None:
            text = record.getMessage()
        else:
            text, more = event_text(event)
        text = clean_line(records.cut(redact_known(text)))
        if more:
            lines = redact_known(records.cut(more)).splitlines()
            text += "".join(f"\n  {clean_line(line)}" for line in lines)
        if record.exc_text and event is None:
            trace = records.cut(redact_known(record.exc_text), keep_end=True)
            text = f"{text}\n{clean_text(trace)}"
        level = record.levelname
        if self.journal:
            prio = _JOURNAL_PRIORITY.get(record.levelno, 6)
            return "\n".join(f"<{prio}>{level} {line}" for line in text.splitlines() or [""])
        when = datetime.fromtimestamp(record.created).astimezone()
        stamp = when.isoformat(timespec="milliseconds")
        return f"{stamp} {level:<7} {text}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the same fields as the plain log."""

    def format(self, record: logging.LogRecord) -> str:
        event: Event | None = getattr(record, "qtasks_event", None)
        if event is not None:
            fields = event_fields(event)
        else:
            records.settle(record, "helper")  # already, unless a handler of a job's logs it
            when = datetime.fromtimestamp(record.created).astimezone()
            fields = {
                "time": when.isoformat(timespec="milliseconds"),
                "level": record.levelname.lower(),
                "event": "log",
                "logger": record.name,
                "message": record.getMessage(),
            }
            if record.exc_text:
                fields["traceback"] = record.exc_text
        fields = redact_known_value(fields)  # leaf by leaf, before the JSON is made
        for key in ("message", "traceback"):
            if key in fields:
                fields[key] = records.cut(fields[key], keep_end=key == "traceback")
        return json_safe(json.dumps(fields, ensure_ascii=False, default=str))


# The daemon's own loggers, and those of the libraries it runs its loop and store with. Their
# records go to qtasks' handler alone and never propagate to the root logger, so a handler a job
# adds there (an HTTPHandler to a collector that hangs) never runs in the daemon's log calls.
DAEMON_LOGGERS = ("qtasks", "qtasks_cli", "asyncio", "concurrent.futures", "psycopg", "tenacity")


def _install(handler: logging.Handler, level: int) -> Callable[[], None]:
    """Make ``handler`` the only handler of the root logger and of DAEMON_LOGGERS (which stop
    propagating); the returned function puts back what was there."""
    loggers = [logging.getLogger()] + [logging.getLogger(name) for name in DAEMON_LOGGERS]
    before = [(lg, list(lg.handlers), lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        for old in list(lg.handlers):
            lg.removeHandler(old)
        lg.addHandler(handler)
        lg.setLevel(level)
    for lg in loggers[1:]:
        lg.propagate = False

    def restore() -> None:
        for lg, handlers, old_level, propagate in before:
            lg.removeHandler(handler)
            for old in handlers:
                lg.addHandler(old)
            lg.setLevel(old_level)
            lg.propagate = propagate

    return restore


def configure(mode: str, stream: TextIO | None = None, level: int = logging.INFO) -> None:
    """Send every log record to stderr as ``plain``, ``json`` or ``journal`` lines, through a
    bounded queue formatted and written off the loop (``ui.output``); ``stream`` instead (a
    test's StringIO) writes there directly. The daemon's records (DAEMON_LOGGERS) reach this
    handler only; a job's reach it and whatever handlers the job adds to the root logger."""
    from qtasks_cli.ui import output

    formatter: logging.Formatter = (
        JsonFormatter() if mode == "json" else PlainFormatter(journal=mode == "journal")
    )
    handler: logging.Handler
    if stream is None:
        handler = output.log_handler(formatter)
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter)
    _install(handler, level)


def use_handler(handler: logging.Handler, level: int = logging.INFO) -> Callable[[], None]:
    """Make ``handler`` the only destination of log records (the live table's events area)
    until the returned function is called, which puts the previous handlers back."""
    return _install(handler, level)


def sink_for(mode: str) -> Callable[[Event], None]:
    """Configure logging for ``mode`` (``configure``) and return the sink that logs events."""
    configure(mode)
    return log_event
