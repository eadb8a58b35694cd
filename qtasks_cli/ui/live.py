"""The live view of ``qtasks run --ui live``: what its table shows, and how lines get there.

``render`` (ui.render) is a pure function of a snapshot, per-job tallies and event lines.
``LiveView`` keeps the tallies current from events (``record``, ui.tally) and redraws from an
asyncio task (ui.painter): on changes, at most 4 times a second, and once a second for the
countdowns. Log records reach its events area through ``LiveHandler``, and the output captured
from the process's stdout/stderr (ui.capture) through ``_show_output``, so neither a job's
``print`` nor a warning can tear the table. The terminal session around it: ui.live_session."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import signal
import threading
from collections import deque
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from rich.console import RenderableType
from rich.text import Text

from qtasks_cli.events import Event, EventKind
from qtasks_cli.models import Snapshot
from qtasks_cli.redaction import clean_output, redact_known
from qtasks_cli.text import clean_line
from qtasks_cli.ui import log as ui_log
from qtasks_cli.ui import records
from qtasks_cli.ui.humanize import span
from qtasks_cli.ui.lines import MAX_HELD
from qtasks_cli.ui.painter import Painter
from qtasks_cli.ui.render import render
from qtasks_cli.ui.tally import EventLine, JobTally, record

log = logging.getLogger(__name__)

MAX_LINES = 500  # event lines kept for the events area
MAX_LINES_PER_RECORD = 6  # a traceback must not push every other line out
_READ_CHARS = 64 * 1024  # of one record's text, at most, are read to show its few lines


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


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
        # Only what can be shown is redacted and cleaned (16 MB would hold the GIL for a
        # second), with room kept for a secret that spans the cut, so that it is hidden whole.
        head = text[: _READ_CHARS + records.MAX_CHARS]
        rows = [clean_line(row) for row in redact_known(head).splitlines()] or [""]
        total = len(rows) if len(head) == len(text) else text.count("\n") + 1
        if total > MAX_LINES_PER_RECORD:
            extra = total - MAX_LINES_PER_RECORD + 1
            rows = [*rows[: MAX_LINES_PER_RECORD - 1], f"  ({extra:,} more lines)"]
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
    """Log records into the view's events area (event records as ``describe_event`` lines).

    Never under the handler's lock, and never with job code on the event loop: a record whose
    text runs a job's code (ui.records) is made text by the thread that logged it, or, when
    that is the loop's, by this handler's own thread with a deadline."""

    def __init__(self, view: LiveView) -> None:
        super().__init__()
        self.view = view
        self._later: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._waiting = 0  # records handed to the thread and not shown yet (bounded)

    def handle(self, record: logging.LogRecord) -> bool:
        rv = self.filter(record)
        if isinstance(rv, logging.LogRecord):
            record = rv
        if rv:
            self.emit(record)
        return bool(rv)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            event: Event | None = getattr(record, "qtasks_event", None)
            if event is not None:
                # One row for the record (a job's line breaks shown as \n, as in the plain
                # log), then the daemon's own further lines (ui.log.event_text).
                text, more = ui_log.event_text(event)
                text = clean_line(redact_known(text[: _READ_CHARS + records.MAX_CHARS]))
                self.view.add_text(f"{text}\n{more}" if more else text, record.levelno, event.time)
            elif records.here(record):
                self._show(record)
            elif self._waiting < MAX_LINES:  # more waiting than the area shows: dropped
                self._waiting += 1
                self._later.put(record)
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="qtasks-live-records", daemon=True
                    )
                    self._thread.start()
        except Exception:
            self.handleError(record)
        except BaseException:
            self.view.add_text("(a log record could not be formatted)", logging.ERROR)

    def _run(self) -> None:
        while True:
            record = self._later.get()
            self._waiting -= 1
            with contextlib.suppress(Exception):
                records.settle(record, "helper")
                self._show(record)

    def _show(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_text:  # the table shows its last line: the exception's type and text
            lines = record.exc_text.rstrip().splitlines()
            text = f"{text}: {lines[-1]}" if lines else text
        when = datetime.fromtimestamp(record.created, timezone.utc)
        level = record.levelname if record.levelno >= logging.WARNING else ""
        self.view.add_text(f"{level} {text}".strip(), record.levelno, when)


# --- output lines --------------------------------------------------------------------------------


_SHOWN_CHARS = 2000  # of one output line; the table shows one screen line of it anyway
_CUT = f" … (the rest of this line, over {MAX_HELD // 1024} KiB, is not shown)"


def _show_output(view: LiveView, data: bytes, cut: bool = False) -> None:
    # A line of only blanks is not shown; one of a form feed or other control is, escaped
    # as every other path shows it (``clean_output``), so only the cleaned text decides.
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
