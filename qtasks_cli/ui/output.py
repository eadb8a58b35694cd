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

MAX_QUEUED = 10_000  # records or written chunks waiting per stream
MAX_QUEUED_CHARS = 32 << 20  # characters waiting per stream; one write is cut to this
BATCH_BYTES = 64 * 1024  # written in one system call when that much is waiting
EXIT_WAIT = 5.0  # seconds the exit may wait for a reader that keeps reading
STALL_WAIT = 1.0  # seconds without progress after which the exit stops waiting

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

    def _run(self) -> None:
        while True:
            batch = [self._take(self.queue.get())]
            size = len(batch[0])
            while size < BATCH_BYTES:
                try:
                    more = self.queue.get_nowait()
                except queue.Empty:
                    break
                batch.append(self._take(more))
                size += len(batch[-1])
            data = b"".join(batch)
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
        while self.queue.unfinished_tasks and not self.broken:
            now = time.monotonic()
            if now >= deadline or now - since > STALL_WAIT:
                return
            time.sleep(0.01)
            if self.written != last:
                last, since = self.written, time.monotonic()


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
        return str.encode(item, self.encoding, self.errors)

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

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        try:
            return os.isatty(self._fd)
        except OSError:
            return False


class _RecordDrain(_Drain):
    """Formats log records (off the loop) and writes them."""

    def __init__(self, fd: int, formatter: logging.Formatter) -> None:
        self.formatter = formatter
        super().__init__(fd, "log")

    def render(self, item: Any) -> bytes:
        if isinstance(item, str):
            return item.encode("utf-8", "backslashreplace")
        try:
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
