"""The daemon's side of fencing and of cancels, on a real supervisor and SQLite store: a run the
store says another daemon concluded is let go (its body stopped, nothing recorded, its event
not counted), and a cancel that lands while a run's end is being recorded never leaves its job
counted as running for ever."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from test_supervisor import make_config

from qtasks_cli.events import Event, EventBus, EventKind
from qtasks_cli.fencing import honour_conclusions
from qtasks_cli.models import RunResult, RunStatus
from qtasks_cli.store.sqlite import SqliteStore, enqueue_now
from qtasks_cli.supervisor import Supervisor

STARTED: dict[str, asyncio.Event] = {}


async def hold(name: str) -> None:
    STARTED.setdefault(name, asyncio.Event()).set()
    await asyncio.sleep(3600)


async def quick() -> str:
    return "done"


class SlowFinish:
    """The store, but each ``finish`` waits for ``gate``."""

    def __init__(self, inner: SqliteStore) -> None:
        self.inner = inner
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def finish(self, result: RunResult) -> None:
        self.waiting.set()
        await self.gate.wait()
        await self.inner.finish(result)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def _until(check: Callable[[], bool], what: str) -> None:
    for _ in range(2000):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


async def _running(
    tmp_path: Path, jobs: str, body: Callable[[Supervisor, Any, list[Event]], Awaitable[None]]
) -> None:
    config = make_config(tmp_path, jobs)
    store = SqliteStore(tmp_path / "state.db")
    await store.open()
    wrapped = SlowFinish(store)
    wrapped.gate.set()
    bus = EventBus()
    events: list[Event] = []
    bus.subscribe(events.append)
    supervisor = Supervisor(config, store=wrapped, bus=bus)  # type: ignore[arg-type]
    task = asyncio.create_task(supervisor.run())
    await asyncio.wait_for(supervisor.ready.wait(), 30)
    try:
        await body(supervisor, wrapped, events)
    finally:
        supervisor.request_stop()
        await asyncio.wait_for(task, 30)
        await store.close()


def test_a_run_concluded_elsewhere_is_let_go_and_not_recorded(tmp_path: Path) -> None:
    async def body(supervisor: Supervisor, store: Any, events: list[Event]) -> None:
        run_id = enqueue_now(str(tmp_path / "state.db"), "held", ["a"], {})
        supervisor.nudge()
        await asyncio.wait_for(STARTED.setdefault("a", asyncio.Event()).wait(), 30)
        await store.flush()
        # Another daemon concludes it (SQLite: a recovery; PostgreSQL: a reaper).
        other = SqliteStore(tmp_path / "state.db")
        await other.open()
        try:
            assert [r.run_id for r in await other.recover(supervisor.clock())] == [run_id]
        finally:
            await other.close()
        assert supervisor.runs_in_hand() == {run_id: "held"}
        assert await honour_conclusions(supervisor) == [run_id]
        await _until(lambda: supervisor.occupancy.of("held").running == 0, "the body stopped")
        [end] = [e for e in events if e.kind is EventKind.FINISHED and e.run_id == run_id]
        assert end.status is RunStatus.INTERRUPTED and end.recorded is False
        await store.flush()
        row = await store.get_run(run_id)
        assert row is not None and row.status is RunStatus.INTERRUPTED
        assert (row.error or "").startswith("daemon stopped while the run was in progress")
        assert supervisor.runs_in_hand() == {}

    asyncio.run(_running(tmp_path, "held:\n  entrypoint: test_supervisor_fencing:hold\n", body))


def test_a_cancel_that_lands_while_the_end_is_recorded_frees_the_job(tmp_path: Path) -> None:
    async def body(supervisor: Supervisor, store: Any, events: list[Event]) -> None:
        store.gate.clear()
        run_id = enqueue_now(str(tmp_path / "state.db"), "quick", [], {})
        supervisor.nudge()
        await asyncio.wait_for(store.waiting.wait(), 30)  # its end is being recorded
        assert supervisor.cancel_run(run_id, "me@box (pid 1)") is True
        await asyncio.sleep(0.05)
        store.gate.set()
        await _until(lambda: supervisor.occupancy.of("quick").running == 0, "the job is free again")
        again = enqueue_now(str(tmp_path / "state.db"), "quick", [], {})
        supervisor.nudge()
        await _until(
            lambda: any(e.kind is EventKind.FINISHED and e.run_id == again for e in events),
            "it runs again",
        )

    asyncio.run(_running(tmp_path, "quick:\n  entrypoint: test_supervisor_fencing:quick\n", body))
