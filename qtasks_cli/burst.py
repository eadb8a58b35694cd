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
from collections.abc import Callable, Coroutine, Generator
from datetime import datetime
from typing import Any, TypeVar

_T = TypeVar("_T")

_STEPPING = sys.version_info >= (3, 11)


class Gate:
    """Where a prepared run waits for its instant (``await gate``): ``instant`` is when the
    burst is due, ``at`` when ``go`` opened it (None until then)."""

    __slots__ = ("at", "instant", "open")

    def __init__(self, instant: datetime) -> None:
        self.instant = instant
        self.at: datetime | None = None
        self.open = not _STEPPING

    def __await__(self) -> Generator[Any, None, None]:
        if not self.open:
            yield self  # to Burst.go, which drives the coroutine through


class Burst:
    """The runs of one instant; see the module docstring."""

    def __init__(self, instant: datetime) -> None:
        self.gate = Gate(instant)
        self._held: list[tuple[asyncio.Task[Any], _Stepped, contextvars.Context]] = []

    def __len__(self) -> int:
        return len(self._held)

    def add(self, coro: Coroutine[Any, Any, _T], *, name: str | None = None) -> asyncio.Task[_T]:
        """A task for ``coro``, stepped now up to the gate (or its first other suspension)."""
        loop = asyncio.get_running_loop()
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
        gate.open = True
        held, self._held = self._held, []
        if not held:
            return
        loop = asyncio.get_running_loop()
        for task, stepped, context in held:
            _step_as(loop, task, context, stepped.step)


def _step_as(
    loop: asyncio.AbstractEventLoop,
    task: asyncio.Task[Any],
    context: contextvars.Context,
    step: Callable[[], None],
) -> None:
    """Run ``step`` in ``context`` with ``task`` as the loop's current task."""
    current = asyncio.current_task(loop)
    if current is not None:
        asyncio.tasks._leave_task(loop, current)
    asyncio.tasks._enter_task(loop, task)
    try:
        context.run(step)
    finally:
        asyncio.tasks._leave_task(loop, task)
        if current is not None:
            asyncio.tasks._enter_task(loop, current)


_YIELDED, _RETURNED, _RAISED = 0, 1, 2


class _Stepped(Coroutine[Any, Any, Any]):
    """A coroutine stepped from outside its task (``step``) before the task's own first
    step; the task receives what the last outside step produced, then drives it as usual."""

    __slots__ = ("_coro", "_gate", "_last", "at_gate")

    def __init__(self, coro: Coroutine[Any, Any, Any], gate: Gate) -> None:
        self._coro = coro
        self._gate = gate
        self._last: tuple[int, Any] | None = None
        self.at_gate = False

    def step(self) -> None:
        try:
            produced = self._coro.send(None)
        except StopIteration as stop:
            self._last, self.at_gate = (_RETURNED, stop.value), False
        except BaseException as exc:  # the task raises it at its first step, as usual
            self._last, self.at_gate = (_RAISED, exc), False
        else:
            self.at_gate = produced is self._gate
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
