"""The live table of ``qtasks run --ui live``: one row per job, the latest events, a footer.

``render`` is a pure function of a snapshot, per-job statistics and event lines. ``LiveView``
keeps the statistics current from events (``record``) and redraws from an asyncio task: on
changes, at most 4 times a second, and once a second for the countdowns. While the view is up,
the process's stdout/stderr file descriptors and every log record are routed into its events
area, so neither a job's ``print`` nor a warning can tear the table.

This module imports Rich's live display at import time; only the live UI imports it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from qtasks_cli.events import Event, EventBus, EventKind
from qtasks_cli.models import JobView, RunStatus, Snapshot
from qtasks_cli.redaction import hold_back, redact_known
from qtasks_cli.ui import log as ui_log
from qtasks_cli.ui.lines import MAX_HELD, LineCutter
from qtasks_cli.ui.text import clean_line, clean_output

log = logging.getLogger(__name__)

MAX_REDRAWS_PER_SECOND = 4.0
MAX_LINES = 500  # event lines kept for the events area
MAX_LINES_PER_RECORD = 6  # a traceback must not push every other line out
MIN_EVENT_LINES = 5  # the events area keeps at least this many lines when jobs overflow
SCREEN_CLOSE_WAIT = 2.0  # seconds the exit waits for a stopped terminal to take the last frame

_FAILED = frozenset({RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.INTERRUPTED})


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


# --- words for times ---------------------------------------------------------------------------


def span(seconds: float) -> str:
    """A duration in at most two units: ``12s``, ``3m 12s``, ``2h 5m``, ``3d 4h``."""
    s = max(0, int(seconds))
    days, rest = divmod(s, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m {secs}s" if secs else f"{minutes}m"
    return f"{secs}s"


def countdown(seconds: float) -> str:
    """``in 3m 12s``; ``now`` once due. Rounded up, so ``in 1s`` shows until the fire."""
    if seconds <= 0:
        return "now"
    return f"in {span(math.ceil(seconds))}"


def ago(seconds: float) -> str:
    """How long ago, in one unit: ``12s ago``, ``2m ago``, ``3h ago``, ``2d ago``."""
    s = max(0, int(seconds))
    for size, unit in ((86_400, "d"), (3600, "h"), (60, "m")):
        if s >= size:
            return f"{s // size}{unit} ago"
    return f"{s}s ago"


def elapsed(seconds: float) -> str:
    """A run's duration: ``4ms``, ``420ms``, ``1.3s``, ``12s``, ``3m 12s``."""
    if seconds < 1:
        return f"{max(0.0, seconds) * 1000:.0f}ms"
    if seconds < 10:
        return f"{seconds:.1f}s"
    return span(seconds)


def clock_time(when: datetime, now: datetime, zone: tzinfo | None = None) -> str:
    """``14:05:00`` today, ``Tue 23:59`` within a week, else ``2026-03-29 02:30``."""
    local, today = when.astimezone(zone), now.astimezone(zone)
    if local.date() == today.date():
        return local.strftime("%H:%M:%S")
    if timedelta(0) < local - today < timedelta(days=6):
        return local.strftime("%a %H:%M")
    return local.strftime("%Y-%m-%d %H:%M")


# --- statistics kept from events ---------------------------------------------------------------


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
    kind = event.kind
    if kind is EventKind.FIRED:
        job.waiting.add(run_id)
    elif kind is EventKind.STARTED:
        job.waiting.discard(run_id)
        job.runs[run_id] = RunProgress(
            started=event.time, attempt=1, max_attempts=event.max_attempts or 1
        )
    elif kind is EventKind.RETRYING:
        progress = job.runs.get(run_id)
        if progress is not None:
            progress.attempt = event.attempt or progress.attempt + 1
            progress.max_attempts = event.max_attempts or progress.max_attempts
            progress.retry_at = event.time + timedelta(seconds=event.delay or 0.0)
    elif kind is EventKind.FINISHED:
        job.waiting.discard(run_id)
        job.runs.pop(run_id, None)
        status = event.status or RunStatus.FAILED
        if status is RunStatus.SUCCEEDED:
            job.successes += 1
        elif status in _FAILED:
            job.failures += 1
        job.last_status = status
        job.last_error_type = clean_line(event.error_type) if event.error_type else None
        job.last_ended = event.time
        job.last_duration = event.duration
    return True


