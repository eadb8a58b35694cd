"""Bounded output: nothing written to stdout, stderr or the journal can block the event loop.

Every write goes into a bounded queue that a daemon thread drains into the file descriptor. When
the reader stalls (a pipe nobody reads, a terminal stopped with Ctrl-S), the thread blocks in
``write`` and the queue fills; then new lines are dropped and counted, and a notice says how many
once the reader is back. Log records travel the same way through the standard
``logging.handlers.QueueHandler``/``QueueListener``, so they are formatted off the loop too.

The threads write to descriptor numbers 1 and 2, not to copies, so a redirection of those
descriptors (the live table's capture) applies to them. Exiting waits for the queues to drain
only while the reader makes progress, and never longer than ``EXIT_WAIT`` seconds.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import logging
import logging.handlers
import os
import queue
import select
import sys
import threading
import time
from typing import Any, ClassVar, TextIO

from qtasks_cli import redaction
from qtasks_cli.text import clean_text, strip_sequences
from qtasks_cli.ui import records

MAX_QUEUED = 10_000  # records or written chunks waiting per stream
MAX_QUEUED_CHARS = 32 << 20  # characters waiting per stream; one write is cut to this
BATCH_BYTES = 64 * 1024  # written in one system call when that much is waiting
EXIT_WAIT = 5.0  # seconds the exit may wait for a reader that keeps reading
STALL_WAIT = 1.0  # seconds without progress after which the exit stops waiting
HOLD_WAIT = 0.2  # seconds a partial line waits for its end before it goes out as it is
HOLD_CHARS = 64 * 1024  # a partial line longer than this goes out without waiting
SECRET_WAIT = 5.0  # seconds the possible start of a secret waits for the rest of its line

_notices = logging.getLogger("qtasks.output")


class _Dropped:
    """A drop counter shared by the threads that write and the one that reports."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lines = 0
        self.total = 0

    def add(self, lines: int) -> None:
        with self._lock:
            self._lines += lines
            self.total += lines

    def take(self) -> int:
        with self._lock:
            lines, self._lines = self._lines, 0
            return lines


def _write_all(fd: int, data: bytes) -> bool:
    """Write ``data`` to ``fd`` (blocking: this runs on a drain thread); False if the
    descriptor is gone (closed pipe, hung-up terminal)."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except InterruptedError:
            continue
        except BlockingIOError:  # someone made the descriptor non-blocking: wait for room
            with contextlib.suppress(OSError, ValueError):
                select.select([], [fd], [], 1.0)
            continue
        except OSError:
            return False
        view = view[written:]
    return True


class _Drain:
    """One bounded queue and the daemon thread that empties it into a descriptor."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd = fd
        self.name = name
        self.queue: queue.Queue[Any] = queue.Queue(MAX_QUEUED)
        self.dropped = _Dropped()
        self.written = 0  # chunks written, for the exit's progress check
        self._size_lock = threading.Lock()
        self._queued_chars = 0
        self.broken = False
        self.ends_line = True  # what was written last ended a line
        self._thread = threading.Thread(target=self._run, name=f"qtasks-{name}", daemon=True)
        self._thread.start()

    def put(self, item: Any, lines: int = 1, size: int = 0) -> bool:
        """Queue ``item`` (``size`` characters) without waiting; drop it (and count ``lines``)
        when the queue is full. True when queued."""
        with self._size_lock:
            if self._queued_chars + size > MAX_QUEUED_CHARS:
                self.dropped.add(lines)
                return False
            self._queued_chars += size
        try:
            self.queue.put_nowait((item, size))
        except queue.Full:
            self._release(size)
            self.dropped.add(lines)
            return False
        return True

    def _release(self, size: int) -> None:
        with self._size_lock:
            self._queued_chars -= size

    def _take(self, entry: tuple[Any, int]) -> bytes:
        self._release(entry[1])
        return self.render(entry[0])

    def render(self, item: Any) -> bytes:
        raise NotImplementedError

    def notice(self, lines: int) -> None:
        """Say that ``lines`` were dropped (the reader is back)."""

    def release(self) -> bytes:
        """What was held back, now that no more text came for ``HOLD_WAIT`` seconds."""
        return b""

    def held(self) -> bool:
        """Whether text is held back for its line's end (see ``_TextDrain``)."""
        return False

    def join(self, batch: list[Any]) -> bytes:
        """The bytes of a batch of queued items (``final``: nothing more is coming soon)."""
        return b"".join(self._take(entry) for entry in batch)

    def _run(self) -> None:
        while True:
            try:
                first = self.queue.get(timeout=HOLD_WAIT) if self.held() else self.queue.get()
            except queue.Empty:
                first = None  # a held partial line has waited long enough: out with it
            batch = [] if first is None else [first]
            size = 0 if first is None else max(first[1], 100)  # a log record: about 100
            while first is not None and size < BATCH_BYTES:
                try:
                    more = self.queue.get_nowait()
                except queue.Empty:
                    break
                batch.append(more)
                size += max(more[1], 100)
            try:
                data = self.join(batch) if batch else self.release()
            except BaseException:  # nothing a job wrote may stop this thread
                data = b"(qtasks: output that could not be written was dropped)\n"
            if self.broken or not _write_all(self.fd, data):
                self.broken = True  # nobody reads any more: drop quietly
            if data:
                self.ends_line = data.endswith(b"\n")
            self.written += len(batch)
            for _ in batch:
                self.queue.task_done()
            # The notice waits for the end of the line being written, so that it is never
            # glued to a line's first half (where stdout and stderr share one pipe).
            if self.ends_line and not self.broken:
                lost = self.dropped.take()
                if lost:
                    self.notice(lost)

    def settle(self, deadline: float) -> None:
        """Wait until the queue is empty (and a little for the last write), while the
        reader makes progress, until ``deadline`` (time.monotonic())."""
        last, since = self.written, time.monotonic()
        while (self.queue.unfinished_tasks or self.held()) and not self.broken:
            now = time.monotonic()
            if now >= deadline or now - since > STALL_WAIT:
                return
            time.sleep(0.01)
            if self.written != last:
                last, since = self.written, time.monotonic()


