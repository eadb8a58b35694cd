"""The last lines each run printed, for ``qtasks show``.

The daemon's ``sys.stdout`` and ``sys.stderr`` become tees: every write still goes where it
went, and a write made inside a run (its task, and the threads it starts, which copy the
task's context) is also kept in that run's bounded buffer. The buffer is opened by the
run's STARTED event and closed by its FINISHED event, both emitted inside the run's task;
the lines are then handed to the control thread, which stores them off the loop.

Only Python-level writes are seen: a child process (``isolation: process``, ``os.system``)
writes to the file descriptor directly and is not captured.

The tees also hide the ``${NAME}`` values of the loaded job files (``redaction.redact_known``)
in what passes through them, whole lines at a time (a secret may be written in pieces, or span
lines): a partial line, or lines that end with the first lines of a multi-line secret, are
held until more text comes, the stream is flushed, or they grow past ``HOLD_CHARS``.
``qtasks trigger`` puts the same tees around a foreground run (``hiding``).
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import sys
import threading
from collections.abc import Iterator
from typing import Any, TextIO

from qtasks_cli import redaction
from qtasks_cli.events import Event, EventKind
from qtasks_cli.store.control import OUTPUT_KEPT_CHARS, OUTPUT_LINES


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
            self.partial = self.partial[-OUTPUT_KEPT_CHARS:]
            for line in complete[-OUTPUT_LINES:]:
                self.lines.append(line[:OUTPUT_KEPT_CHARS])

    def close(self) -> list[str]:
        with self.lock:
            if self.partial:
                self.lines.append(self.partial)
                self.partial = ""
            return list(self.lines)


# The run the current context belongs to; its buffer is made on its first write, so a run
# that prints nothing costs one ContextVar.set at its start and one at its end.
_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("qtasks_output", default=None)
_buffers: dict[str, _Buffer] = {}
_open: set[str] = set()  # runs between STARTED and FINISHED


HOLD_CHARS = 64 * 1024  # a partial line held back for redaction is let go beyond this


class _Tee:
    """A text stream that also feeds the current run's buffer, and hides secrets."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._held = ""  # the start of a line, waiting for its end (only with secrets)
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        run_id = _current.get()
        if run_id is not None and run_id in _open and isinstance(text, str):
            # Keeping output must never break the job's print.
            with contextlib.suppress(Exception):
                buffer = _buffers.get(run_id)
                if buffer is None:
                    buffer = _buffers.setdefault(run_id, _Buffer())  # atomic across threads
                buffer.write(text)
        if not redaction.known_secrets() or not isinstance(text, str):
            if self._held:
                self.flush_held()
            return self._stream.write(text)
        with self._lock:
            held = self._held + text
            cut = held.rfind("\n") + 1
            if cut:  # complete lines, but not the first lines of a secret without the rest
                cut = redaction.hold_back(held[:cut])
            if len(held) - cut > HOLD_CHARS:
                cut = len(held)
            self._held = held[cut:]
            if cut:
                self._stream.write(redaction.redact_known(held[:cut]))
        return len(text)

    def flush_held(self) -> None:
        """Write out a held partial line, secrets hidden."""
        with self._lock:
            held, self._held = self._held, ""
            if held:
                self._stream.write(redaction.redact_known(held))

    def flush(self) -> None:
        self.flush_held()
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def hiding() -> Iterator[None]:
    """Hide the loaded job files' secrets in what is written to ``sys.stdout`` and
    ``sys.stderr`` meanwhile (a foreground run's prints), as the daemon's tees do."""
    saved = (sys.stdout, sys.stderr)
    sys.stdout, sys.stderr = _Tee(sys.stdout), _Tee(sys.stderr)
    try:
        yield
    finally:
        for tee in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                tee.flush()
        sys.stdout, sys.stderr = saved


class Capture:
    """Installs the tees and collects finished runs' lines (``take`` from any thread)."""

    def __init__(self) -> None:
        self._done: collections.deque[tuple[str, str, list[str]]] = collections.deque(maxlen=10_000)
        self._saved: tuple[Any, Any] | None = None

    def install(self) -> None:
        if self._saved is not None:
            return
        self._saved = (sys.stdout, sys.stderr)
        sys.stdout = _Tee(sys.stdout)
        sys.stderr = _Tee(sys.stderr)

    def uninstall(self) -> None:
        if self._saved is not None:
            for tee in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    tee.flush()
            sys.stdout, sys.stderr = self._saved
            self._saved = None

    def sink(self, event: Event) -> None:
        """Bus sink; STARTED and FINISHED are emitted inside the run's own task."""
        run_id = event.run_id
        if run_id is None or event.job is None:
            return
        if event.kind is EventKind.STARTED:
            _open.add(run_id)
            _current.set(run_id)
        elif event.kind is EventKind.FINISHED and run_id in _open:
            _open.discard(run_id)
            if _current.get() == run_id:
                _current.set(None)
            found = _buffers.pop(run_id, None)
            # A thread abandoned by a timeout or cancel may still print: the run is no
            # longer open, so nothing is kept.
            lines = found.close() if found is not None else []
            if lines:
                self._done.append((event.job, run_id, lines))

    def take(self) -> list[tuple[str, str, list[str]]]:
        """The (job, run id, lines) of runs finished since the last call."""
        taken = []
        while self._done:
            taken.append(self._done.popleft())
        return taken
