"""Running the daemon's event loop to its end, whatever job code leaves on it: SystemExit or
KeyboardInterrupt from a task or callback a job left behind, and ``loop.stop()`` by a job, are
logged and the loop goes on."""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_until_done(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on a new event loop and return its result without waiting for tasks a job
    left behind: a job that ignores its cancellation must not keep the process alive (the
    supervisor already reported it). The caller exits with ``os._exit`` afterwards."""
    import asyncio

    from qtasks_cli import keepstate, looperrors

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.set_exception_handler(looperrors.handle)  # no job code on the loop for its reports
    task = loop.create_task(main)
    while True:
        try:
            return loop.run_until_complete(task)
        except (SystemExit, KeyboardInterrupt) as exc:
            if task.done():  # qtasks' own code ended with it: not a job's
                raise
            keepstate.restore("one of the jobs")
            _escaped_from_job(exc)
        except RuntimeError:
            if task.done():
                raise
            # ``loop.stop()`` called by job code: the loop goes on (asyncio raises this).
            keepstate.restore("one of the jobs")  # a logger a job disabled must say it
            logging.getLogger("qtasks_cli.supervisor").error(
                "job code stopped the event loop (loop.stop()); ignored: the daemon goes on"
            )


def _escaped_from_job(exc: BaseException) -> None:
    """A task or callback a job left on the event loop (``asyncio.create_task(...)``,
    ``loop.call_soon``, ``loop.add_reader``) raised SystemExit or KeyboardInterrupt, which
    asyncio re-raises out of the loop: logged with where it was raised, and the loop goes on
    (its other tasks and callbacks are still scheduled). qtasks' own signal handling never
    raises them here."""
    import asyncio
    import traceback
    import types

    from qtasks_cli.failures import safe_str, type_name, user_frames

    what = ""
    tb = exc.__traceback__
    while tb is not None:
        # ``self`` of asyncio's ``Handle._run``: the callback (or a task's step) that raised.
        handle = tb.tb_frame.f_locals.get("self") if tb.tb_frame.f_code.co_name == "_run" else None
        if isinstance(handle, asyncio.Handle):
            callback = getattr(handle, "_callback", None)
            task = getattr(callback, "__self__", None)
            if isinstance(task, asyncio.Task):
                if task.done() and not task.cancelled():
                    task.exception()  # said here, not again as "Task exception was never retrieved"
            elif isinstance(callback, (types.FunctionType, types.BuiltinFunctionType)):
                what = f"callback {callback.__module__}.{callback.__qualname__}"
            # A reader's callback (``loop.add_reader``) would raise again at every turn.
            handle.cancel()
        tb = tb.tb_next
    frames = user_frames(traceback.extract_tb(exc.__traceback__))
    if frames:
        what = f"{what + ' ' if what else ''}at {frames[0].filename}:{frames[0].lineno}"
    logging.getLogger("qtasks_cli.supervisor").error(
        "job code raised %s(%s) on the event loop outside its run (a task or callback it left "
        "behind: %s); ignored, and a callback that raised it will not be called again: the "
        "daemon goes on",
        type_name(exc),
        safe_str(exc, 200),
        what or "its place is unknown",
    )