# --- the pure renderer -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Symbols:
    ok: str
    failed: str
    more: str
    none: str
    sep: str


_UNICODE = _Symbols(ok="✓", failed="✗", more="…", none="—", sep=" · ")
_ASCII = _Symbols(ok="ok", failed="x", more="...", none="-", sep=" | ")
_EMPTY = JobTally()


_NEVER = datetime.max.replace(tzinfo=timezone.utc)


def order(snapshot: Snapshot, job_stats: Mapping[str, JobTally]) -> list[JobView]:
    """Running jobs first (oldest run first), then queued, then failing, then by next fire;
    jobs with no next fire last."""
    busy: list[tuple[int, datetime, str, JobView]] = []
    idle: list[tuple[datetime, str, JobView]] = []
    get = job_stats.get
    # Most of 1,000 jobs are idle with no statistics: keep their path short.
    for view in snapshot.jobs:
        stats = get(view.name)
        fires = view.next_fire is not None and view.enabled and not view.paused
        when = view.next_fire if fires and view.next_fire is not None else _NEVER
        if stats is None:
            if view.pending or view.running or view.waiting or view.abandoned:
                busy.append((1, _NEVER, view.name, view))
            else:
                idle.append((when, view.name, view))
        elif stats.runs:
            first = min(p.started for p in stats.runs.values())
            busy.append((0, first, view.name, view))
        elif stats.waiting or view.pending or view.running or view.waiting or view.abandoned:
            busy.append((1, _NEVER, view.name, view))
        elif stats.failing:
            busy.append((2, when, view.name, view))
        else:
            idle.append((when, view.name, view))
    # Names are unique, so the comparison never reaches the views.
    busy.sort()
    idle.sort()
    return [item[3] for item in busy] + [item[2] for item in idle]


# A cell is a list of (text, style) pieces; rows are laid out here rather than by rich.Table,
# whose layout costs ~15 ms for a screenful of rows: too much to do 4 times a second on the loop.
_Cell = list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class _Column:
    header: str
    min_width: int  # how far it may shrink when the terminal is narrow
    max_width: int
    right: bool = False


def _columns(sym: _Symbols) -> tuple[_Column, ...]:
    return (
        _Column("job", 8, 32),
        _Column("schedule", 6, 30),
        _Column("next", 4, 12),
        _Column("at", 5, 16),
        _Column("state", 10, 30),
        _Column("last", 8, 40),
        _Column(sym.ok, 1, 7, right=True),
        _Column(sym.failed, 1, 7, right=True),
    )


# When a row is too wide: narrow these columns to their minimum, in this order; then drop
# whole columns (a clock time cut to "12:0…" says nothing); then narrow the rest.
_SHRINK_ORDER = (1, 5, 0)
_DROP_ORDER = (3, 1)
_LAST_RESORT = (4, 2)
_GAP = "  "


def _state(view: JobView, stats: JobTally, now: datetime, sym: _Symbols) -> _Cell:
    if stats.runs:
        progress = max(stats.runs.values(), key=lambda p: p.started)
        many = f"{len(stats.runs)}× " if len(stats.runs) > 1 else ""
        queued = " +queued" if view.pending else ""
        attempt = (
            f" {progress.attempt}/{progress.max_attempts}" if progress.max_attempts > 1 else ""
        )
        if progress.retry_at is not None and progress.retry_at > now:
            wait = math.ceil((progress.retry_at - now).total_seconds())
            return [(f"{many}retrying{attempt} in {wait}s{queued}", "yellow")]
        took = elapsed((now - progress.started).total_seconds())
        return [(f"{many}running{attempt}{sym.sep}{took}{queued}", "bold cyan")]
    return [state_cell(view, bool(stats.waiting))]


