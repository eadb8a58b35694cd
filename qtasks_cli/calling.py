"""One run's state, and how it calls the job's code: an async function on the loop, a sync one
in a thread of the runtime (an awaitable it hands back is awaited on the loop), the first attempt
past its burst's gate; an attempt or a hook bounded by a timeout in a task of its own; a
generated item through ``generate_handler``. An attempt's body (calling the entry point once,
draining a generator it hands back) is attemptbody.py's ``call_attempt``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import sys
import threading
import traceback
import types
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from qtasks_cli import entrypoints, failures, previews, release
from qtasks_cli.burst import KeptSteps
from qtasks_cli.durations import format_seconds
from qtasks_cli.entrypoints import CallableKind
from qtasks_cli.events import Event, Item
from qtasks_cli.isolation.wire import KILL_WAIT, ReportedError
from qtasks_cli.models import Attempt, Isolation, JobSpec, TriggerKind
from qtasks_cli.pickled import Pickled
from qtasks_cli.runtime import Outcome, Runtime, guarded, unwrap

if TYPE_CHECKING:
    from qtasks_cli.burst import Gate
    from qtasks_cli.isolation.pool import Workers

# The executor's logger, as before a run's calls moved out of it: its records keep their name
# (the JSON log's "logger").
log = logging.getLogger("qtasks_cli.executor")


class HandlerFailed(Exception):
    """The generate_handler raised; the attempt fails with the handler's own exception."""

    def __init__(self, ref: str, original: BaseException) -> None:
        super().__init__(ref, original)
        self.ref = ref
        self.original = original


