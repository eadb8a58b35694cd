"""A burst prepares every run before the instant and starts the bodies one after the other at
``go``; the fine wait to the instant (clock.settle_until) with an injected clock."""

from __future__ import annotations

import asyncio
import contextvars
import sys
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from qtasks_cli import keepstate
from qtasks_cli.burst import Burst, Gate, KeptSteps
from qtasks_cli.clock import settle_until, utcnow

T0 = datetime(2026, 11, 28, 12, 0, 0, tzinfo=timezone.utc)
VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="outside")

needs_stepping = pytest.mark.skipif(
    sys.version_info < (3, 11), reason="3.10 starts a burst's tasks as plain tasks"
)


async def run(i: int, gate: Gate, log: list[Any], *, wait: asyncio.Future[None] | None = None):
    task = asyncio.current_task()
    log.append(("prologue", i, task.get_name() if task else None, VAR.get()))
    VAR.set(f"run {i}")
    if wait is not None:
        await wait
    await gate
    log.append(("body", i, task is asyncio.current_task(), VAR.get()))
    await asyncio.sleep(0)
    log.append(("after", i))
    return i


@needs_stepping
def test_every_body_starts_before_any_run_goes_on_and_after_every_prologue() -> None:
    async def main() -> None:
        log: list[Any] = []
        burst = Burst(T0)
        tasks = [burst.add(run(i, burst.gate, log), name=f"run-{i}") for i in range(5)]
        assert [entry[0] for entry in log] == ["prologue"] * 5
        assert [entry[2] for entry in log] == [f"run-{i}" for i in range(5)]
        assert len(burst) == 5
        burst.go(lambda: T0)
        assert burst.gate.at == T0
        assert log[5:] == [("body", i, True, f"run {i}") for i in range(5)]
        assert await asyncio.gather(*tasks) == list(range(5))
        assert log[10:] == [("after", i) for i in range(5)]
        assert VAR.get() == "outside"  # each run's context is its own

    asyncio.run(main())


@needs_stepping
def test_a_run_suspended_before_the_gate_passes_it_open_later() -> None:
    async def main() -> None:
        log: list[Any] = []
        burst = Burst(T0)
        slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiting = burst.add(run(0, burst.gate, log, wait=slot))
        on_time = burst.add(run(1, burst.gate, log))
        assert len(burst) == 1  # only the run at the gate is held
        burst.go(lambda: T0)
        slot.set_result(None)
        assert await asyncio.gather(waiting, on_time) == [0, 1]
        bodies = [entry[1] for entry in log if entry[0] == "body"]
        assert bodies == [1, 0]

    asyncio.run(main())


@needs_stepping
def test_a_run_the_loop_reaches_before_go_is_never_stranded_at_the_gate() -> None:
    async def main() -> None:
        log: list[Any] = []
        burst = Burst(T0)
        task = burst.add(run(0, burst.gate, log))
        assert await task == 0  # go never came: the task passed the gate itself
        assert [entry[0] for entry in log] == ["prologue", "body", "after"]

    asyncio.run(main())


@needs_stepping
def test_errors_and_cancellation_reach_the_task() -> None:
    async def fails(gate: Gate) -> None:
        await gate
        raise ValueError("body failed")

    async def fails_early(gate: Gate) -> None:
        raise KeyError("prologue failed")

    async def main() -> None:
        burst = Burst(T0)
        late = burst.add(fails(burst.gate))
        early = burst.add(fails_early(burst.gate))
        gated = burst.add(run(0, burst.gate, []))
        gated.cancel()
        burst.go(lambda: T0)
        with pytest.raises(ValueError, match="body failed"):
            await late
        with pytest.raises(KeyError):
            await early
        # Its body had started at go; the cancel stops it at its next suspension.
        with pytest.raises(asyncio.CancelledError):
            await gated

    asyncio.run(main())


def test_a_gate_reached_after_go_does_not_wait() -> None:
    async def main() -> None:
        burst = Burst(T0)
        burst.go(lambda: T0)
        log: list[Any] = []
        assert await asyncio.create_task(run(3, burst.gate, log)) == 3
        assert [entry[0] for entry in log] == ["prologue", "body", "after"]

    asyncio.run(main())