def state_cell(view: JobView, fired: bool = False) -> tuple[str, str]:
    """A job's state when none of its bodies runs, with its style. One order everywhere
    (``qtasks run``, ``status --watch``, ``status``): a run waiting for a max_concurrent slot,
    one queued behind the job's own run, a run given up on whose thread or task still runs,
    then disabled (in the file) over paused (``qtasks pause``), then idle. ``fired``: a fire
    was announced and its run has not started yet."""
    if view.waiting:
        return "waiting for a slot", "magenta"
    if view.pending or fired:
        return "queued", "magenta"
    if view.running:
        return "starting", "cyan"
    if view.abandoned:
        return "abandoned, still running", "yellow"
    if not view.enabled:
        return "disabled", "dim"
    if view.paused:
        return "paused", "yellow"
    return "idle", "dim"


def _last(stats: JobTally, now: datetime, sym: _Symbols) -> _Cell:
    if stats.last_status is None or stats.last_ended is None:
        return [(sym.none, "dim")]
    age = ago((now - stats.last_ended).total_seconds())
    if stats.last_status is RunStatus.SUCCEEDED:
        took = f", {elapsed(stats.last_duration)}" if stats.last_duration is not None else ""
        return [(sym.ok, "bold green"), (f" {age}{took}", "")]
    what = stats.last_error_type or str(stats.last_status).replace("_", " ")
    style = "yellow" if stats.last_status is RunStatus.CANCELLED else "bold red"
    return [(sym.failed, style), (f" {what} {age}", "")]


def _next(view: JobView, now: datetime, zone: tzinfo | None, sym: _Symbols) -> tuple[str, str]:
    if not view.enabled or view.paused or view.next_fire is None:  # a skipped fire is no fire
        return sym.none, ""
    return (
        countdown((view.next_fire - now).total_seconds()),
        clock_time(view.next_fire, now, zone),
    )


def _row(
    view: JobView, stats: JobTally, now: datetime, zone: tzinfo | None, sym: _Symbols
) -> list[_Cell]:
    nxt, at = _next(view, now, zone, sym)
    dim = "dim" if not view.enabled else ""
    return [
        [(view.name, "bold" if stats.runs else dim)],
        [(view.schedule, dim)],
        [(nxt, "")],
        [(at, "dim")],
        _state(view, stats, now, sym),
        _last(stats, now, sym),
        [(str(stats.successes), "")],
        [(str(stats.failures), "bold red" if stats.failures else "")],
    ]


def _widths(columns: Sequence[_Column], rows: Sequence[Sequence[_Cell]], width: int) -> list[int]:
    """Each column as wide as its widest cell (within its bounds), narrowed, then dropped
    (width 0), until a row fits ``width``."""
    widths = [max(len(c.header), 1) for c in columns]
    for row in rows:
        for i, cell in enumerate(row):
            size = sum(len(piece) for piece, _ in cell)
            if size > widths[i]:
                widths[i] = size
    widths = [min(w, c.max_width) for w, c in zip(widths, columns)]
    natural = list(widths)

    def excess() -> int:
        shown = [w for w in widths if w]
        return sum(shown) + len(_GAP) * (len(shown) - 1) - width

    for i in _SHRINK_ORDER:
        widths[i] -= max(0, min(excess(), widths[i] - columns[i].min_width))
    for i in _DROP_ORDER:
        if excess() > 0:
            widths[i] = 0
            for j in reversed(_SHRINK_ORDER):  # the dropped column's room goes back
                if widths[j]:
                    widths[j] += max(0, min(-excess(), natural[j] - widths[j]))
    for i in _LAST_RESORT:
        widths[i] -= max(0, min(excess(), widths[i] - columns[i].min_width))
    return widths


