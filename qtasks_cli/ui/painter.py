"""When the live table is redrawn: after changes, at most a few times a second, and at every
wall-clock second so that countdowns tick (``Painter``)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable

MAX_REDRAWS_PER_SECOND = 4.0


async def _wait_for_change(timeout: float, changed: asyncio.Event) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(changed.wait(), timeout)


class Painter:
    """Calls ``draw`` after changes, at most ``rate`` times a second, and at every wall-clock
    second so countdowns tick; an idle daemon is redrawn once a second, not ``rate`` times.

    ``wall``, ``monotonic``, ``wait`` and ``sleep`` are injected so tests control time."""

    def __init__(
        self,
        draw: Callable[[], None],
        *,
        rate: float = MAX_REDRAWS_PER_SECOND,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        wait: Callable[[float, asyncio.Event], Awaitable[None]] = _wait_for_change,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._draw = draw
        self._gap = 1.0 / rate
        self._wall = wall
        self._monotonic = monotonic
        self._wait = wait
        self._sleep = sleep
        self._changed = asyncio.Event()
        self._last = -math.inf
        self.draws = 0

    def changed(self) -> None:
        """Something to show; call from the loop's thread."""
        self._changed.set()

    async def run(self) -> None:
        """Draw until cancelled."""
        while True:
            # Just past the next whole second, when every countdown has moved on.
            await self._wait(1.0 - self._wall() % 1.0 + 0.002, self._changed)
            too_soon = self._last + self._gap - self._monotonic()
            if too_soon > 0:
                await self._sleep(too_soon)
            self._changed.clear()
            self.draw_now()

    def draw_now(self) -> None:
        self._last = self._monotonic()
        self.draws += 1
        self._draw()
