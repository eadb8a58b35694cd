"""The supervisor under a virtual clock, against the real SQLite store: the one virtual-time harness
of the suite (test_supervisor.py and the reliability cases whose time can be controlled: DST
days, a store that refuses writes for a while)."""

from __future__ import annotations

import asyncio
import contextlib
import textwrap
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from qtasks_cli.config import parse_config_text
from qtasks_cli.events import Event, EventBus
from qtasks_cli.models import Config, RunResult
from qtasks_cli.store.base import Store
from qtasks_cli.store.sqlite import SqliteStore
from qtasks_cli.supervisor import Supervisor, Timer

NOOP = "reliability.virtual:noop"


async def noop() -> str:
    return "ok"


class VirtualClock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


class VirtualTimer(Timer):
    """Instead of sleeping, lets started runs finish and then moves the clock forward by the
    supervisor's timeout; asks the supervisor to stop once the clock passes ``until``."""

    def __init__(
        self,
        clock: VirtualClock,
        until: datetime,
        on_step: Callable[[datetime], None] | None = None,
    ) -> None:
        self.clock = clock
        self.until = until
        self.on_step = on_step
        self.supervisor: Supervisor | None = None
        self.steps = 0

    async def wait(self, timeout: float | None, wake: asyncio.Event) -> None:
        assert self.supervisor is not None
        # A claim round in flight is waited for in real time: on a busy machine its write can
        # take a second or more, and moving the clock on before it lands made its fire late in
        # virtual time.
        claiming = self.supervisor.claims._claim_task
        if claiming is not None and not claiming.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(claiming), 30)
        for _ in range(500):  # runs are instant no-ops; this only waits for their bookkeeping
            await asyncio.sleep(0)
            busy = [t for t in self.supervisor._tasks if not t.done()]
            # Runs of a job named "gated" wait for the test to open their gate: they stay.
            gated = [t for t in busy if "gated" in t.get_name()]
            if len(busy) == len(gated) and self.supervisor.running <= len(gated):
                break  # claims in flight count in ``running`` too
            await asyncio.sleep(0.001)
        # In real time the store writes its buffer every 0.2 s, long before a second passes;
        # flushing at each step keeps that order under the virtual clock.
        with contextlib.suppress(Exception):
            await self.supervisor.store.flush()
        if wake.is_set():
            wake.clear()
            return
        self.steps += 1
        self.clock.now += timedelta(seconds=3600.0 if timeout is None else timeout)
        if self.on_step is not None:
            self.on_step(self.clock.now)
        if self.clock.now > self.until:
            self.supervisor.request_stop()


def make_config(folder: Path, jobs: str, settings: str = "") -> Config:
    text = (
        "settings:\n  timezone: UTC\n  shutdown_grace: 0s\n"
        + textwrap.indent(textwrap.dedent(settings), "  ")
        + "jobs:\n"
        + textwrap.indent(textwrap.dedent(jobs), "  ")
    )
    return parse_config_text(text, filename=str(folder / "jobs.yaml"), base_dir=folder)


async def supervise(
    config: Config,
    store_path: Path,
    start: datetime,
    until: datetime,
    *,
    wrap: Callable[[SqliteStore], Store] | None = None,
    on_step: Callable[[datetime], None] | None = None,
    before: Callable[[Supervisor], Awaitable[Any]] | None = None,
) -> tuple[list[Event], list[RunResult]]:
    """Run the supervisor from ``start`` to ``until`` in virtual time; return its events and the
    store's rows (by job, then scheduled time)."""
    clock = VirtualClock(start)
    timer = VirtualTimer(clock, until, on_step)
    sqlite = SqliteStore(store_path, clock=clock)
    await sqlite.open()
    store: Store = wrap(sqlite) if wrap is not None else sqlite
    bus = EventBus()
    events: list[Event] = []
    bus.subscribe(events.append)
    supervisor = Supervisor(config, store=store, bus=bus, clock=clock, timer=timer)
    timer.supervisor = supervisor
    try:
        if before is not None:
            await before(supervisor)
        await asyncio.wait_for(supervisor.run(), timeout=90)
        rows = await sqlite.history(limit=1_000_000)
    finally:
        await sqlite.close()
    return events, sorted(rows, key=lambda r: (r.job, r.scheduled or start, r.run_id))


def rows_of(rows: list[RunResult], job: str) -> list[RunResult]:
    return [r for r in rows if r.job == job]


def show(rows: list[RunResult]) -> str:
    return "\n".join(
        f"{r.job} {r.scheduled} {r.trigger} {r.status} started={r.started} error={r.error}"
        for r in rows
    )


class RefusingStore:
    """A Store that refuses claims while ``refusing()`` is true, as a read-only or full disk
    would; everything else goes to the real store."""

    def __init__(self, inner: SqliteStore, refusing: Callable[[], bool]) -> None:
        self._inner = inner
        self._refusing = refusing
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def claim(self, fires: Any) -> list[bool]:
        from qtasks_cli.errors import StoreError

        if self._refusing():
            self.refused += len(fires)
            where = self._inner.location
            raise StoreError(
                f"{where}: claiming fires failed: attempt to write a readonly database"
            )
        return await self._inner.claim(fires)