def _line(
    cells: Sequence[_Cell], widths: Sequence[int], columns: Sequence[_Column], more: str
) -> Text:
    line = Text(no_wrap=True, overflow="ellipsis")
    last = max(i for i, size in enumerate(widths) if size) if any(widths) else -1
    for i, (cell, size, column) in enumerate(zip(cells, widths, columns)):
        if not size:
            continue
        length = sum(len(piece) for piece, _ in cell)
        if length > size:  # cut, with a marker, keeping the styles of the pieces
            cut: _Cell = []
            room = max(0, size - len(more))
            for piece, style in cell:
                if room <= 0:
                    break
                cut.append((piece[:room], style))
                room -= len(piece[:room])
            cell = [*cut, (more[:size], "dim")]
            length = size
        pad = " " * (size - length)
        if column.right:
            line.append(pad)
        for piece, style in cell:
            line.append(piece, style or None)
        if not column.right and i != last:
            line.append(pad)
        if i != last:
            line.append(_GAP)
    return line


def _event_line(line: EventLine, zone: tzinfo | None) -> Text:
    style = ""
    if line.level >= logging.ERROR:
        style = "red"
    elif line.level >= logging.WARNING:
        style = "yellow"
    stamp = line.time.astimezone(zone).strftime("%H:%M:%S")
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(stamp, "dim")
    text.append(" ")
    text.append(line.text, style or None)
    return text


def _footer(snapshot: Snapshot, status: str, sym: _Symbols) -> Text:
    count = len(snapshot.jobs)
    text = Text(no_wrap=True, overflow="ellipsis")
    if status:  # first, so that a long state path never hides it
        text.append(status, "bold yellow")
        text.append(sym.sep)
    text.append(str(count), "bold")
    text.append(f" job{'s' if count != 1 else ''}{sym.sep}")
    text.append(str(snapshot.running), "bold cyan" if snapshot.running else "bold")
    text.append(f" running{sym.sep}")
    if snapshot.waiting:
        text.append(str(snapshot.waiting), "bold magenta")
        text.append(f" waiting for a slot{sym.sep}")
    text.append(str(snapshot.queued), "bold magenta" if snapshot.queued else "bold")
    text.append(f" queued{sym.sep}")
    if snapshot.abandoned:
        text.append(str(snapshot.abandoned), "bold yellow")
        text.append(f" abandoned{sym.sep}")
    text.append(f"up {span((snapshot.now - snapshot.started_at).total_seconds())}")
    text.append(f"{sym.sep}state {snapshot.state}")
    return text


def render(
    snapshot: Snapshot,
    job_stats: Mapping[str, JobTally],
    events: Sequence[EventLine],
    width: int,
    height: int,
    *,
    status: str = "",
    ascii_only: bool = False,
    zone: tzinfo | None = None,
) -> RenderableType:
    """The whole view for a ``width`` x ``height`` terminal, never taller than ``height`` and
    never wider than ``width``: the job table (with a note when rows are hidden), the latest
    ``events`` and a footer.

    Pure: the time is ``snapshot.now``; ``zone`` (default: the machine's) is where clock times
    are shown; ``status`` (``stopping``...) goes in the footer."""
    sym = _ASCII if ascii_only else _UNICODE
    now = snapshot.now
    budget = max(1, height) - 1  # the footer's line
    table_overhead = 2  # header and its rule
    wanted_events = min(len(events), MIN_EVENT_LINES)
    room = budget - table_overhead - (wanted_events + 1 if wanted_events else 0)
    jobs = order(snapshot, job_stats)
    shown = len(jobs)
    if shown > room:
        shown = max(0, room - 1)  # a line says how many are hidden
    hidden = len(jobs) - shown

    lines: list[Text] = []
    if budget >= table_overhead + 1:
        columns = _columns(sym)
        rows = [_row(v, job_stats.get(v.name, _EMPTY), now, zone, sym) for v in jobs[:shown]]
        widths = _widths(columns, rows, width)
        header: list[_Cell] = [[(c.header, "bold")] for c in columns]
        lines.append(_line(header, widths, columns, sym.more))
        rule = "-" if ascii_only else "─"
        shown_widths = [w for w in widths if w]
        total = sum(shown_widths) + len(_GAP) * (len(shown_widths) - 1)
        lines.append(Text(rule * min(width, total), "dim"))
        lines.extend(_line(row, widths, columns, sym.more) for row in rows)
        if hidden:
            more = f"{sym.more} {hidden} more job{'s' if hidden != 1 else ''} not shown"
            lines.append(
                Text(
                    f"{more} (a taller terminal shows more)",
                    "dim italic",
                    no_wrap=True,
                    overflow="ellipsis",
                )
            )
    event_room = budget - len(lines) - 1  # the events title
    if event_room > 0 and events:
        lines.append(Text("latest events", "bold dim"))
        lines.extend(_event_line(line, zone) for line in events[-event_room:])
    lines.append(_footer(snapshot, status, sym))
    return Group(*lines[-max(1, height) :])


