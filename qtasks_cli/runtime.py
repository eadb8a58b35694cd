"""What all runs of one process share: who holds what (``occupancy.Occupancy``: the
concurrency cap and per job its runs), the threads that run sync job code and those that
outlived their run, the tasks that ignored their cancellation, running hooks, and the child
processes of ``isolation: process`` jobs (``Runtime``); and what a call did, as a value
(``Outcome``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qtasks_cli import release
from qtasks_cli.models import RunStatus
from qtasks_cli.occupancy import Capacity, Occupancy

if TYPE_CHECKING:
    from qtasks_cli.isolation.pool import Workers

# The executor's logger, as before the runtime moved out of it: its records keep their name
# (the JSON log's "logger").
log = logging.getLogger("qtasks_cli.executor")


# --- threads and the runtime ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a call did, as a value: asyncio re-raises SystemExit and KeyboardInterrupt that
    escape a task or a future, so nothing a job raises may travel as an exception there."""

    value: Any = None
    error: BaseException | None = None


class _JobRaised(BaseException):
    """A sync job's exception on its way up the loop's frames, raised in its place.

    CPython normalizes an exception at each ``except``/``finally`` it passes, and that calls
    ``__subclasscheck__`` of the exception class's metaclass: job code, on the loop, once per
    daemon frame (a metaclass that took 1 s there made a per-second job miss fires). This
    class's metaclass is ``type``. ``unwrap`` gives the job's exception back where it is
    recorded (``bounded``, ``guarded``, a generator's handler)."""

    def __init__(self, inner: BaseException) -> None:
        super().__init__()
        self.inner = inner


def unwrap(exc: BaseException) -> BaseException:
    """The job's own exception, where ``exc`` stands in for it (see ``_JobRaised``)."""
    return exc.inner if type(exc) is _JobRaised else exc


def _capture(fn: Callable[..., Any], *args: Any) -> Outcome:
    try:
        return Outcome(value=fn(*args))
    except BaseException as exc:
        return Outcome(error=exc)


async def guarded(awaitable: Awaitable[Any]) -> Outcome:
    """What ``awaitable`` did, as a value: it never raises."""
    try:
        return Outcome(value=await awaitable)
    except BaseException as exc:
        return Outcome(error=unwrap(exc))


