"""Time for the daemon's loop: UTC now, the wake-up the loop sleeps on, the timer tests
replace, the fine wait to a fire's instant, and the watch for steps of the wall clock.

Why the loop wakes early (README, "Firing on the instant"): an asyncio timer wakes the loop a
little after its deadline (the selector's timeout is rounded up to the millisecond, and a
virtual machine's timers overshoot further, 2-15 ms on the one the benchmarks ran on). So the
loop wakes ``FIRE_EARLY`` before a fire's instant, prepares everything for it, and finishes
the wait with ``settle_until``: a kernel sleep to ``SPIN`` before the instant and a spin on the
clock for the rest (the asyncio floor of bench/lateness.py does the same). Nothing spins while
nothing is due, and a spin is never longer than ``SPIN`` plus the kernel's wake-up delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import datetime, timezone

# How long before a fire's instant the loop wakes (seconds). Measured on the benchmark's
# 2-core virtual machine: a plain ``call_at`` overshot by 0.2-3 ms on a quiet machine
# (p99 2.5 ms) and up to 15 ms in a busy hour; 5 ms covers the quiet machine's p99 twice
# (bench/lateness.py shows the effect). The wait from here to the instant blocks the loop,
# so the margin is kept small: callbacks wait at most this long, once per fire instant.
FIRE_EARLY = 0.005
# The last part of that wait is a spin on the clock (seconds), as long as the margin: a
# kernel sleep wakes 50-150 µs late on a quiet machine, and on a busy one the woken thread
# may wait a time slice (several ms) for a core, which a thread that spins already holds.
# At most this much CPU per fire instant; none while nothing is due.
SPIN = FIRE_EARLY


def utcnow() -> datetime:
    """The wall clock as an aware UTC datetime."""
    return datetime.now(timezone.utc)


def settle_until(
    instant: float,
    *,
    now: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
    spin: float = SPIN,
    limit: float = 2 * FIRE_EARLY,
) -> None:
    """Block until the wall clock ``now()`` reaches ``instant`` (seconds since the epoch):
    sleep until ``spin`` before it, then spin. Returns at once when the instant has passed.
    Never waits longer than ``limit`` by the monotonic clock, nor than the wait it computed
    at the start: a wall clock stepped back meanwhile is not waited out here (the loop
    notices the step next and schedules afresh)."""
    left = instant - now()
    if left <= 0:
        return
    left = min(left, limit)
    deadline = monotonic() + left
    if left > spin:
        sleep(left - spin)
    while now() < instant and monotonic() < deadline:
        pass


class Wakeup(asyncio.Event):
    """An Event the loop can sleep on with a timeout for the price of one future and one
    timer handle (``wait_for`` costs a task and several loop passes per wake-up, which is
    most of the daemon's idle CPU)."""

    _sleeper: asyncio.Future[None] | None = None

    def set(self) -> None:
        super().set()
        if self._sleeper is not None and not self._sleeper.done():
            self._sleeper.set_result(None)

    async def sleep(self, timeout: float | None) -> None:
        if self.is_set():
            return
        loop = asyncio.get_running_loop()
        self._sleeper = sleeper = loop.create_future()
        handle = None if timeout is None else loop.call_later(timeout, _resolve, sleeper)
        try:
            await sleeper
        finally:
            self._sleeper = None
            if handle is not None:
                handle.cancel()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Timer:
    """Waits until a timeout passes or ``wake`` is set; tests replace it to control time."""

    async def wait(self, timeout: float | None, wake: asyncio.Event) -> None:
        if isinstance(wake, Wakeup):
            await wake.sleep(timeout)
        elif not wake.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout)
        wake.clear()


# A difference this large between how far the wall clock and the monotonic clock moved
# is a clock step (NTP, an operator, a resumed VM), in seconds.
CLOCK_STEP = 2.0


class StepWatch:
    """Notices steps of the wall clock by comparing it with the monotonic clock."""

    def __init__(self, monotonic: Callable[[], float]) -> None:
        self._monotonic = monotonic
        self._offset: float | None = None  # wall minus monotonic, seconds

    def step(self, now: datetime) -> float:
        """How far the wall clock (``now``, aware) stepped since the last call, in seconds
        (negative: back); 0.0 at the first call and while it moved with the monotonic clock
        (by less than ``CLOCK_STEP``)."""
        offset = now.timestamp() - self._monotonic()
        previous, self._offset = self._offset, offset
        if previous is None or abs(offset - previous) < CLOCK_STEP:
            return 0.0
        return offset - previous
