"""Who holds what in one process, in one record: per job, its runs in progress (and of those,
the ones waiting for a max_concurrent slot) and the threads or tasks of earlier runs that
outlived them; and the slots themselves (``Capacity``). The overlap rule reads it
(``policy.busy_reason``) and the operator's views count from it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qtasks_cli.policy import busy_reason


class Capacity:
    """A FIFO limiter: ``acquire`` waits its turn, ``release`` hands the unit to the next waiter.

    ``borrow`` takes a unit without waiting and may exceed the limit; it is how a thread that
    outlived its timeout keeps counting against the cap until it returns.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"max_concurrent must be at least 1, got {limit!r}")
        self._limit = limit
        self._in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def in_use(self) -> int:
        return self._in_use

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def try_acquire(self) -> bool:
        """Take one unit if one is free and nobody waits; False otherwise."""
        if self._in_use < self._limit and not self._waiters:
            self._in_use += 1
            return True
        return False

    async def acquire(self) -> None:
        """Take one unit, waiting behind everyone who asked earlier."""
        if self.try_acquire():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # The unit arrived just as we were cancelled: pass it on rather than leak it.
                self.release()
            elif waiter in self._waiters:  # a release may have dropped it already
                self._waiters.remove(waiter)
            raise

    def resize(self, limit: int) -> None:
        """A new limit (a reload's max_concurrent): more units are handed to waiters at once;
        with fewer, runs holding one keep it and the next wait for the new limit."""
        self._limit = max(1, limit)
        self._in_use += 1
        self.release()

    def borrow(self) -> None:
        """Take one unit now, even beyond the limit."""
        self._in_use += 1

    def release(self) -> None:
        """Give back one unit taken by ``acquire`` or ``borrow``."""
        if self._in_use <= 0:
            raise RuntimeError("Capacity.release() called more often than acquire() and borrow()")
        self._in_use -= 1
        while self._waiters and self._in_use < self._limit:
            waiter = self._waiters.popleft()
            if waiter.done():  # cancelled while it waited (a stop): its turn is passed on
                continue
            self._in_use += 1  # counted at hand-over, so nobody can overtake the waiter
            waiter.set_result(None)


@dataclass(slots=True)
class Held:
    """One job's share: ``running`` runs in progress, of which ``waiting`` wait for a slot;
    ``stuck`` threads or tasks of earlier runs still going after the run was given up, of
    which ``stuck_tasks`` are tasks that ignored their cancellation."""

    running: int = 0
    waiting: int = 0
    stuck: int = 0
    stuck_tasks: int = 0


_NONE = Held()  # what a job holds when it holds nothing (read only)


class Occupancy:
    """The counts of runs, waits and stuck threads, per job and for the process, and the
    max_concurrent slots. Keyed by job name, not by the job table's entries: a run of a job
    a reload removed and added back still counts for its overlap rule until it ends.

    ``on_freed(job)`` is called when a stuck thread or task of ``job`` ends (the job's queued
    run may start now); it is given at construction by whoever wires the parts.
    """

    def __init__(self, max_concurrent: int, on_freed: Callable[[str], None] | None = None) -> None:
        self.capacity = Capacity(max_concurrent)
        self.zombies = 0  # threads and tasks that outlived their run, of any owner
        self._held: dict[str, Held] = {}
        # The tasks of runs waiting for a slot: take_slot's key -> (job, task).
        self.slot_waits: dict[tuple[str, str], tuple[str, asyncio.Task[Any]]] = {}
        self._on_freed = on_freed

    def of(self, job: str) -> Held:
        """What ``job`` holds now (a shared zero record when nothing: do not change it)."""
        return self._held.get(job, _NONE)

    def _own(self, job: str) -> Held:
        held = self._held.get(job)
        if held is None:
            held = self._held[job] = Held()
        return held

    def _drop_if_idle(self, job: str, held: Held) -> None:
        if not (held.running or held.stuck):
            del self._held[job]

    def begin(self, job: str) -> None:
        """A run of ``job`` is in progress (it may still wait for a slot)."""
        self._own(job).running += 1

    def end(self, job: str) -> None:
        """A run of ``job`` is over (``begin``'s counterpart)."""
        held = self._own(job)
        held.running -= 1
        self._drop_if_idle(job, held)

    async def take_slot(self, job: str, key: tuple[str, str] | None = None) -> None:
        """Wait for a max_concurrent slot for a run of ``job``, counted as waiting meanwhile
        (and its task listed under ``key`` in ``slot_waits``); ``give_slot`` gives it back."""
        if self.capacity.try_acquire():  # the common case: nothing to count or list
            return
        held = self._own(job)
        held.waiting += 1
        task = asyncio.current_task() if key is not None else None
        if task is not None and key is not None:
            self.slot_waits[key] = (job, task)
        try:
            await self.capacity.acquire()
        finally:
            held.waiting -= 1
            if task is not None and key is not None:
                del self.slot_waits[key]

    def give_slot(self) -> None:
        self.capacity.release()

    def outlived(self, owner: str | None, *, task: bool = False) -> None:
        """A thread (or, with ``task``, a task that ignored its cancellation) of ``owner``'s
        run goes on after the run was given up: it keeps a slot beyond the limit and, for its
        owner, counts as still running until ``returned``."""
        self.capacity.borrow()
        self.zombies += 1
        if owner is not None:
            held = self._own(owner)
            held.stuck += 1
            held.stuck_tasks += task

    def returned(self, owner: str | None, *, task: bool = False) -> None:
        """The thread or task ``outlived`` counted has ended; ``on_freed(owner)`` is told."""
        self.zombies -= 1
        self.capacity.release()
        if owner is None:
            return
        held = self._own(owner)
        held.stuck -= 1
        held.stuck_tasks -= task
        self._drop_if_idle(owner, held)
        if self._on_freed is not None:
            self._on_freed(owner)

    def busy(self, job: str) -> str | None:
        """Why ``job`` counts as still running on this node, or None (policy.busy_reason)."""
        held = self.of(job)
        return busy_reason(
            running=held.running,
            waiting=held.waiting,
            stuck=held.stuck,
            stuck_tasks=held.stuck_tasks,
        )

    @property
    def running(self) -> int:
        """Runs whose body runs, or is about to start: they hold a slot."""
        return sum(held.running - held.waiting for held in self._held.values())

    @property
    def waiting(self) -> int:
        """Runs waiting for a free max_concurrent slot."""
        return sum(held.waiting for held in self._held.values())

    def holders(self) -> list[str]:
        """The owners with a run in progress or a thread or task that outlived one, sorted."""
        return sorted(self._held)
