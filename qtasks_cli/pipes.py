"""A reader that stops reading ends the output, never the command: ``qtasks status | head -1``
exits with the code ``status`` means (0 up, 3 none), not 1 (which means "a job failed") nor
with a traceback.

Python ignores SIGPIPE, so a write to a pipe whose reader has gone raises BrokenPipeError,
often only when the buffer is flushed at exit. ``guard_stdio`` puts a thin proxy around
``sys.stdout`` and ``sys.stderr``: the first write or flush that finds the pipe closed points
that descriptor at /dev/null (as the Python documentation advises, so the interpreter's last
flush at exit is quiet too), and the command carries on and exits with its own code, having
written nothing more. A BrokenPipeError that escapes by another path (a library writing to the
raw buffer) ends the command quietly with EXIT_PIPE, as a tool killed by SIGPIPE would.

Any other write error (``qtasks status > /dev/full``: ENOSPC, EIO) is said once on stderr as
one line, and the command exits with EXIT_OUTPUT (EX_IOERR, sysexits(3)) instead of its own
code, never with a traceback: its work is done, but what it printed is lost.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, TextIO

EXIT_PIPE = 128 + 13  # what a shell reports for a process ended by SIGPIPE
EXIT_OUTPUT = 74  # EX_IOERR in sysexits(3): the output could not be written (a full disk)


def silence(stream: Any) -> None:
    """Point ``stream``'s descriptor at /dev/null (its reader has gone); never raises."""
    with contextlib.suppress(Exception):
        fd = stream.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, fd)
        finally:
            os.close(devnull)


class PipeGuard:
    """``stream`` whose writes and flushes swallow a broken pipe (see the module)."""

    failed: OSError | None = None  # the first write error other than a closed pipe, any stream

    def __init__(self, stream: TextIO, name: str) -> None:
        self._stream = stream
        self._name = name
        self.broken = False

    def write(self, text: str) -> int:
        if self.broken:
            return len(text)
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._break()
        except OSError as exc:  # a full disk, an I/O error: said once, then nothing more
            self._fail(exc)
        return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._break()
        except OSError as exc:
            self._fail(exc)
        else:
            return
        with contextlib.suppress(Exception):  # what was buffered now goes to /dev/null
            self._stream.flush()

    def _break(self) -> None:
        self.broken = True
        silence(self._stream)

    def _fail(self, exc: OSError) -> None:
        self._break()
        if PipeGuard.failed is None:
            PipeGuard.failed = exc
        if self._name != "stderr":
            line = f"qtasks: cannot write to {self._name}: {exc.strerror or exc}\n"
            with contextlib.suppress(OSError):
                os.write(2, line.encode("utf-8", "backslashreplace"))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def guard_stdio() -> None:
    """Wrap ``sys.stdout`` and ``sys.stderr`` in a PipeGuard (once)."""
    if sys.stdout is not None and not isinstance(sys.stdout, PipeGuard):
        sys.stdout = PipeGuard(sys.stdout, "stdout")
    if sys.stderr is not None and not isinstance(sys.stderr, PipeGuard):
        sys.stderr = PipeGuard(sys.stderr, "stderr")


def exit_code(code: int) -> int:
    """``code``, or EXIT_OUTPUT when the output could not be written (the command's work is
    done: a pause is stored; what it printed is lost, which a script must learn)."""
    if PipeGuard.failed is not None:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        return EXIT_OUTPUT
    return code


def quiet_exit() -> int:
    """After a BrokenPipeError escaped: silence both streams and return EXIT_PIPE."""
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        if stream is not None:
            silence(stream)
    return EXIT_PIPE
