"""Starting the runs of one fire instant together: everything is prepared before the instant,
and at the instant each body starts with nothing in between.

A ``Burst`` holds the runs due at one instant. ``add`` makes each run's task and takes the
task's first step at once (in the task's own context, with the task as the current one), so
the run's whole set-up (its events, its start mark, its call) is done before the instant and
the coroutine stops at the burst's ``Gate``, just before the body is called. ``go`` opens the
gate and steps every held coroutine through it in turn: body k starts after bodies 1..k-1 took
their first steps, not after their set-ups. Each task then goes on from where that step
stopped. Python 3.12's eager tasks are the model; this works on 3.11 too (3.10: a plain task,
the gate open).

A task whose first step is taken by the loop before ``go`` (an error between ``add`` and
``go``) simply passes the gate: a run is never stranded at it.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import time
import types
from collections.abc import Callable, Coroutine, Generator
from datetime import datetime, timedelta
from typing import Any, TypeVar

from qtasks_cli import keepstate
from qtasks_cli.clock import utcnow

_T = TypeVar("_T")

_STEPPING = sys.version_info >= (3, 11)


class Gate:
    """Where a prepared run waits for its instant (``await gate``): ``instant`` is when the
    burst is due, ``at`` when ``go`` opened it (None until then), ``perf`` the same moment on
    ``time.perf_counter``."""

    __slots__ = ("at", "instant", "open", "perf")

    def __init__(self, instant: datetime) -> None:
        self.instant = instant
        self.at: datetime | None = None
        self.perf: float | None = None
        self.open = not _STEPPING

    def __await__(self) -> Generator[Any, None, None]:
        if not self.open:
            yield self  # to Burst.go, which drives the coroutine through

    def start(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        clock: Callable[[], datetime],
        job: str,
    ) -> Start:
        """Await the result to have ``Burst.go`` call ``fn(*args, **kwargs)`` (job ``job``'s
        body) and take the body's first step itself, with none of the awaiting coroutine's
        frames in between."""
        return Start(self, fn, args, kwargs, clock, job)


class Start:
    """A body the burst starts (``Gate.start``). Awaiting it gives ``(True, result)`` for a
    coroutine it drove to its end, or ``(False, value)`` for what ``fn`` returned that is not a
    coroutine (the caller awaits it, as it would have). ``ended``: when a body that finished
    in its first step did (for its duration), else None."""

    __slots__ = ("_end", "args", "body", "clock", "fn", "gate", "job", "kwargs", "outcome")

    def __init__(
        self,
        gate: Gate,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        clock: Callable[[], datetime],
        job: str,
    ) -> None:
        self.gate = gate
        self.job = job
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.clock = clock
        self.body: Coroutine[Any, Any, Any] | None = None
        self.outcome: tuple[int, Any] | None = None  # (_RETURNED | _RAISED, value)
        self._end: float | datetime | None = None

    @property
    def ended(self) -> datetime | None:
        """When the body ended in its first step (UTC), or None."""
        end, gate = self._end, self.gate
        if isinstance(end, float) and gate.at is not None and gate.perf is not None:
            return gate.at + timedelta(seconds=end - gate.perf)
        return end if isinstance(end, datetime) else None

    def begin(self) -> Any:
        """Call the body and take its first step (in the run's task and context); return
        the future it waits on, or None when it ended or is not a coroutine."""
        try:
            body = self.fn(*self.args, **self.kwargs)
        except BaseException as exc:
            self.outcome = (_RAISED, exc)
            return None
        if type(body) is not _COROUTINE:
            self.outcome = (_VALUE, body)
            return None
        self.body = body
        # On the real clock, the end is read off perf_counter (80 ns, against 400 ns for an
        # aware datetime, once per body): ``ended`` turns it into wall time from the gate's.
        try:
            waits = body.send(None)
        except StopIteration as stop:
            clock = self.clock
            self.outcome = (_RETURNED, stop.value)
            self._end = _perf_counter() if clock is utcnow else clock()
            return None
        except BaseException as exc:
            clock = self.clock
            self.outcome = (_RAISED, exc)
            self._end = _perf_counter() if clock is utcnow else clock()
            return None
        finally:
            if _step_changed():  # before the next body of the burst starts
                keepstate.restore(self.job)
        return waits

    def __await__(self) -> Generator[Any, Any, tuple[bool, Any]]:
        thrown: BaseException | None = None
        if not self.gate.open:
            try:
                yield self  # to Burst.go, which calls begin()
            except BaseException as exc:  # the task was cancelled, say, before it went on
                if self.body is None or self.outcome is not None:
                    raise
                thrown = exc
        if self.body is None and self.outcome is None:  # the burst never reached it
            self.begin_late()
        outcome = self.outcome
        if outcome is not None:
            self.outcome = None
            if outcome[0] == _RAISED:
                raise outcome[1]
            return outcome[0] == _RETURNED, outcome[1]
        assert self.body is not None
        # The body waits on what its first step handed the task: go on driving it.
        if thrown is None:
            return True, (yield from _driven(self.body, None, send=True, job=self.job))
        return True, (yield from _driven(self.body, thrown, send=False, job=self.job))

    def begin_late(self) -> None:
        """No burst started the body: start it here, as a plain call would."""
        try:
            body = self.fn(*self.args, **self.kwargs)
        except BaseException as exc:
            self.outcome = (_RAISED, exc)
            return
        if type(body) is types.CoroutineType:
            self.body = body
        else:
            self.outcome = (_VALUE, body)


class KeptSteps:
    """``await KeptSteps(coro, job)`` is ``await coro`` for job ``job``'s body, with what a step
    of it changed on the loop's thread put back before the loop goes on (``_driven``)."""

    __slots__ = ("coro", "job")

    def __init__(self, coro: Coroutine[Any, Any, Any], job: str) -> None:
        self.coro = coro
        self.job = job

    def __await__(self) -> Generator[Any, Any, Any]:
        return _driven(self.coro, None, send=True, job=self.job)


def _driven(
    coro: Coroutine[Any, Any, Any], first: Any, *, send: bool, job: str
) -> Generator[Any, Any, Any]:
    """``yield from coro`` for a coroutine stepped before: first ``send(first)`` (or
    ``throw(first)``), then hand on what it yields and what comes back, as ``yield from``.
    After each step, a profile or trace function or the loop's debug mode that job ``job``'s
    code left on the loop's thread is put back (keepstate.py), before the loop runs anything
    else."""
    while True:
        try:
            produced = coro.send(first) if send else coro.throw(first)
        except StopIteration as stop:
            return stop.value
        finally:
            if keepstate.step_changed():
                keepstate.restore(job)
        try:
            first, send = (yield produced), True
        except BaseException as exc:  # GeneratorExit and cancellations go to the body
            first, send = exc, False


class Burst:
    """The runs of one instant; see the module docstring."""

    def __init__(self, instant: datetime) -> None:
        self.gate = Gate(instant)
        self._held: list[tuple[asyncio.Task[Any], _Stepped, contextvars.Context]] = []
        # Every task added, held at the gate or not (one waiting for a slot is not held:
        # it passes the gate when it gets one, so the gate must not open before the instant).
        self.added = 0

    def __len__(self) -> int:
        return len(self._held)

    def add(self, coro: Coroutine[Any, Any, _T], *, name: str | None = None) -> asyncio.Task[_T]:
        """A task for ``coro``, stepped now up to the gate (or its first other suspension)."""
        loop = asyncio.get_running_loop()
        self.added += 1
        if not _STEPPING:
            return loop.create_task(coro, name=name)
        context = contextvars.copy_context()
        stepped = _Stepped(coro, self.gate)
        task: asyncio.Task[_T] = loop.create_task(stepped, name=name, context=context)  # type: ignore[call-arg,unused-ignore]
        _step_as(loop, task, context, stepped.step)
        if stepped.at_gate:
            self._held.append((task, stepped, context))
        return task

    def go(self, now: Callable[[], datetime]) -> None:
        """Open the gate (``at`` = ``now()``) and start every held body, in the order added."""
        gate = self.gate
        gate.at = now()
        gate.perf = time.perf_counter()
        gate.open = True
        held, self._held = self._held, []
        if not held:
            return
        loop = asyncio.get_running_loop()
        current = asyncio.current_task(loop)
        enter, leave = _enter_task, _leave_task
        if current is not None:
            leave(loop, current)
        try:
            for task, stepped, context in held:  # per run: 0.98 µs here, the floor's 0.33
                start = stepped.start
                enter(loop, task)
                try:
                    if start is not None:  # the body itself, with no frame of the run between
                        waits = context.run(start.begin)
                        # The task then waits on what the body's first step yielded (or,
                        # when it ended, sends the run on at once).
                        stepped.at_gate, stepped.start = False, None
                        stepped._last = None if waits is None else (_YIELDED, waits)
                    else:
                        context.run(stepped.step)
                finally:
                    leave(loop, task)
        finally:
            if current is not None:
                enter(loop, current)


def _step_as(
    loop: asyncio.AbstractEventLoop,
    task: asyncio.Task[Any],
    context: contextvars.Context,
    step: Callable[[], Any],
) -> Any:
    """Run ``step`` in ``context`` with ``task`` as the loop's current task."""
    current = asyncio.current_task(loop)
    if current is not None:
        asyncio.tasks._leave_task(loop, current)
    asyncio.tasks._enter_task(loop, task)
    try:
        return context.run(step)
    finally:
        asyncio.tasks._leave_task(loop, task)
        if current is not None:
            asyncio.tasks._enter_task(loop, current)


_YIELDED, _RETURNED, _RAISED, _VALUE = 0, 1, 2, 3
_COROUTINE = types.CoroutineType
_perf_counter = time.perf_counter
_step_changed = keepstate.step_changed
_enter_task, _leave_task = asyncio.tasks._enter_task, asyncio.tasks._leave_task


class _Stepped(Coroutine[Any, Any, Any]):
    """A coroutine stepped from outside its task (``step``) before the task's own first
    step; the task receives what the last outside step produced, then drives it as usual."""

    __slots__ = ("_coro", "_gate", "_last", "at_gate", "start")

    def __init__(self, coro: Coroutine[Any, Any, Any], gate: Gate) -> None:
        self._coro = coro
        self._gate = gate
        self._last: tuple[int, Any] | None = None
        self.at_gate = False
        self.start: Start | None = None  # the body the burst starts, when it is one

    def step(self) -> None:
        try:
            produced = self._coro.send(None)
        except StopIteration as stop:
            self._last, self.at_gate = (_RETURNED, stop.value), False
        except BaseException as exc:  # the task raises it at its first step, as usual
            self._last, self.at_gate = (_RAISED, exc), False
        else:
            self.start = produced if type(produced) is Start else None
            self.at_gate = produced is self._gate or self.start is not None
            self._last = (_YIELDED, produced)

    def send(self, value: Any) -> Any:
        last = self._last
        if last is None:
            return self._coro.send(value)
        if self.at_gate:  # the loop got here first: pass the gate now
            self._last, self.at_gate = None, False
            return self._coro.send(None)
        self._last = None
        if last[0] == _YIELDED:
            return last[1]  # the future it waits on, handed to the task
        if last[0] == _RETURNED:
            raise StopIteration(last[1])
        raise last[1]

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        last, self._last = self._last, None
        self.at_gate = False
        if last is not None and last[0] == _RETURNED:
            raise StopIteration(last[1])  # it ended already: nothing left to stop
        if last is not None and last[0] == _RAISED:
            raise last[1]
        if val is None and tb is None:
            return self._coro.throw(typ)
        return self._coro.throw(typ, val, tb)

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Any:
        raise TypeError("driven by its task, not awaited")
