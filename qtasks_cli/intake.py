"""Handed-over requests (``trigger --enqueue``, ``enqueue()``, re-runs): when the daemon
looks at the store's queue, and taking what waits there.

The queue is read in the background, so a store locked by another process never holds up
firing: at most once a ``poll_every`` (1 s; slower when wake-ups arrive, see api.py), at once
after a wake-up (``nudge``: ``enqueue``'s datagram, or PostgreSQL's NOTIFY through
``listen``), at most once per ``NUDGE_GAP`` however many wake-ups arrive, and again at once
while a batch came back full. What is taken is handed to ``deliver`` (the supervisor starts
it, queues it behind its job's run, or fails it when no such job exists).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qtasks_cli.clock import Wakeup
    from qtasks_cli.store.base import Announcer, QueuedRun, Store

# The daemon loop's logger, as before the loop was split: its records keep their name (the
# JSON log's "logger", the store-error count of metrics.py).
log = logging.getLogger("qtasks_cli.supervisor")

# How often the daemon asks the store whether requests were handed over (seconds).
QUEUE_POLL = 1.0
QUEUE_BATCH = 500
# The shortest gap between two looks at the queue prompted by wake-ups (seconds).
NUDGE_GAP = 0.05


class Intake:
    """Paces the looks at the queue and hands each request taken to ``deliver``."""

    def __init__(
        self,
        *,
        store: Store,
        clock: Callable[[], datetime],
        wake: Wakeup,
        tasks: set[asyncio.Task[None]],
        deliver: Callable[[QueuedRun], None],
        stopping: Callable[[], bool],
        announcer: Announcer | None = None,
    ) -> None:
        self.store = store
        self._announcer = announcer  # the store, when it announces work itself (NOTIFY)
        self.clock = clock
        self._wake = wake
        self._tasks = tasks  # the daemon's tasks, which a stop waits for
        self._deliver = deliver
        self._stopping = stopping
        self.poll_every = QUEUE_POLL  # slower when something wakes us (api.py)
        # Whether requests may wait without the store's change mark saying so: at the start
        # (requests left from before), after a full batch, after recovery re-queued runs.
        self.more = True
        self._last_poll = 0.0
        self._next_poll = 0.0
        self._poll_task: asyncio.Task[None] | None = None

    def nudge(self) -> None:
        """Look for handed-over requests soon instead of at the next poll. Wake-ups that
        arrive together are served by one look (at most one per NUDGE_GAP), so a shop
        handing over thousands of runs does not fight the daemon for the write lock."""
        self._next_poll = min(self._next_poll, self._last_poll + NUDGE_GAP)
        self._wake.set()

    def wait(self, now: float) -> float | None:
        """Seconds until the next look (``now``: a POSIX timestamp); None while a look is in
        flight (its end wakes the loop, and a past deadline would make the loop spin)."""
        if self._poll_task is not None and not self._poll_task.done():
            return None
        return max(0.0, self._next_poll - now)

    def poll(self) -> None:
        """Look for handed-over requests if it is time, in the background."""
        now = self.clock().timestamp()
        if now < self._next_poll or (self._poll_task is not None and not self._poll_task.done()):
            return
        self._last_poll = now
        self._next_poll = now + self.poll_every
        self._poll_task = asyncio.create_task(self._take_queued())
        self._tasks.add(self._poll_task)
        self._poll_task.add_done_callback(self._tasks.discard)
        self._poll_task.add_done_callback(lambda _: self._wake.set())

    async def _take_queued(self) -> None:
        try:
            if not (self.more or await self.store.changed()):
                return
            requests = await self.store.take_queued(self.clock(), limit=QUEUE_BATCH)
        except Exception as exc:
            log.warning("cannot read queued requests from %s: %s", self.store.location, exc)
            return
        for request in requests:
            self._deliver(request)
        self.more = len(requests) == QUEUE_BATCH
        if self.more:  # take the rest at once
            self._next_poll = 0.0
            self._wake.set()

    async def listen(self) -> None:
        """Look for handed-over requests as soon as the store says there may be some
        (an ``Announcer``: PostgreSQL's NOTIFY), until the daemon stops; at once without."""
        while self._announcer is not None and not self._stopping():
            try:
                woken = await self._announcer.wait_for_work(30.0)
            except Exception as exc:
                log.warning("cannot listen for handed-over runs: %s", exc)
                await asyncio.sleep(QUEUE_POLL)
                continue
            if woken:
                self.nudge()
