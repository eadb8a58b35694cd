"""The event loop's exception handler: asyncio's reports of errors no one awaited, made text
without a job's code on the loop.

asyncio calls the loop's exception handler for a task whose exception was never retrieved (an
async job's fire-and-forget task), a callback that raised, a transport that failed. Its default
handler formats ``repr(task)`` and the traceback on the calling thread, the event loop's or
whichever thread the garbage collector freed the task on, running the exception's
``__repr__``/``__str__``: a job's code, which may be slow, hang or raise SystemExit. Here the
caller only reads types and names; the text is made by one thread of its own, through
``failures.describe_exception`` in a helper thread with a deadline, and logged from there.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import threading
import types
from typing import Any

from qtasks_cli import failures, offloop
from qtasks_cli.redaction import redact_known

log = logging.getLogger("qtasks_cli.supervisor")

MAX_WAITING = 1000  # reports waiting for their text; more are counted and dropped


class _Reports:
    waiting: queue.SimpleQueue[tuple[str, str, BaseException]] = queue.SimpleQueue()
    count = 0  # reports waiting
    dropped = 0
    thread: threading.Thread | None = None
    lock = threading.Lock()


def _where(context: dict[str, Any]) -> str:
    """The task or callback a report is about, from types and names only."""
    task = context.get("task") or context.get("future")
    if isinstance(task, asyncio.Task):
        coro = task.get_coro()
        name = (
            coro.__qualname__
            if type(coro) is types.CoroutineType
            else failures.class_name(type(coro))
        )
        return f"task {task.get_name()} ({name})"
    if isinstance(context.get("handle"), asyncio.Handle):
        return "a callback"
    return "the event loop"


def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """``loop.set_exception_handler``'s handler (see the module docstring). Never raises."""
    try:
        message = context.get("message")
        text = failures.plain_str(message, 500) or "an error on the event loop"
        where = _where(context)
        exc = context.get("exception")
        if not isinstance(exc, BaseException):
            log.error("%s (%s)", text, where)
            return
        with _Reports.lock:
            if _Reports.count >= MAX_WAITING:
                _Reports.dropped += 1
                return
            _Reports.count += 1
            if _Reports.thread is None:
                _Reports.thread = threading.Thread(
                    target=_run, name="qtasks-loop-errors", daemon=True
                )
                _Reports.thread.start()
        _Reports.waiting.put((text, where, exc))
    except BaseException:  # a report must never break the loop
        log.debug("an event loop error could not be reported", exc_info=True)


def _run() -> None:
    while True:
        message, where, exc = _Reports.waiting.get()
        with _Reports.lock:
            _Reports.count -= 1
            dropped, _Reports.dropped = _Reports.dropped, 0
        name = failures.type_name(exc)
        fallback: tuple[str, str, str | None] = (
            name,
            f"<{name}: its text could not be read in time>",
            None,
        )
        error_type, text, _ = offloop.in_helper(
            functools.partial(failures.describe_exception, exc, redact_known), fallback=fallback
        )
        log.error("%s (%s, left behind by a job): %s: %s", message, where, error_type, text)
        if dropped:
            log.warning("%d more such report(s) were dropped: too many at once", dropped)
        del exc