def _shown(text: str) -> str:
    """Job output made safe to show: secrets hidden, then each line stripped of terminal
    control (a job's ``\r`` progress redraws keep their last part), then secrets hidden again
    (an escape sequence or invisible character inside a secret must not hide it)."""
    lines = redaction.redact_known(text).split("\n")
    shown = "\n".join(
        clean_text(strip_sequences(line).rstrip("\r").rsplit("\r", 1)[-1]) for line in lines
    )
    return redaction.redact_known(shown) if shown != text else shown


class _TextDrain(_Drain):
    """What ``print`` writes to the process's stdout or stderr.

    Dropping works on whole lines: ``print`` writes a line in pieces (the text, then ``\n``),
    and once a piece of a line is dropped the rest of that line is dropped too, so the output
    holds no line with its middle missing, and a line counts once however many writes made it.
    A line whose first part was already written when the queue filled is ended with a ``\n``
    of its own, before the next line."""

    def __init__(self, fd: int, name: str, encoding: str, errors: str) -> None:
        self.encoding, self.errors = encoding, errors
        self._line_lock = threading.Lock()
        self._at_start = True  # the next text starts a line
        self._dropping = False  # the rest of the current line is being dropped
        self._owe_newline = False  # a line's first part went out without its end
        self._held = ""  # the start of a line, waiting for its end (drain thread only)
        self._held_since: float | None = None  # when a possible secret's start was first held
        super().__init__(fd, name)

    def offer(self, text: str) -> None:
        """Queue ``text`` (one ``write``), dropping whole lines when the queue is full."""
        with self._line_lock:
            if self._dropping:
                end = text.find("\n")
                if end < 0:
                    return  # still the line being dropped
                text, self._dropping, self._at_start = text[end + 1 :], False, True
                if not text:
                    return
            lines = text.count("\n") + (0 if text.endswith("\n") else 1)
            if not self._at_start and text.startswith("\n"):
                lines -= 1  # only the end of a line already out: the newline is owed, not lost
            queued = "\n" + text if self._owe_newline else text
            if self.put(queued, lines, len(queued)):
                self._owe_newline = False
                self._at_start = text.endswith("\n")
                return
            if not self._at_start:
                self._owe_newline = True  # the line's first part is queued or written
            self._dropping = not text.endswith("\n")
            self._at_start = not self._dropping

    def render(self, item: Any) -> bytes:
        return self._encode(item)

    def _encode(self, text: str) -> bytes:
        try:
            return str.encode(text, self.encoding, "surrogateescape")  # bytes from .buffer
        except UnicodeEncodeError:  # a lone surrogate, or a character the encoding lacks
            return str.encode(text, self.encoding, "backslashreplace")

    def held(self) -> bool:
        return bool(self._held)

    def join(self, batch: list[Any]) -> bytes:
        """Job output is shown the way the README promises: whole lines, each with terminal
        control stripped (``clean_output``'s rules, line breaks kept) and the loaded job
        files' ``${NAME}`` values hidden (``redaction.redact_known``), here on the drain
        thread, never on the writer's (the event loop's). A line is held until its end comes,
        for ``HOLD_WAIT`` seconds at most (``HOLD_CHARS`` at most), and lines that end with
        the first lines of a multi-line secret until the rest comes."""
        text = self._held + "".join(self._take_text(entry) for entry in batch)
        cut = text.rfind("\n") + 1
        if cut:
            cut = redaction.hold_back(text[:cut])
        if len(text) - cut > HOLD_CHARS:
            cut = len(text)
        self._held = text[cut:]
        if cut:
            self._held_since = None
        return self._encode(_shown(text[:cut])) if cut else b""

    def release(self) -> bytes:
        """The held partial line, but for an end that may be the start of a secret (a job
        writing ``"Bearer " + token[:6]``, flushing, then the rest): that waits for more, up to
        ``SECRET_WAIT`` seconds in all."""
        held, now = self._held, time.monotonic()
        if self._held_since is None:
            self._held_since = now
        keep = 0 if now - self._held_since > SECRET_WAIT else redaction.secret_start(held)
        self._held = held[len(held) - keep :] if keep else ""
        if not self._held:
            self._held_since = None
        out = held[: len(held) - keep]
        return self._encode(_shown(out)) if out else b""

    def _take_text(self, entry: tuple[Any, int]) -> str:
        self._release(entry[1])
        return str(entry[0])

    def notice(self, lines: int) -> None:
        _notices.warning(
            "%d line(s) written to fd %d were dropped: its reader was not keeping up",
            lines,
            self.fd,
        )


