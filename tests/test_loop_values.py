"""The loop never runs a job value's code; values are dropped off it; the daemon's own blocking
work never waits on the executor jobs share (in-process, fast)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from qtasks_cli import calling, failures, offthread, previews, release
from qtasks_cli.context import RUN_VAR, RunInfo
from qtasks_cli.runtime import Runtime


class Tripwire(Exception):
    """Raised by a job value's code that must not run on the calling thread."""


def _no_code_here() -> None:
    if threading.current_thread() is threading.main_thread():
        raise Tripwire("a job value's code ran on the main thread")


class Meta(type):
    def __eq__(cls, other: object) -> bool:
        _no_code_here()
        return type.__eq__(cls, other)

    def __hash__(cls) -> int:
        _no_code_here()
        return type.__hash__(cls)

    def __getattribute__(cls, name: str) -> Any:
        if name not in ("__mro__", "__dict__") and not name.startswith("_abc"):
            _no_code_here()
        return type.__getattribute__(cls, name)


class Hostile(metaclass=Meta):
    @property  # type: ignore[misc]
    def __class__(self) -> type:
        _no_code_here()
        return object


class HostileError(Exception, metaclass=Meta):
    @property  # type: ignore[misc]
    def __class__(self) -> type:
        _no_code_here()
        return HostileError


def test_looking_at_a_hostile_value_runs_none_of_its_code() -> None:
    value, exc = Hostile(), HostileError("boom")
    assert not calling._awaitable(value)
    assert failures.type_name(exc).endswith("HostileError")
    assert failures.class_name(type(value)) == "Hostile"
    with pytest.raises(previews.NeedsJobCode):
        previews.preview(value, lambda text: text)
    release.adopt(value)
    release.adopt(exc)
    spec_types = (ValueError, HostileError)
    assert failures.is_subclass(type(exc), spec_types)
    assert not failures.is_subclass(type(value), spec_types)


def test_preview_off_loop_and_describe_of_hostile_values_run_their_code_in_a_thread() -> None:
    async def main() -> tuple[str, tuple[str, str, str | None]]:
        shown = await previews.preview_off_loop([Hostile()], lambda text: text)
        described = await failures.describe_exception_off_loop(HostileError("x"), lambda t: t)
        return shown, described

    shown, (error_type, message, _) = asyncio.run(main())
    assert "Hostile" in shown
    assert error_type.endswith("HostileError") and message == "x"


def test_a_value_is_dropped_in_the_release_thread_nested_ones_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(release, "CHECK_EVERY", 0.01)
    dropped: list[str] = []
    done = threading.Event()

    class Mark:
        def __del__(self) -> None:
            dropped.append(threading.current_thread().name)
            done.set()

    value = {"rows": [[Mark()], *range(release.SLICE * 3)]}
    release.adopt(value)
    del value
    assert done.wait(10), "the nested value was never freed"
    assert dropped == ["qtasks-release"]


def test_a_value_held_only_by_a_cycle_is_freed_in_the_helper_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No reference count frees a cycle: the collector would, on whichever thread allocates
    # (often the loop's), running every __del__ there.
    monkeypatch.setattr(release, "CHECK_EVERY", 0.01)
    monkeypatch.setattr(release, "CYCLE_CHECK", 0.05)
    freed_in: list[str] = []
    done = threading.Event()

    class Conn:
        def __init__(self) -> None:
            self.me = self  # a cycle, as parent and child links make

        def __del__(self) -> None:
            freed_in.append(threading.current_thread().name)
            done.set()

    value = Conn()
    release.adopt(value)
    del value
    assert done.wait(10), "the cycle was never freed"
    assert freed_in == ["qtasks-release"]


def test_a_cycle_someone_else_holds_is_kept_and_watched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(release, "CHECK_EVERY", 0.01)
    monkeypatch.setattr(release, "CYCLE_CHECK", 0.02)

    class Node:
        def __init__(self) -> None:
            self.me = self

    held = Node()
    release.adopt(held)
    deadline = time.monotonic() + 5
    while id(held) not in release._checked and time.monotonic() < deadline:
        time.sleep(0.01)  # checked once (a collection in the helper), then watched
    assert id(held) in release._checked and release.pending() >= 1
    assert held.me is held


def test_a_value_someone_holds_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(release, "CHECK_EVERY", 0.01)
    held = {"rows": list(range(1000))}
    release.adopt(held)
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(held["rows"]) == 1000


def test_daemon_calls_never_queue_behind_jobs_hung_calls() -> None:
    never = threading.Event()
    pool = offthread.DaemonExecutor(job_workers=2)

    async def main() -> str:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(pool)
        token = RUN_VAR.set(RunInfo(job="j", run_id="r", trigger="manual", scheduled=None))
        try:
            hung = [asyncio.ensure_future(asyncio.to_thread(never.wait)) for _ in range(3)]
        finally:
            RUN_VAR.reset(token)
        await asyncio.sleep(0.05)
        # The job's pool is full; the daemon's own calls (no run in context) still run.
        answer = await asyncio.wait_for(asyncio.to_thread(lambda: "daemon"), 10)
        own = await asyncio.wait_for(offthread.run(lambda: "own"), 10)
        never.set()
        await asyncio.wait_for(asyncio.gather(*hung), 10)
        return answer + own

    try:
        assert asyncio.run(main()) == "daemonown"
    finally:
        never.set()
        pool.shutdown()


def test_a_stray_task_borrows_a_unit_and_counts_as_stuck_until_it_ends() -> None:
    async def main() -> None:
        runtime = Runtime(1)
        release_it = asyncio.Event()

        async def stubborn() -> None:
            await release_it.wait()

        task = asyncio.ensure_future(stubborn())
        runtime.keep(task, "job", "run")
        held = runtime.occupancy.of("job")
        assert held.stuck == 1 and held.stuck_tasks == 1
        assert runtime.capacity.in_use == 1
        release_it.set()
        await task
        await asyncio.sleep(0)
        assert runtime.occupancy.of("job").stuck == 0 and runtime.capacity.in_use == 0
        assert "run" not in runtime.abandoned

    asyncio.run(main())
