"""The last lines each run printed, for ``qtasks show``.

The daemon's ``sys.stdout`` and ``sys.stderr`` become tees: every write still goes where it
went, and a write made inside a run (its task, and the threads it starts, which copy the
task's context) is also kept in that run's bounded buffer. The buffer is opened by the
run's STARTED event and closed by its FINISHED event, both emitted inside the run's task;
the lines are then handed to the control thread, which stores them off the loop.

Only Python-level writes are seen: a child process (``isolation: process``, ``os.system``)
writes to the file descriptor directly and is not captured.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import sys
import threading
from typing import Any, TextIO

from qtasks_cli.events import Event, EventKind
from qtasks_cli.store.control import OUTPUT_LINE_CHARS, OUTPUT_LINES


class _Buffer:
    __slots__ = ("lines", "lock", "partial")

    def __init__(self) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=OUTPUT_LINES)
        self.partial = ""
        self.lock = threading.Lock()

    def write(self, text: str) -> None:
        with self.lock:
            text = self.partial + text
            *complete, self.partial = text.split("\n")
            self.partial = self.partial[-OUTPUT_LINE_CHARS:]
            for line in complete[-OUTPUT_LINES:]:
                self.lines.append(line[:OUTPUT_LINE_CHARS])

    def close(self) -> list[str]:
        with self.lock:
            if self.partial:
                self.lines.append(self.partial)
                self.partial = ""
            return list(self.lines)


_current: contextvars.ContextVar[_Buffer | None] = contextvars.ContextVar(
    "qtasks_output", default=None
)


class _Tee:
    """A text stream that also feeds the current run's buffer."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        buffer = _current.get()
        if buffer is not None and isinstance(text, str):
            # Keeping output must never break the job's print.
            with contextlib.suppress(Exception):
                buffer.write(text)
        return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class Capture:
    """Installs the tees and collects finished runs' lines (``take`` from any thread)."""

    def __init__(self) -> None:
        self._done: collections.deque[tuple[str, str, list[str]]] = collections.deque(maxlen=10_000)
        self._open: dict[str, _Buffer] = {}
        self._saved: tuple[Any, Any] | None = None

    def install(self) -> None:
        if self._saved is not None:
            return
        self._saved = (sys.stdout, sys.stderr)
        sys.stdout = _Tee(sys.stdout)
        sys.stderr = _Tee(sys.stderr)

    def uninstall(self) -> None:
        if self._saved is not None:
            sys.stdout, sys.stderr = self._saved
            self._saved = None

    def sink(self, event: Event) -> None:
        """Bus sink; STARTED and FINISHED are emitted inside the run's own task."""
        if event.run_id is None or event.job is None:
            return
        if event.kind is EventKind.STARTED:
            buffer = _Buffer()
            self._open[event.run_id] = buffer
            _current.set(buffer)
        elif event.kind is EventKind.FINISHED:
            found = self._open.pop(event.run_id, None)
            if found is None:
                return
            if _current.get() is found:
                _current.set(None)
            lines = found.close()
            if lines:
                self._done.append((event.job, event.run_id, lines))

    def take(self) -> list[tuple[str, str, list[str]]]:
        """The (job, run id, lines) of runs finished since the last call."""
        taken = []
        while self._done:
            taken.append(self._done.popleft())
        return taken