# --- when to draw ------------------------------------------------------------------------------


async def _wait_for_change(timeout: float, changed: asyncio.Event) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(changed.wait(), timeout)


class Painter:
    """Calls ``draw`` after changes, at most ``rate`` times a second, and at every wall-clock
    second so countdowns tick; an idle daemon is redrawn once a second, not ``rate`` times.

    ``wall``, ``monotonic``, ``wait`` and ``sleep`` are injected so tests control time."""

    def __init__(
        self,
        draw: Callable[[], None],
        *,
        rate: float = MAX_REDRAWS_PER_SECOND,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        wait: Callable[[float, asyncio.Event], Awaitable[None]] = _wait_for_change,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._draw = draw
        self._gap = 1.0 / rate
        self._wall = wall
        self._monotonic = monotonic
        self._wait = wait
        self._sleep = sleep
        self._changed = asyncio.Event()
        self._last = -math.inf
        self.draws = 0

    def changed(self) -> None:
        """Something to show; call from the loop's thread."""
        self._changed.set()

    async def run(self) -> None:
        """Draw until cancelled."""
        while True:
            # Just past the next whole second, when every countdown has moved on.
            await self._wait(1.0 - self._wall() % 1.0 + 0.002, self._changed)
            too_soon = self._last + self._gap - self._monotonic()
            if too_soon > 0:
                await self._sleep(too_soon)
            self._changed.clear()
            self.draw_now()

    def draw_now(self) -> None:
        self._last = self._monotonic()
        self.draws += 1
        self._draw()


# --- the view ------------------------------------------------------------------------------------


class LiveView:
    """The state behind the live table: job statistics, event lines, the daemon's life-cycle
    status and the snapshot source (``attach``), and the task that draws (``start``)."""

    def __init__(
        self,
        *,
        clock: Callable[[], datetime] = _utcnow,
        ascii_only: bool = False,
        max_lines: int = MAX_LINES,
    ) -> None:
        self.stats: dict[str, JobTally] = {}
        self.lines: deque[EventLine] = deque(maxlen=max_lines)
        self.status = "starting"
        self.clock = clock
        self.ascii_only = ascii_only
        self.source: Callable[[], Snapshot] | None = None
        self.stopping_from: int | None = None  # lines counted when the stop began
        self._count = 0  # lines ever added
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._painter: Painter | None = None
        self._paint_task: asyncio.Task[None] | None = None
        self.first: datetime | None = None
        self.terminal_lost = False
        self.terminal_stalled = False  # it did not take the last frame at exit (Ctrl-S)
        self._wake_pending = False  # a wake-up from another thread is on its way to the loop
        self._request_stop: Callable[[], None] | None = None

    # --- inputs ---------------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        """Bus sink: update the statistics and the status; its line comes through logging."""
        if self._loop_thread is not None and threading.get_ident() != self._loop_thread:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self.on_event, event)
            return
        kind = event.kind
        if kind is EventKind.READY or kind in (EventKind.RELOADED, EventKind.RELOAD_FAILED):
            self.status = ""
        elif kind is EventKind.RELOADING:
            self.status = "reloading"
        elif kind is EventKind.STOPPING:
            self.status = "stopping"
            with self._lock:
                self.stopping_from = self._count
        record(self.stats, event)
        self._changed()

    def add_line(self, line: EventLine) -> None:
        """Add a line to the events area; safe from any thread."""
        with self._lock:
            self.lines.append(line)
            self._count += 1
        self._changed()

    def add_text(self, text: str, level: int = logging.INFO, when: datetime | None = None) -> None:
        """Add (possibly multi-line) text as event lines, cut to a few lines; the secrets of
        the loaded job files are hidden in it first, whole (a secret may span lines)."""
        rows = [clean_line(row) for row in redact_known(text).splitlines()] or [""]
        if len(rows) > MAX_LINES_PER_RECORD:
            extra = len(rows) - MAX_LINES_PER_RECORD + 1
            rows = [*rows[: MAX_LINES_PER_RECORD - 1], f"  ({extra} more lines)"]
        stamp = when or self.clock()
        for row in rows:
            self.add_line(EventLine(time=stamp, level=level, text=row))

    def _changed(self) -> None:
        painter, loop = self._painter, self._loop
        if painter is None or loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            painter.changed()
        elif not self._wake_pending:
            # One wake-up for a burst of lines from other threads: a wake-up per line (a job
            # printing thousands a second) would fill the loop's self-pipe, which the signal
            # wake-up shares, and a SIGINT or SIGTERM arriving then would be lost.
            self._wake_pending = True
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(self._woken)

    def _woken(self) -> None:
        self._wake_pending = False
        if self._painter is not None:
            self._painter.changed()

    # --- output -----------------------------------------------------------------------------

    def recent(self, count: int) -> list[EventLine]:
        with self._lock:
            start = max(0, len(self.lines) - count)
            return [self.lines[i] for i in range(start, len(self.lines))]

    def frame(self, width: int, height: int) -> RenderableType:
        """What to draw now."""
        if self.source is None:
            return Text("qtasks: starting…" if not self.ascii_only else "qtasks: starting...")
        return render(
            self.source(),
            self.stats,
            self.recent(height),
            width,
            height,
            status=self.status,
            ascii_only=self.ascii_only,
        )

    def since_stop(self) -> list[EventLine]:
        """The lines added since the stop began (the last ten if it never began), to leave on
        the terminal after the view closes."""
        with self._lock:
            lines = list(self.lines)
            begun = self.stopping_from
            count = self._count
        if begun is None:
            return lines[-10:]
        return lines[len(lines) - min(len(lines), count - begun) :]

    def summary(self) -> str:
        """One line about the session: uptime and how the runs went."""
        ok = sum(s.successes for s in self.stats.values())
        bad = sum(s.failures for s in self.stats.values())
        up = span((self.clock() - self.first).total_seconds()) if self.first else "0s"
        return f"qtasks stopped after {up}: {ok} run(s) succeeded, {bad} failed"

    # --- the drawing task -------------------------------------------------------------------

    def attach(self, source: Any) -> None:
        """``api.serve``'s ``on_ready``: start showing ``source.snapshot()``; the daemon stops
        (``source.request_stop()``) if the terminal goes away."""
        self.source = source.snapshot
        self._request_stop = getattr(source, "request_stop", None)
        if self.terminal_lost and self._request_stop is not None:
            self._request_stop()
        self._changed()

    def lose_terminal(self, exc: OSError) -> None:
        """The terminal cannot be written any more (its window was closed: a hangup): stop
        drawing and stop the daemon as SIGTERM would, rather than run on with nobody watching."""
        if self.terminal_lost:
            return
        self.terminal_lost = True
        log.warning("the terminal went away (%s); stopping", exc)
        if self._request_stop is not None:
            self._request_stop()

    def start(self, draw: Callable[[], None], **painter: Any) -> None:
        """Start the drawing task on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self.first = self.clock()
        self._painter = Painter(draw, **painter)
        self._paint_task = asyncio.create_task(self._painter.run(), name="qtasks:live")
        with contextlib.suppress(NotImplementedError, RuntimeError):
            self._loop.add_signal_handler(signal.SIGWINCH, self._painter.changed)

    async def stop(self) -> None:
        """Stop the drawing task."""
        if self._loop is not None:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                self._loop.remove_signal_handler(signal.SIGWINCH)
        task, self._paint_task = self._paint_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._painter = None


class LiveHandler(logging.Handler):
    """Log records into the view's events area (event records as ``describe_event`` lines)."""

    def __init__(self, view: LiveView) -> None:
        super().__init__()
        self.view = view

    def emit(self, record: logging.LogRecord) -> None:
        try:
            event: Event | None = getattr(record, "qtasks_event", None)
            if event is not None:
                self.view.add_text(ui_log.describe_event(event), record.levelno, event.time)
                return
            text = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                from qtasks_cli.failures import safe_str

                exc = record.exc_info[1]  # a job's exception: its __str__ may raise SystemExit
                text = f"{text}: {type(exc).__name__}: {safe_str(exc, 500)}"
            when = datetime.fromtimestamp(record.created, timezone.utc)
            level = record.levelname if record.levelno >= logging.WARNING else ""
            self.view.add_text(f"{level} {text}".strip(), record.levelno, when)
        except Exception:
            self.handleError(record)
        except BaseException:
            self.view.add_text("(a log record could not be formatted)", logging.ERROR)