class Runtime:
    """Shared by all runs of one process: the concurrency cap, the threads for sync code and
    the child processes of ``isolation: process`` jobs.

    Sync code runs in a daemon thread per call, named ``qtasks-job-N``. A run uses one thread at
    a time and holds a capacity unit, so the cap bounds the threads. Not a ThreadPoolExecutor:
    its workers are joined at interpreter exit, so one stuck job would hang shutdown, and a
    worker kept busy by a timed-out call would starve the retry or hook that follows it.
    """

    def __init__(self, max_concurrent: int, on_freed: Callable[[str], None] | None = None) -> None:
        # Who holds what: runs, slots, and per owner the threads that outlived their run (and
        # the tasks that ignored their cancellation), which keep counting for its overlap
        # rule, so one hung job holds one slot, not every slot; on_freed(owner) when one ends.
        self.occupancy = Occupancy(max_concurrent, on_freed)
        # Runs given up on (a timeout or a cancel) whose thread, or task that ignored its
        # cancellation, still runs: run id -> job. What ``status`` and the metrics show.
        self.abandoned: dict[str, str] = {}
        # Why a run's task is being cancelled (run id -> "cancelled by ..."), set by whoever
        # cancels it, for the FINISHED event; "cancelled" when nobody said.
        self.why_cancelled: dict[str, str] = {}
        # Runs another node concluded while this daemon did not answer (qtasks_cli.fencing):
        # run id -> the status the store holds, which their FINISHED event says.
        self.concluded: dict[str, RunStatus] = {}
        self._closed = False
        self._numbers = itertools.count(1)
        self._stray: set[asyncio.Task[Any]] = set()
        self._hooks: set[asyncio.Task[None]] = set()  # on_success/on_failure hooks running
        self._workers: Workers | None = None
        # A zombie thread's future, resolved when it returns: what a retry waits on.
        self._returned: dict[threading.Thread, asyncio.Future[Any]] = {}

    @property
    def capacity(self) -> Capacity:
        """The max_concurrent slots (``occupancy.capacity``)."""
        return self.occupancy.capacity

    @property
    def zombies(self) -> int:
        """Threads and tasks that outlived their run and have not ended yet."""
        return self.occupancy.zombies

    @property
    def workers(self) -> Workers:
        """The child processes of process jobs; the first use imports ``isolation``."""
        if self._workers is None:
            from qtasks_cli.isolation.pool import Workers

            self._workers = Workers()
            if self._closed:
                self._workers.close()  # so that it starts nothing
        return self._workers

    def start_hook(self, hook: Coroutine[Any, Any, None], name: str) -> None:
        """Run a finished run's hook in a task of its own: the run is recorded and over (its
        job may fire again) while the hook, bounded by its own timeout, goes on."""
        task = asyncio.get_running_loop().create_task(hook, name=name)
        self._hooks.add(task)
        task.add_done_callback(self._hooks.discard)

    async def settle_hooks(self, timeout: float | None) -> int:
        """Wait up to ``timeout`` seconds (None: each hook's own bound) for running hooks;
        cancel those still running then. Returns how many were cancelled."""
        if not self._hooks:
            return 0
        _, still = await asyncio.wait(set(self._hooks), timeout=timeout)
        for task in still:
            task.cancel()
        return len(still)

    def shutdown(self) -> None:
        """Start no more threads or child processes; threads still running are not waited
        for. Idle children exit and busy ones are killed; this blocks until they are reaped."""
        self._closed = True
        if self._workers is not None:
            self._workers.close()

    async def call_in_thread(
        self,
        call: Callable[[], Any],
        *,
        on_abandon: Callable[[threading.Thread], str],
        owner: str | None = None,
        run_id: str | None = None,
    ) -> Any:
        """``call()`` in a new thread; returns its value or raises what it raised.

        If the caller is cancelled while the thread still runs, the thread becomes a zombie: it
        borrows a capacity unit until it returns, ``on_abandon(thread)`` names it for the log,
        and ``run_id`` (of job ``owner``) is in ``abandoned`` meanwhile.
        """
        if self._closed:
            raise RuntimeError("the qtasks runtime is shut down; no new job threads start")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        context = contextvars.copy_context()

        def deliver(outcome: Outcome) -> None:
            if not future.done():
                future.set_result(outcome)

        def target() -> None:
            outcome = _capture(context.run, call)
            # RuntimeError: the loop is closed, so nobody waits for this thread any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(deliver, outcome)

        thread = threading.Thread(
            target=target, name=f"qtasks-job-{next(self._numbers)}", daemon=True
        )
        thread.start()
        try:
            outcome = await asyncio.shield(future)
        except asyncio.CancelledError:
            if not future.done():
                self._returned[thread] = future
                future.add_done_callback(lambda _: self._returned.pop(thread, None))
                self._adopt_zombie(future, on_abandon(thread), owner, run_id)
            raise
        if outcome.error is not None:
            raise _JobRaised(outcome.error)  # not the job's own class: see _JobRaised
        return outcome.value

    def _adopt_zombie(
        self,
        future: asyncio.Future[Outcome],
        what: str,
        owner: str | None = None,
        run_id: str | None = None,
    ) -> None:
        self.occupancy.outlived(owner)
        self._mark_abandoned(future, owner, run_id)
        log.warning(
            "%s; thread still running; counted against max_concurrent until it returns", what
        )

        def bury(done: asyncio.Future[Outcome]) -> None:
            if not done.cancelled():
                let_go(done.result())  # what the late thread returned: dropped off the loop
            log.info("%s; its thread has returned", what)
            self.occupancy.returned(owner)

        future.add_done_callback(bury)

    def returned(self, thread: threading.Thread) -> asyncio.Future[Any] | None:
        """The future that resolves when ``thread``, a zombie, returns; None once it has."""
        return self._returned.get(thread)

    def keep(
        self, task: asyncio.Task[Any], owner: str | None = None, run_id: str | None = None
    ) -> None:
        """Hold a task that ignored its cancellation, so it is not garbage collected mid-run;
        ``run_id`` (of job ``owner``) is in ``abandoned`` until the task ends. Like a thread
        that outlived its timeout, it borrows a capacity unit and counts for ``owner`` in
        ``occupancy`` (the job is still running for its overlap rule) until it ends."""
        if task.done():
            return
        self._stray.add(task)
        self._mark_abandoned(task, owner, run_id)
        self.occupancy.outlived(owner, task=True)

        def bury(done: asyncio.Task[Any]) -> None:
            self._stray.discard(done)
            if not done.cancelled() and done.exception() is None:
                outcome = done.result()
                if type(outcome) is Outcome:
                    let_go(outcome)
            self.occupancy.returned(owner, task=True)

        task.add_done_callback(bury)

    def _mark_abandoned(
        self, future: asyncio.Future[Any], owner: str | None, run_id: str | None
    ) -> None:
        if owner is None or run_id is None or future.done():
            return
        self.abandoned[run_id] = owner
        future.add_done_callback(lambda _: self.abandoned.pop(run_id, None))


def let_go(outcome: Outcome | None) -> None:
    """The job's value and exception of ``outcome`` are dropped off the loop (release.py)."""
    if outcome is not None:
        release.adopt(outcome.value)
        release.adopt(outcome.error)
