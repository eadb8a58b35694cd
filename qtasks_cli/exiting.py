"""The last steps before ``os._exit``: every flush and close is bounded.

A job may have replaced ``sys.stdout`` with an object whose ``flush`` waits for ever, or added
a log handler whose reader hung (``logging.shutdown`` takes each handler's lock, which a job
thread stuck in ``emit`` holds). Each step runs in a daemon thread that the exit waits for at
most a few seconds; what is still stuck then is left behind, and the process exits anyway.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import NoReturn

STEP_WAIT = 1.0  # seconds one flush or close of objects qtasks does not own may take
OUR_WAIT = 6.0  # seconds qtasks' own queued output may take (output.EXIT_WAIT and a margin)


def _within(fn: Callable[[], object], seconds: float) -> bool:
    """Run ``fn`` in a daemon thread; wait at most ``seconds``; True if it ended in time."""
    done = threading.Event()

    def target() -> None:
        with contextlib.suppress(BaseException):
            fn()
        done.set()

    try:
        threading.Thread(target=target, name="qtasks-exit", daemon=True).start()
    except RuntimeError:  # no thread can start: not waited for (it might never end)
        return False
    return done.wait(max(seconds, 0.0))


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a job may have closed or replaced them
            # A line the secret-hiding tees still hold goes to the queue now.
            getattr(stream, "flush_all", stream.flush)()


def flush_stdio(seconds: float = STEP_WAIT) -> bool:
    """Flush ``sys.stdout`` and ``sys.stderr`` (a job may have replaced them), waiting at most
    ``seconds``; True if that ended in time."""
    return _within(_flush_stdio, seconds)


def _drain_log() -> None:
    log_module = sys.modules.get("qtasks_cli.ui.log")
    if log_module is not None:
        log_module.drain()  # events still waiting to become log lines, then a bounded settle


def exit_now(code: int) -> NoReturn:
    """Flush what can be flushed, each step bounded, then ``os._exit(code)``: never waits on
    job threads that never returned (they were reported), nor on a job's streams or handlers.
    Takes at most OUR_WAIT + 2 * STEP_WAIT seconds."""
    stdio_ok = flush_stdio()
    _within(_drain_log, OUR_WAIT)
    # The remaining handlers (a job's own among them) get one bounded chance to flush.
    if _within(logging.shutdown, STEP_WAIT) and stdio_ok:
        flush_stdio()
    os._exit(code)
