"""The live table of ``qtasks run --ui live``: one row per job, the latest events, a footer.

``render`` (ui.render) is a pure function of a snapshot, per-job tallies and event lines.
``LiveView`` keeps the tallies current from events (``record``, ui.tally) and redraws from an
asyncio task: on changes, at most 4 times a second, and once a second for the countdowns. While
the view is up, the process's stdout/stderr file descriptors and every log record are routed
into its events area, so neither a job's ``print`` nor a warning can tear the table.

This module imports Rich's live display at import time; only the live UI imports it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import queue
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timezone
from typing import Any, TextIO

from rich.console import Console, RenderableType
from rich.live import Live
from rich.text import Text

from qtasks_cli.events import Event, EventBus, EventKind
from qtasks_cli.models import Snapshot
from qtasks_cli.redaction import clean_output, hold_back, redact_known
from qtasks_cli.text import clean_line
from qtasks_cli.ui import log as ui_log
from qtasks_cli.ui import records
from qtasks_cli.ui.humanize import span
from qtasks_cli.ui.lines import MAX_HELD, LineCutter
from qtasks_cli.ui.render import render
from qtasks_cli.ui.tally import EventLine, JobTally, record

log = logging.getLogger(__name__)

MAX_REDRAWS_PER_SECOND = 4.0
MAX_LINES = 500  # event lines kept for the events area
MAX_LINES_PER_RECORD = 6  # a traceback must not push every other line out
_READ_CHARS = 64 * 1024  # of one record's text, at most, are read to show its few lines
SCREEN_CLOSE_WAIT = 2.0  # seconds the exit waits for a stopped terminal to take the last frame


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


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
                self.view.add_text(ui_log.describe_event(event), record.levelno, event.time)
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
            from qtasks_cli.looprun import run_until_done

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
