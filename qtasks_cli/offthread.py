"""The daemon's own blocking work, kept apart from the threads jobs use.

Async jobs call blocking code the documented way, ``await asyncio.to_thread(f)`` or
``loop.run_in_executor(None, f)``, and both use the event loop's default executor: a pool of a
few threads. A job whose blocking call hangs (an HTTP request without a timeout) keeps its pool
thread for good, even after the run timed out; a few such runs fill the pool. Had the daemon used
that pool for its own work (reading the job file on SIGHUP, stopping its threads at SIGTERM), a
full pool would make it deaf to reloads and unable to stop.

So the daemon never waits on that pool: ``run`` does its blocking work in a fresh thread of its
own, and ``DaemonExecutor`` (the loop's default executor in the daemon) gives calls made by a job
(those that see the job's run in ``qtasks_cli.current_run()``) a bounded pool of their own, each
call in a copy of the caller's context, while
calls made by the daemon or the libraries it uses outside any run (``loop.getaddrinfo`` while the
PostgreSQL store reconnects) each get a fresh thread and never queue behind a job's hung calls.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from qtasks_cli.context import RUN_VAR

T = TypeVar("T")

JOB_WORKERS = 32  # threads for jobs' to_thread/run_in_executor calls (asyncio's default is 5-32)
IDLE_EXIT = 60.0  # seconds after which an idle job executor thread ends


def _start(fn: Callable[[], Any], name: str) -> concurrent.futures.Future[Any]:
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def target() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            result = fn()
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result(result)

    threading.Thread(target=target, name=name, daemon=True).start()
    return future


async def run(fn: Callable[..., T], *args: Any, name: str = "qtasks-work") -> T:
    """``fn(*args)`` in a new daemon thread of the daemon's own, awaited; what it raises is
    raised here. Cancelling the caller stops the wait, not the thread."""
    result: T = await asyncio.wrap_future(_start(lambda: fn(*args), name))
    return result


class DaemonExecutor(concurrent.futures.ThreadPoolExecutor):
    """The default executor of the daemon's loop: a job's calls share JOB_WORKERS daemon
    threads (a job's hung call holds one; once all are held, further calls of jobs wait in a
    queue, as with asyncio's own pool); everybody else's calls each get a fresh daemon thread.

    A ThreadPoolExecutor only because asyncio accepts nothing else; its own threads (which
    interpreter exit would join) are never started."""

    def __init__(self, job_workers: int = JOB_WORKERS) -> None:
        super().__init__(max_workers=1)
        self._limit = job_workers
        self._work: queue.SimpleQueue[tuple[concurrent.futures.Future[Any], Callable[[], Any]]]
        self._work = queue.SimpleQueue()
        self._guard = threading.Lock()
        self._workers = 0
        self._idle = 0

    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        if RUN_VAR.get() is None:
            return _start(lambda: fn(*args, **kwargs), "qtasks-executor")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        # The call runs in a copy of the job's context, as ``asyncio.to_thread`` does (but
        # ``loop.run_in_executor`` does not): what it prints is the run's output, and
        # ``qtasks_cli.current_run()`` answers in it.
        context = contextvars.copy_context()
        self._work.put((future, lambda: context.run(fn, *args, **kwargs)))
        with self._guard:
            if self._idle == 0 and self._workers < self._limit:
                self._workers += 1
                worker = threading.Thread(target=self._serve, name="qtasks-job-executor")
                worker.daemon = True
                # Started from an empty context: a shared worker belongs to no run.
                contextvars.Context().run(worker.start)
        return future

    def _serve(self) -> None:
        while True:
            with self._guard:
                self._idle += 1
            try:
                future, call = self._work.get(timeout=IDLE_EXIT)
            except queue.Empty:
                with self._guard:
                    self._idle -= 1
                    if self._work.empty():  # else a submit counted on this thread: serve it
                        self._workers -= 1
                        return
                continue
            with self._guard:
                self._idle -= 1
            if future.set_running_or_notify_cancel():
                try:
                    result = call()
                except BaseException as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del future, call

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Never waits: a job's hung call must not hold up the daemon's exit."""
        with contextlib.suppress(Exception):
            super().shutdown(wait=False, cancel_futures=cancel_futures)
