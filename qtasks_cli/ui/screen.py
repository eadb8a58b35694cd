"""The thread that writes the live table to the terminal.

A terminal can stop reading: Ctrl-S (XOFF) stops its output until Ctrl-Q, and a write to it then
blocks. So the event loop never writes there: it builds the frame (a pure function of a snapshot)
and hands it over; this thread writes the latest frame when the terminal takes it. Frames built
while it is blocked replace each other, so a stopped terminal costs one frame of memory.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_START, _STOP = object(), object()


class Screen:
    """Writes frames with ``show`` from its own daemon thread.

    ``paint(frame)`` does the writing (Rich's ``Live.update(frame, refresh=True)``), ``begin``
    and ``end`` open and close the display (``Live.start``/``Live.stop``); all three run on
    the thread. ``on_error(exc)`` is called (on the thread) when writing raises OSError.
    """

    def __init__(
        self,
        *,
        paint: Callable[[Any], None],
        begin: Callable[[], None],
        end: Callable[[], None],
        on_error: Callable[[OSError], None],
    ) -> None:
        self._paint = paint
        self._begin = begin
        self._end = end
        self._on_error = on_error
        self._lock = threading.Lock()
        self._wanted = threading.Event()
        self._frame: Any = None
        self._stopping = False
        self.painted = 0  # frames written
        self.failed = False
        self._thread = threading.Thread(target=self._run, name="qtasks-screen", daemon=True)
        self._thread.start()

    def show(self, frame: Any) -> None:
        """Write ``frame`` as soon as the terminal takes it (replacing any frame not yet
        written); never blocks."""
        with self._lock:
            self._frame = frame
        self._wanted.set()

    def close(self, timeout: float) -> bool:
        """Write the last frame and close the display, waiting at most ``timeout`` seconds;
        False if the terminal did not take it in time (the thread is left behind)."""
        with self._lock:
            self._stopping = True
        self._wanted.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        if not self._call(self._begin):
            return
        try:
            while True:
                self._wanted.wait()
                with self._lock:
                    self._wanted.clear()
                    frame, self._frame = self._frame, None
                    stopping = self._stopping
                if frame is not None and not self.failed and self._call(self._paint, frame):
                    self.painted += 1
                if stopping:
                    return
        finally:
            self._call(self._end)

    def _call(self, fn: Callable[..., None], *args: Any) -> bool:
        try:
            fn(*args)
        except OSError as exc:  # the terminal hung up (its window was closed)
            if not self.failed:
                self.failed = True
                with contextlib.suppress(Exception):
                    self._on_error(exc)
            return False
        except Exception:
            log.exception("drawing the live table failed")
            return False
        return True