class FakeTime:
    def __init__(self, now: float, step: float = 0.0001) -> None:
        self.now = now
        self.step = step
        self.slept: list[float] = []
        self.reads = 0

    def read(self) -> float:
        self.reads += 1
        self.now += self.step  # each read of the clock takes a little time
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_settle_sleeps_most_of_the_way_and_spins_the_rest() -> None:
    fake = FakeTime(100.0)
    settle_until(100.004, now=fake.read, sleep=fake.sleep, spin=0.0005)
    assert len(fake.slept) == 1
    assert fake.slept[0] == pytest.approx(0.004 - 0.0001 - 0.0005)
    assert fake.now >= 100.004


def test_settle_returns_at_once_when_the_instant_has_passed() -> None:
    fake = FakeTime(100.0)
    settle_until(99.0, now=fake.read, sleep=fake.sleep)
    assert fake.slept == []
    assert fake.reads == 1


def test_settle_never_waits_longer_than_its_limit() -> None:
    fake = FakeTime(100.0, step=0.00001)
    settle_until(
        160.0, now=fake.read, sleep=fake.sleep, monotonic=fake.read, spin=0.001, limit=0.01
    )
    assert fake.now == pytest.approx(100.01, abs=0.0001)
    assert sum(fake.slept) <= 0.01


def test_a_wall_clock_stepped_back_during_the_spin_is_not_waited_out() -> None:
    wall = FakeTime(100.0, step=0.00001)
    steady = FakeTime(5.0, step=0.00001)

    def read_wall() -> float:
        steady.read()  # the two clocks move together...
        if wall.reads == 50:
            wall.now -= 6.0  # ...until the wall clock is stepped back 6 s
        return wall.read()

    settle_until(100.004, now=read_wall, sleep=steady.sleep, monotonic=steady.read, spin=0.005)
    assert steady.now < 5.0 + 0.004 + 0.001  # the spin ended by the monotonic clock


async def chain(i: int, gate: Gate, fn: Any, log: list[Any]) -> Any:
    """A run as the executor makes it: set-up, then the body started by the burst."""
    log.append(("set-up", i))
    driven, value = await gate.start(fn, (i,), {}, lambda: T0, f"job{i}")
    log.append(("after", i, driven))
    return value


@needs_stepping
def test_go_starts_each_body_itself_and_the_runs_go_on_after_the_burst() -> None:
    async def body(i: int) -> str:
        task = asyncio.current_task()
        log.append(("body", i, task.get_name() if task else None, VAR.get()))
        return f"done {i}"

    log: list[Any] = []

    async def main() -> None:
        burst = Burst(T0)
        VAR.set("outside")
        tasks = [burst.add(chain(i, burst.gate, body, log), name=f"run-{i}") for i in range(3)]
        assert log == [("set-up", 0), ("set-up", 1), ("set-up", 2)]
        burst.go(lambda: T0)
        assert log[3:] == [("body", i, f"run-{i}", "outside") for i in range(3)]
        assert await asyncio.gather(*tasks) == ["done 0", "done 1", "done 2"]
        assert log[6:] == [("after", i, True) for i in range(3)]

    asyncio.run(main())


@needs_stepping
def test_a_body_that_waits_is_driven_on_by_its_task_and_sees_its_cancellation() -> None:
    seen: list[str] = []

    async def waits(i: int) -> str:
        try:
            await asyncio.sleep(0.01)
            seen.append(f"woke {i}")
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            seen.append(f"cancelled {i}")
            raise
        return "never"

    async def main() -> None:
        log: list[Any] = []
        burst = Burst(T0)
        task = burst.add(chain(0, burst.gate, waits, log))
        early = burst.add(chain(1, burst.gate, waits, log))
        burst.go(lambda: T0)
        early.cancel()  # before its task took a step of its own
        with pytest.raises(asyncio.CancelledError):
            await early
        while "woke 0" not in seen:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert seen == ["cancelled 1", "woke 0", "cancelled 0"]

    asyncio.run(main())