# --- the terminal --------------------------------------------------------------------------------


def _pump(fd: int, view: LiveView) -> None:
    """Read what the process's stdout/stderr receive and show it line by line.

    The lines read together are redacted together, so a secret of several lines is hidden
    whole; lines that end with the first lines of a known multi-line secret wait for the next
    read (``redaction.hold_back``), and each line of such a secret is hidden on its own too."""
    cutter = LineCutter(hold_back)
    try:
        while True:
            try:
                chunk = os.read(fd, 65536)
            except InterruptedError:
                continue
            except OSError:
                break
            if not chunk:
                break
            for data, cut in cutter.feed(chunk):
                _show_output(view, data, cut)
        for data, cut in cutter.finish():
            _show_output(view, data, cut)
    finally:
        os.close(fd)


_SHOWN_CHARS = 2000  # of one output line; the table shows one screen line of it anyway
_CUT = f" … (the rest of this line, over {MAX_HELD // 1024} KiB, is not shown)"


def _show_output(view: LiveView, data: bytes, cut: bool = False) -> None:
    if not data.strip():
        return
    text = redact_known(data.decode("utf-8", "replace"))
    rows = text.split("\n")
    for number, row in enumerate(rows, 1):
        shown = clean_output(row[: _SHOWN_CHARS + 1])
        if len(shown) > _SHOWN_CHARS:
            shown = shown[:_SHOWN_CHARS] + "…"
        if cut and number == len(rows):
            shown += _CUT
        if shown.strip():
            view.add_line(EventLine(time=view.clock(), level=logging.INFO, text=f"output: {shown}"))