class BoundedStream(io.TextIOBase):
    """A text stream for ``sys.stdout``/``sys.stderr``: ``write`` queues the text and returns
    at once; a full queue drops it (counted). ``fileno``/``isatty`` are the real stream's."""

    def __init__(self, original: TextIO, fd: int, name: str) -> None:
        super().__init__()
        self.original = original
        self._fd = fd
        encoding = getattr(original, "encoding", None) or "utf-8"
        errors = getattr(original, "errors", None) or "backslashreplace"
        self.drain = _TextDrain(fd, name, encoding, errors)

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self.drain.encoding

    @property
    def errors(self) -> str:  # type: ignore[override]
        return self.drain.errors

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if not text:
            return 0
        size = len(text)
        if size > MAX_QUEUED_CHARS:
            self.drain.dropped.add(text.count("\n", MAX_QUEUED_CHARS) or 1)
            text = text[:MAX_QUEUED_CHARS] + "\n"
        self.drain.offer(text)
        return size

    def flush(self) -> None:
        """Nothing to do here: the drain thread writes as soon as it can."""

    @property
    def buffer(self) -> _Bytes:
        """For ``sys.stdout.buffer.write(b"...")``: bytes go the same bounded way."""
        return _Bytes(self)

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        try:
            return os.isatty(self._fd)
        except OSError:
            return False


class _Bytes(io.RawIOBase):
    """``BoundedStream.buffer``: bytes written are queued as text (undecodable bytes kept as
    surrogates, which the drain writes back as the same bytes)."""

    def __init__(self, stream: BoundedStream) -> None:
        super().__init__()
        self._stream = stream

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        raw = bytes(data)
        self._stream.write(raw.decode("utf-8", "surrogateescape"))
        return len(raw)


