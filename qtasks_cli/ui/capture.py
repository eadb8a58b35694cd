"""Job output under the live table: fd 2 (and fd 1 when it is the terminal) point at a pipe
whose lines a thread shows in the view's events area, so that no ``print`` of a job, a thread
or a child process can tear the table."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator

from qtasks_cli.redaction import hold_back
from qtasks_cli.ui.lines import LineCutter
from qtasks_cli.ui.live import LiveView, _show_output


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


@contextlib.contextmanager
def captured(view: LiveView) -> Iterator[int]:
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
