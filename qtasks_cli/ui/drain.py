"""A bounded queue and the daemon thread that drains it into a file descriptor (``_Drain``).

Writing never waits: an item is queued or, when the queue is full (``MAX_QUEUED`` items or
``MAX_QUEUED_CHARS`` characters), dropped and counted. The thread blocks in ``write`` while the
reader stalls (a pipe nobody reads, a terminal stopped with Ctrl-S); once the reader is back it
says how many lines were dropped (``notice``). The kinds of items: ui.text_drain (what ``print``
writes) and ui.output (log records)."""

from __future__ import annotations

import contextlib
import os
import queue
import select
import threading
import time
from typing import Any

MAX_QUEUED = 10_000  # records or written chunks waiting per stream
MAX_QUEUED_CHARS = 32 << 20  # characters waiting per stream; one write is cut to this
BATCH_BYTES = 64 * 1024  # written in one system call when that much is waiting
STALL_WAIT = 1.0  # seconds without progress after which the exit stops waiting
HOLD_WAIT = 0.2  # seconds a partial line waits for its end before it goes out as it is


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