@needs_stepping
def test_what_a_started_body_raises_or_returns_reaches_the_run() -> None:
    async def fails(i: int) -> None:
        raise ValueError(f"body {i} failed")

    def plain(i: int) -> int:  # not a coroutine function after all: its value is handed back
        return i * 10

    async def main() -> None:
        log: list[Any] = []
        burst = Burst(T0)
        failing = burst.add(chain(0, burst.gate, fails, log))
        valued = burst.add(chain(1, burst.gate, plain, log))
        burst.go(lambda: T0)
        with pytest.raises(ValueError, match="body 0 failed"):
            await failing
        assert await valued == 10
        assert ("after", 1, False) in log

    asyncio.run(main())


def test_a_start_reached_after_go_calls_the_body_as_a_plain_await_would() -> None:
    async def body(i: int) -> int:
        await asyncio.sleep(0)
        return i + 1

    async def main() -> None:
        burst = Burst(T0)
        burst.go(lambda: T0)
        assert await asyncio.create_task(chain(4, burst.gate, body, [])) == 5

    asyncio.run(main())


def _seen_by(profiled: list[str]) -> Any:
    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            profiled.append(frame.f_code.co_name)

    return profile


@needs_stepping
def test_a_profiler_or_debug_mode_a_body_leaves_on_the_loop_costs_the_next_bodies_nothing() -> None:
    """One body of a burst sets a profile function and the loop's debug mode (each makes every
    later call on the loop's thread slow); they are put back before the next body starts, and
    after each later step of a body driven by its task (keepstate.step_changed)."""
    profiled: list[str] = []

    async def sets(i: int) -> str:
        sys.setprofile(_seen_by(profiled))
        asyncio.get_running_loop().set_debug(True)
        await asyncio.sleep(0)
        sys.setprofile(_seen_by(profiled))  # again, in a later step
        return "set"

    async def other_body(i: int) -> str:
        await asyncio.sleep(0)
        return "other"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        keepstate.capture(loop)
        try:
            burst = Burst(T0)
            tasks = [
                burst.add(chain(i, burst.gate, sets if i == 0 else other_body, []))
                for i in range(3)
            ]
            burst.go(lambda: T0)
            assert sys.getprofile() is None and not loop.get_debug()
            assert await asyncio.gather(*tasks) == ["set", "other", "other"]
            assert sys.getprofile() is None
            assert "other_body" not in profiled, profiled
            # Outside a burst, a job's coroutine awaited through KeptSteps likewise.
            profiled.clear()
            assert await KeptSteps(sets(9), "job9") == "set"
            assert sys.getprofile() is None and not loop.get_debug()
            assert await other_body(0) == "other"
            assert "other_body" not in profiled, profiled
        finally:
            keepstate.release()

    asyncio.run(main())


@needs_stepping
@pytest.mark.parametrize("real", [True, False])
def test_a_body_that_ends_in_its_first_step_gets_its_end_on_the_run_clock(real: bool) -> None:
    # On the real clock the end is read off perf_counter and made wall time from the gate's
    # opening; an injected clock is read as it is (virtual time stays exact).
    ticks = iter([T0, T0 + timedelta(seconds=3)])
    clock = utcnow if real else lambda: next(ticks)
    starts: list[Any] = []

    async def body() -> str:
        return "done"

    async def run_one(gate: Gate) -> datetime | None:
        start = gate.start(body, (), {}, clock, "job")
        starts.append(start)
        await start
        return start.ended

    async def main() -> None:
        burst = Burst(T0)
        task = burst.add(run_one(burst.gate))
        before = utcnow()
        burst.go(clock)
        after = utcnow()
        ended = await task
        assert ended is not None and ended.tzinfo is not None
        if real:
            assert burst.gate.at is not None and burst.gate.at <= ended <= after
            assert before <= ended
        else:
            assert ended == T0 + timedelta(seconds=3)

    asyncio.run(main())
