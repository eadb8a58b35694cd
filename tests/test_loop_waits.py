"""The supervisor's loop never spins: while it waits on the store (a long prune, a locked
database) every wait it makes has a deadline or an event, never a timeout of zero in a circle."""

from __future__ import annotations

import asyncio
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

from qtasks_cli.config import parse_config_text
from qtasks_cli.events import EventBus
from qtasks_cli.store.sqlite import SqliteStore
from qtasks_cli.supervisor import Supervisor, Timer

T0 = datetime(2026, 11, 28, 12, 0, 0, tzinfo=timezone.utc)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class CountingTimer(Timer):
    """Records every timeout the loop asks for; advances the fake clock by it; stops the
    supervisor after ``steps`` waits."""

    def __init__(self, clock: Clock, steps: int) -> None:
        self.clock = clock
        self.steps = steps
        self.timeouts: list[float | None] = []
        self.supervisor: Supervisor | None = None

    async def wait(self, timeout: float | None, wake: asyncio.Event) -> None:
        assert self.supervisor is not None
        self.timeouts.append(timeout)
        await asyncio.sleep(0.001)
        wake.clear()
        self.clock.now += timedelta(seconds=60.0 if timeout is None else timeout)
        if len(self.timeouts) >= self.steps:
            self.supervisor.request_stop()


def test_a_store_call_that_never_answers_does_not_make_the_loop_spin(tmp_path: Path) -> None:
    text = "settings:\n  timezone: UTC\n  shutdown_grace: 0s\njobs:\n" + textwrap.indent(
        "every_minute:\n  entrypoint: test_loop_waits:nothing\n  schedule: '* * * * *'\n", "  "
    )
    config = parse_config_text(text, filename=str(tmp_path / "jobs.yaml"), base_dir=tmp_path)
    never = asyncio.Event()

    async def main() -> list[float | None]:
        clock = Clock()
        store = SqliteStore(tmp_path / "s.db", clock=clock)
        await store.open()

        async def changed() -> bool:  # a poll of the queue that hangs (a locked store)
            await never.wait()
            return False

        store.changed = changed  # type: ignore[method-assign]
        timer = CountingTimer(clock, steps=40)
        supervisor = Supervisor(config, store=store, bus=EventBus(), clock=clock, timer=timer)
        supervisor.intake.more = False  # so the poll asks store.changed()
        timer.supervisor = supervisor
        try:
            await asyncio.wait_for(supervisor.run(), timeout=60)
        finally:
            never.set()
            await store.close()
        return timer.timeouts

    timeouts = asyncio.run(main())
    zero = [t for t in timeouts if t is not None and t <= 0.0]
    # Before the fix every wait after the first poll had a timeout of 0: a busy loop.
    assert len(zero) <= 2, timeouts
    assert any(t is not None and t >= 1.0 for t in timeouts), timeouts


def nothing() -> None:
    pass
