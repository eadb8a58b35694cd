"""The terminal behind the live table: keys typed not echoed over it, its size, its encoding."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TextIO


@contextlib.contextmanager
def no_echo(fd: int) -> Iterator[None]:
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


def size(fd: int) -> tuple[int, int]:
    """Columns and lines of the terminal on ``fd`` (80 by 24 when it cannot say)."""
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return 80, 24
    return max(20, size.columns), max(3, size.lines)


def encoding(stream: TextIO) -> str:
    """The encoding ``stream`` writes in (UTF-8 when it does not say)."""
    return getattr(stream, "encoding", None) or "utf-8"