@contextlib.contextmanager
def _captured(view: LiveView) -> Iterator[int]:
    """Point fd 2 (and fd 1 when it is the terminal too) at a pipe whose lines go to the view,
    so output of jobs, threads and child processes cannot tear the table; yield a descriptor of
    the terminal. Everything is put back on exit."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    targets = [2] + ([1] if os.isatty(1) else [])
    saved = {fd: os.dup(fd) for fd in targets}
    read_end, write_end = os.pipe()
    for fd in targets:
        os.dup2(write_end, fd)
    os.close(write_end)
    reader = threading.Thread(target=_pump, args=(read_end, view), name="qtasks-output")
    reader.daemon = True
    reader.start()
    try:
        yield saved[2]
    finally:
        from qtasks_cli import exiting

        exiting.flush_stdio()  # bounded: a job may have put a stream there whose flush hangs
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        # EOF reaches the reader once no process holds the pipe; a job's child may keep it.
        reader.join(timeout=0.5)


@contextlib.contextmanager
def _no_echo(fd: int) -> Iterator[None]:
    """Keys typed while the table is up are not echoed over it (Ctrl-C still interrupts)."""
    try:
        import termios

        before = termios.tcgetattr(fd)
    except Exception:  # no termios, or not a terminal: nothing to do
        yield
        return
    quiet = list(before)
    quiet[3] &= ~termios.ECHO
    try:
        termios.tcsetattr(fd, termios.TCSANOW, quiet)
    except termios.error:
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(termios.error):
            termios.tcsetattr(fd, termios.TCSANOW, before)


def _size(fd: int) -> tuple[int, int]:
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return 80, 24
    return max(20, size.columns), max(3, size.lines)


def _encoding(stream: TextIO) -> str:
    return getattr(stream, "encoding", None) or "utf-8"


def run_live(serve: Callable[[Callable[[Any], None]], Awaitable[int]], *, bus: EventBus) -> int:
    """Run the daemon as ``serve(on_ready)`` (``api.serve`` with its ``on_ready``) under the live
    table on the terminal behind stderr; return its exit code. The terminal is restored on every
    way out; a few closing lines are then written to stderr."""
    encoding = _encoding(sys.stderr)
    view = LiveView(ascii_only="utf" not in encoding.lower())
    bus.subscribe(view.on_event)
    bus.subscribe(ui_log.log_event)
    ui_log.configure("plain")  # for anything logged after the view has closed
    handler = LiveHandler(view)
    try:
        return _run_drawn(serve, view, handler, encoding)
    finally:
        _farewell(view)


def _run_drawn(
    serve: Callable[[Callable[[Any], None]], Awaitable[int]],
    view: LiveView,
    handler: logging.Handler,
    encoding: str,
) -> int:
    from qtasks_cli.ui.screen import Screen

    with _captured(view) as tty_fd, _no_echo(tty_fd):
        tty = os.fdopen(os.dup(tty_fd), "w", encoding=encoding, errors="replace")
        width, height = _size(tty_fd)
        console = Console(file=tty, force_terminal=True, width=width, height=height)
        restore_logging = ui_log.use_handler(handler)
        live = Live(
            view.frame(width, height),
            console=console,
            screen=True,
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )

        def paint(frame: tuple[tuple[int, int], RenderableType]) -> None:
            size, renderable = frame
            console.size = size
            live.update(renderable, refresh=True)

        def lost(exc: OSError) -> None:
            loop = view._loop
            if loop is None:
                view.lose_terminal(exc)
            else:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(view.lose_terminal, exc)

        # Every write to the terminal happens on the screen's thread: a terminal stopped with
        # Ctrl-S blocks that thread, never the loop that fires jobs.
        screen = Screen(
            paint=paint,
            begin=lambda: live.start(refresh=True),
            end=live.stop,
            on_error=lost,
        )

        def draw() -> None:
            if view.terminal_lost:
                return
            size = _size(tty_fd)
            screen.show((size, view.frame(*size)))

        async def main() -> int:
            view.start(draw)
            try:
                return await serve(view.attach)
            finally:
                await view.stop()

        closed = False
        try:
            # Not asyncio.run: a job that ignores its cancellation must not keep us alive.
            from qtasks_cli.api import run_until_done

            return run_until_done(main())
        finally:
            closed = screen.close(SCREEN_CLOSE_WAIT)
            restore_logging()
            if closed:  # a thread blocked on the terminal holds the file: leave it to exit
                with contextlib.suppress(OSError):
                    tty.close()
            else:
                view.terminal_stalled = True


def _farewell(view: LiveView) -> None:
    """Leave the last lines (those of the stop, or the latest if it failed) on the terminal."""
    if view.terminal_lost:
        return
    with contextlib.suppress(OSError):
        for line in view.since_stop():
            stamp = line.time.astimezone().strftime("%H:%M:%S")
            print(f"{stamp} {line.text}", file=sys.stderr)
        if view.source is not None:  # it got as far as supervising
            print(view.summary(), file=sys.stderr)
