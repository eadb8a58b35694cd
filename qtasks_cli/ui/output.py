"""Bounded output: nothing written to stdout, stderr or the journal can block the event loop.

This module puts the bounded drains in place: ``bound_stdio`` makes ``sys.stdout`` and
``sys.stderr`` ``BoundedStream``s over text drains (ui.text_drain), ``log_handler`` gives logging
a ``BoundedQueueHandler`` whose records a ``_RecordDrain`` formats and writes, ``settle`` gives
what is queued a bounded chance at exit and ``dropped_total`` counts what was dropped.

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
import sys
import time
from typing import Any, ClassVar, TextIO

from qtasks_cli.ui import records
from qtasks_cli.ui.drain import MAX_QUEUED as MAX_QUEUED  # the tests size a flood by it
from qtasks_cli.ui.drain import MAX_QUEUED_CHARS, _Drain, _write_all
from qtasks_cli.ui.text_drain import _TextDrain

EXIT_WAIT = 5.0  # seconds the exit may wait for a reader that keeps reading

_notices = logging.getLogger("qtasks.output")


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