class Run:
    """The mutable state of one ``execute`` call."""

    def __init__(
        self,
        job: JobSpec,
        *,
        run_id: str,
        trigger: TriggerKind,
        scheduled: datetime | None,
        runtime: Runtime,
        emit: Callable[[Event], None],
        clock: Callable[[], datetime],
        resolve: Callable[[str], Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        gate: Gate | None = None,
    ) -> None:
        self.job = job
        # The burst's gate the first attempt waits at, just before the body (burst.py).
        self.gate = gate
        self.body_ended: datetime | None = None  # when a body the burst ran ended in go
        self.run_id = run_id
        self.trigger = trigger
        self.scheduled = scheduled
        self.runtime = runtime
        self.clock = clock
        self.resolve = resolve
        self.args = args
        self.kwargs = kwargs
        self.attempt_log: list[Attempt] = []
        self.items: int | None = None  # items handled by the current attempt
        self.abandon_reason = "cancelled"
        self.stuck_stack: traceback.StackSummary | None = None
        # A stuck thread's frames (innermost first) with their line numbers at the timeout:
        # their source lines are read off the loop, when the timeout's traceback is made.
        self.stuck_frames: list[tuple[types.FrameType, int]] | None = None
        self.stuck_where = ""  # what stuck_stack shows, for the timeout's traceback
        # What still runs the body of an attempt that timed out (a thread, a task that ignored
        # its cancellation, a child process not yet reaped): no retry starts beside it.
        self.leftover: threading.Thread | asyncio.Future[Any] | None = None
        self.not_retried = ""  # why no retry is made although the policy allows one
        # While the run's hook runs: who its threads belong to ("report (on_success hook)"),
        # which is not the job, so a hung hook never holds the job's next fires.
        self.hook: str | None = None
        self._emit = emit
        self._retry_types: tuple[type[BaseException], ...] | None = None

    @property
    def label(self) -> str:
        return f"job {self.job.name!r} run {self.run_id}"

    @property
    def workers(self) -> Workers:
        """The runtime's child processes (isolation.call's ``Invocation``)."""
        return self.runtime.workers

    async def handle(self, handler: Any, item: Any) -> Any:
        """A generated item through ``generate_handler`` (isolation.call's ``Invocation``)."""
        return await handle_item(self, handler, item)

    def emit(self, event: Event) -> None:
        """Hand ``event`` (one of this run's) to the sinks; a failure is logged, never raised."""
        try:
            self._emit(event)
        except Exception:
            log.exception("%s: emitting the %s event failed", self.label, event.kind)

    async def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``: awaited on the loop if async, else in a thread; an
        awaitable it returns is awaited on the loop."""
        kind = kind_of_cached(fn)
        if self.gate is not None:  # a burst's first attempt: the body starts at go
            if kind is CallableKind.ASYNC:  # started by the burst itself (burst.Start)
                start = self.gate.start(fn, args, kwargs, self.clock, self.job.name)
                self.gate = None
                driven, value = await start
                self.body_ended = start.ended
                if not driven and _awaitable(value):
                    value = await self._awaited(value)
                return value
            await self.through_gate()
        if kind is CallableKind.ASYNC:
            value = fn(*args, **kwargs)
        else:
            value = await self.in_thread(functools.partial(fn, *args, **kwargs))
        if _awaitable(value):
            value = await self._awaited(value)
        return value

    def _awaited(self, value: Awaitable[Any]) -> Awaitable[Any]:
        """A coroutine of the job's is stepped on the loop: what a step leaves on the loop's
        thread is put back after it (burst.KeptSteps)."""
        if type(value) is types.CoroutineType:
            return KeptSteps(value, self.job.name)
        return value

    async def through_gate(self) -> None:
        """Wait at the burst's gate, once (burst.py): everything before is set-up."""
        gate, self.gate = self.gate, None
        if gate is not None:
            await gate

    async def in_thread(self, call: Callable[[], Any]) -> Any:
        hook = self.hook is not None  # a hook's thread never holds its job or marks its run
        return await self.runtime.call_in_thread(
            call,
            on_abandon=self._abandon,
            owner=self.hook if hook else self.job.name,
            run_id=None if hook else self.run_id,
        )

    def _abandon(self, thread: threading.Thread) -> str:
        self.leftover = thread
        frame = sys._current_frames().get(thread.ident or -1)
        if frame is not None:
            # Frames and line numbers only: reading source lines may run a loader's code.
            frames: list[tuple[types.FrameType, int]] = []
            while frame is not None:
                frames.append((frame, frame.f_lineno))
                frame = frame.f_back
            self.stuck_frames = frames
            self.stuck_where = "its thread is still running here"
        return f"{self.label}: {self.abandon_reason}"

    async def bounded(
        self, awaitable: Awaitable[Any], timeout: float | None, what: str
    ) -> tuple[Outcome | None, bool]:
        """Run ``awaitable`` in its own task, cancelled after ``timeout`` seconds.

        Returns its outcome (None if it would not stop) and whether it timed out.
        """
        if timeout is None:
            # Nothing to time out: await it right here. A second task per run would delay
            # every job of a burst behind the prologues of all the others.
            try:
                return Outcome(value=await awaitable), False
            except asyncio.CancelledError as exc:
                task = asyncio.current_task()
                cancelling = getattr(task, "cancelling", None)
                if cancelling is not None and not cancelling():
                    return Outcome(error=exc), False  # the job raised it, nobody cancelled us
                self.abandon_reason = f"{what} cancelled"
                raise
            except BaseException as exc:
                return Outcome(error=unwrap(exc)), False
        # The task of its own is no run the burst holds at its gate: the gate is passed here,
        # in the run's task, or the body would start as soon as that task ran, before its
        # instant (the loop prepares a burst a few milliseconds ahead).
        await self.through_gate()
        task = asyncio.get_running_loop().create_task(
            guarded(awaitable), name=f"qtasks:{self.job.name}:{self.run_id}:{what}"
        )
        try:
            done, _ = await asyncio.wait({task}, timeout=timeout)
        except asyncio.CancelledError:
            self.abandon_reason = f"{what} cancelled"
            await self._stop(task, what)
            raise
        if done:
            return task.result(), False
        self.abandon_reason = f"{what} timed out after {format_seconds(timeout or 0)}"
        return await self._stop(task, what), True

    async def _stop(self, task: asyncio.Task[Outcome], what: str) -> Outcome | None:
        task.cancel()
        # Even with no grace, let the task see its cancellation once before judging it stuck.
        grace = max(self.job.kill_grace.total_seconds(), 0.01)
        if self.job.isolation is Isolation.PROCESS:
            grace += KILL_WAIT + 1.0  # the SIGKILL after kill_grace and the reaping
        done, _ = await asyncio.wait({task}, timeout=grace)
        if done:
            return task.result()
        log.warning(
            "%s: %s ignored its cancellation for %s; left running on the loop",
            self.label,
            what,
            format_seconds(grace),
        )
        if self.hook is not None:
            self.runtime.keep(task, self.hook)
        else:
            self.runtime.keep(task, self.job.name, self.run_id)
        self.leftover = task
        return None

    def retryable(self, exc: BaseException) -> bool:
        """Whether ``retry_on`` matches ``exc``: by its class's MRO, as ``except`` matches
        (no code of the job's exception runs on the loop)."""
        if self._retry_types is None:
            self._retry_types = _retry_types(self.job)
        if type(exc) is ReportedError:
            return exc.is_a(self._retry_types)
        return failures.is_subclass(type(exc), self._retry_types)


def _awaitable(value: Any) -> bool:
    """``inspect.isawaitable(value)`` judged from ``type(value)`` alone: no ``__class__``
    property or ABC machinery (a metaclass's ``__eq__``/``__hash__``) of the job runs here."""
    kind = type(value)
    if kind is types.CoroutineType:
        return True
    if kind is types.GeneratorType:  # a @types.coroutine generator
        return bool(value.gi_code.co_flags & inspect.CO_ITERABLE_COROUTINE)
    return failures.has_method(kind, "__await__")


# The kind of each entry point called, by identity: inspecting a function costs microseconds,
# and a burst calls the same few thousand functions every second.
_KINDS: dict[int, tuple[Any, CallableKind]] = {}
_KINDS_MAX = 16_384


def kind_of_cached(fn: Any) -> CallableKind:
    """``entrypoints.kind_of(fn)``, remembered for functions (not for other callables,
    whose ``__call__`` may change)."""
    if type(fn) is not types.FunctionType:
        return entrypoints.kind_of(fn)
    found = _KINDS.get(id(fn))
    if found is not None and found[0] is fn:
        return found[1]
    kind = entrypoints.kind_of(fn)
    if len(_KINDS) >= _KINDS_MAX:
        _KINDS.clear()
    _KINDS[id(fn)] = (fn, kind)
    return kind


def _retry_types(job: JobSpec) -> tuple[type[BaseException], ...]:
    if not job.retry.on:
        return (Exception,)
    found: list[type[BaseException]] = []
    for name in job.retry.on:
        try:
            found.append(entrypoints.resolve_exception(name))
        except Exception as exc:
            log.warning(
                "job %r: retry_on %r cannot be resolved (%s); it matches nothing",
                job.name,
                name,
                exc,
            )
    return tuple(found)


async def handle_item(run: Run, handler: Any, item: Any) -> Any:
    """``item`` through ``handler`` (or kept as it is when there is none), counted and echoed;
    the handler's exception is raised as a ``HandlerFailed``."""
    if handler is None:
        value = item
    else:
        try:
            value = await run.call(handler, item)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            inner = unwrap(exc)
            raise HandlerFailed(run.job.generate_handler or "", inner) from inner
    if value is not item:
        release.adopt(item)  # the handler's input, dropped off the loop
    run.items = (run.items or 0) + 1
    if run.job.echo:
        run.emit(
            Item(
                time=run.clock(),
                job=run.job.name,
                run_id=run.run_id,
                attempt=len(run.attempt_log) + 1,
                item=run.job.redact(value.preview)  # a process job's, previewed in its child
                if type(value) is Pickled
                else await previews.preview_off_loop(value, run.job.redact, as_json=False),
                items=run.items,
            )
        )
    return value