class _RecordDrain(_Drain):
    """Formats log records (off the loop) and writes them."""

    def __init__(self, fd: int, formatter: logging.Formatter) -> None:
        self.formatter = formatter
        super().__init__(fd, "log")

    def render(self, item: Any) -> bytes:
        if isinstance(item, str):
            return item.encode("utf-8", "backslashreplace")
        try:
            records.settle(item, "helper")  # one the loop left: job code, with a deadline
            text = self.formatter.format(item)
        except BaseException:
            text = f"(a log record could not be formatted: {item.name} {item.levelname})"
        return (text + "\n").encode("utf-8", "backslashreplace")

    def notice(self, lines: int) -> None:
        record = _notices.makeRecord(
            _notices.name,
            logging.WARNING,
            __file__,
            0,
            "%d log line(s) were dropped: the reader of the log was not keeping up",
            (lines,),
            None,
        )
        _write_all(self.fd, self.render(record))


class BoundedQueueHandler(logging.handlers.QueueHandler):
    """A QueueHandler that never blocks and never formats on the caller's thread: records
    wait, unformatted, in a bounded queue; a full queue drops them (counted)."""

    def __init__(self, drain: _RecordDrain) -> None:
        super().__init__(drain.queue)
        self.drain = drain

    def handle(self, record: logging.LogRecord) -> bool:
        """Without the handler's lock (the queue is thread-safe): a record whose text runs a
        job's code (ui.records) is made text by the thread that logged it, or by the drain
        thread with a deadline when that thread is the event loop's; a slow or hung text
        never holds another thread's log call. Filters (which only job code adds to this
        handler: ``for h in logging.getLogger().handlers: h.addFilter(...)``) see the job's
        records, never the daemon's: a slow one ran in every log line of the event loop, and
        one that raised killed the daemon's threads that log."""
        rv = True if records.is_daemons(record) else self.filter(record)
        if isinstance(rv, logging.LogRecord):
            record = rv
        if rv:
            records.here(record)
            self.emit(record)
        return bool(rv)

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record  # formatted by the drain thread: the records never leave the process

    def enqueue(self, record: logging.LogRecord) -> None:
        self.drain.put(record)


class _State:
    record_drain: _RecordDrain | None = None
    streams: ClassVar[list[BoundedStream]] = []


def log_handler(formatter: logging.Formatter, fd: int = 2) -> logging.Handler:
    """The handler of ``ui.log.configure``: records go to ``fd`` through a bounded queue,
    formatted by ``formatter`` on the drain thread. Also puts bounded streams in place of
    ``sys.stdout`` and ``sys.stderr`` (once)."""
    bound_stdio()
    drain = _State.record_drain
    if drain is None or drain.fd != fd:
        drain = _State.record_drain = _RecordDrain(fd, formatter)
    drain.formatter = formatter
    return BoundedQueueHandler(drain)


def bound_stdio() -> None:
    """Make ``sys.stdout`` and ``sys.stderr`` bounded streams on fds 1 and 2 (once)."""
    if _State.streams:
        return
    # A normal exit (sys.exit, an error message printed just before it) must not lose what is
    # queued: the drain threads are daemons and would be stopped mid-queue.
    atexit.register(_at_exit)
    for name, fd in (("stdout", 1), ("stderr", 2)):
        current = getattr(sys, name)
        if isinstance(current, BoundedStream) or current is None:
            continue
        try:
            if current.fileno() != fd:
                continue
        except (OSError, ValueError, io.UnsupportedOperation):
            continue  # replaced by a test harness or a host: leave it alone
        with contextlib.suppress(Exception):
            current.flush()
        stream = BoundedStream(current, fd, name)
        _State.streams.append(stream)
        setattr(sys, name, stream)


def _at_exit() -> None:
    settle()
    for stream in _State.streams:
        if getattr(sys, stream.drain.name, None) is stream:
            setattr(sys, stream.drain.name, stream.original)


def dropped_total() -> int:
    """Lines dropped so far, log and stdio together."""
    drains: list[_Drain] = [s.drain for s in _State.streams]
    if _State.record_drain is not None:
        drains.append(_State.record_drain)
    return sum(d.dropped.total for d in drains)


def settle(timeout: float = EXIT_WAIT) -> None:
    """Give what is queued a bounded chance to be written (at exit): wait while the readers
    make progress, at most ``timeout`` seconds in all."""
    deadline = time.monotonic() + timeout
    drains: list[_Drain] = []
    if _State.record_drain is not None:
        drains.append(_State.record_drain)
    drains.extend(s.drain for s in _State.streams)
    for drain in drains:
        drain.settle(deadline)
