"""The executor: kinds of callables, generators, retries, timeouts, hooks, errors, capacity."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from qtasks_cli import entrypoints
from qtasks_cli.events import Event, EventKind
from qtasks_cli.executor import execute
from qtasks_cli.failures import ERROR_CHARS, TRACEBACK_CHARS
from qtasks_cli.models import JobSpec, RetryPolicy, RunResult, RunStatus, TriggerKind
from qtasks_cli.occupancy import Capacity
from qtasks_cli.previews import result_preview
from qtasks_cli.runtime import Runtime

# --- helpers -------------------------------------------------------------------------------------

SECRET = "hunter2-sekret"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def resolve(ref: str) -> Any:
    """Test refs are ``t:name``, naming an object of this module."""
    module, _, name = ref.partition(":")
    assert module == "t", ref
    return globals()[name]


def job(entry: str, **fields: Any) -> JobSpec:
    fields.setdefault("name", entry)
    return JobSpec(entrypoint=f"t:{entry}", **fields)


class Sleeper:
    """Records the delays asked for and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


class Clock:
    """Advances one second each time it is read."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


async def run_async(
    spec: JobSpec,
    *,
    runtime: Runtime | None = None,
    events: list[Event] | None = None,
    sleep: Sleeper | None = None,
    **kwargs: Any,
) -> RunResult:
    kwargs.setdefault("resolve", resolve)
    runtime = runtime or Runtime(4)
    result = await execute(
        spec,
        run_id="r1",
        trigger=TriggerKind.MANUAL,
        scheduled=None,
        runtime=runtime,
        emit=(events if events is not None else []).append,
        sleep=sleep or Sleeper(),
        **kwargs,
    )
    await runtime.settle_hooks(None)  # a hook runs on its own after the run
    return result


def run(spec: JobSpec, **kwargs: Any) -> RunResult:
    return asyncio.run(run_async(spec, **kwargs))


def kinds(events: list[Event]) -> list[EventKind]:
    return [e.kind for e in events]


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Let the loop run until ``predicate()`` holds (a thread's hand-back arrives)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.005)


# --- the jobs the tests resolve ------------------------------------------------------------------

calls: dict[str, Any] = {}


async def async_add(a: int, b: int = 0) -> int:
    await asyncio.sleep(0)
    return a + b


def sync_thread_name() -> str:
    return threading.current_thread().name


def sync_waits_for_loop(flag: threading.Event) -> bool:
    # Only returns True if the loop kept running while this function blocked.
    return flag.wait(5)


def sync_returns_awaitable() -> Awaitable[str]:
    return async_add_str()


async def async_add_str() -> str:
    await asyncio.sleep(0)
    return "awaited on the loop"


def gen_three() -> Iterator[int]:
    calls.setdefault("gen_threads", []).append(threading.current_thread().name)
    yield 1
    calls["gen_threads"].append(threading.current_thread().name)
    yield 2
    yield 3


async def agen_three() -> AsyncIterator[int]:
    for i in (1, 2, 3):
        await asyncio.sleep(0)
        yield i


def gen_secret() -> Iterator[str]:
    yield f"token={SECRET}"
    yield "x" * 500


def _closable() -> Iterator[int]:
    try:
        yield 1
        yield 2
    finally:
        calls["closed"] = threading.current_thread().name


async def _aclosable() -> AsyncIterator[int]:
    try:
        yield 1
        yield 2
    finally:
        calls["closed"] = "loop"


def gen_closable() -> Iterator[int]:
    # Held here so that only an explicit close, not garbage collection, runs the finally.
    calls["keep"] = gen = _closable()
    return gen


def agen_closable() -> AsyncIterator[int]:
    calls["keep"] = agen = _aclosable()
    return agen


def factory_of_generator() -> Iterator[int]:
    return iter_gen()


def iter_gen() -> Iterator[int]:
    yield from (7, 8)


def handler_times_ten(item: int) -> int:
    calls.setdefault("handler_threads", []).append(threading.current_thread().name)
    return item * 10


async def handler_async(item: int) -> str:
    await asyncio.sleep(0)
    return f"a{item}"


def handler_awaitable(item: int) -> Awaitable[str]:
    return handler_async(item)


def handler_raises(item: int) -> int:
    raise LookupError(f"cannot store {item}")


class Flaky:
    """Raises the queued exceptions one call at a time, then returns "ok"."""

    def __init__(self) -> None:
        self.errors: list[BaseException] = []
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


flaky = Flaky()


class CustomBase(BaseException):
    pass


def raise_in_sync(exc: BaseException) -> None:
    raise exc


async def raise_in_async(exc: BaseException) -> None:
    await asyncio.sleep(0)
    raise exc


async def async_sleeps_forever() -> None:
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        calls["cancelled"] = True
        raise


def sync_blocks(release: threading.Event, started: threading.Event | None = None) -> str:
    if started is not None:
        started.set()
    release.wait(10)
    return "late"


async def async_waits(started: asyncio.Event) -> None:
    started.set()
    await asyncio.sleep(30)


def user_function_that_fails(password: str) -> None:
    raise ValueError(f"login refused for password {password}")


def raises_long(size: int) -> None:
    raise RuntimeError("E" * size)


def raises_deep(depth: int) -> None:
    if depth == 0:
        raise RuntimeError("the bottom")
    raises_deep(depth - 1)


def returns_big() -> list[int]:
    return list(range(1000))


def hook_sync(result: RunResult) -> None:
    calls.setdefault("hooks", []).append(("sync", result, threading.current_thread().name))


async def hook_async(result: RunResult) -> None:
    calls.setdefault("hooks", []).append(("async", result))


def hook_raises(result: RunResult) -> None:
    raise RuntimeError(f"hook broke for {result.run_id} with {SECRET}")


async def hook_hangs(result: RunResult) -> None:
    await asyncio.sleep(30)


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    calls.clear()
    flaky.errors.clear()
    flaky.calls = 0
    yield


# --- kinds of callables --------------------------------------------------------------------------


def test_async_job_success_reports_started_and_finished() -> None:
    events: list[Event] = []
    clock = Clock()
    result = run(job("async_add", args=(2,), kwargs={"b": 3}), events=events, clock=clock)
    assert result.status is RunStatus.SUCCEEDED
    assert result.result == 5
    assert result.result_preview == "5"
    assert result.attempts == 1
    assert result.items is None
    assert result.error is None and result.traceback is None
    assert [a.status for a in result.attempt_log] == [RunStatus.SUCCEEDED]
    assert kinds(events) == [EventKind.STARTED, EventKind.FINISHED]
    started, finished = events
    assert started.trigger is TriggerKind.MANUAL
    assert started.max_attempts == 1
    assert started.job == "async_add" and started.run_id == "r1"
    assert finished.status is RunStatus.SUCCEEDED
    assert finished.duration == result.duration
    assert result.duration is not None and result.duration > 0  # the clock ticked between reads
    assert all(e.time > T0 for e in events)


def test_args_and_kwargs_override_the_job_defaults() -> None:
    spec = job("async_add", args=(1,), kwargs={"b": 1})
    assert run(spec, args=[10], kwargs={"b": 5}).result == 15


def test_sync_job_runs_in_a_named_thread() -> None:
    result = run(job("sync_thread_name"))
    assert result.status is RunStatus.SUCCEEDED
    assert result.result.startswith("qtasks-job-")
    assert result.result != threading.current_thread().name


def test_blocking_sync_job_does_not_block_the_loop() -> None:
    async def main() -> RunResult:
        flag = threading.Event()
        task = asyncio.create_task(run_async(job("sync_waits_for_loop", args=(flag,))))
        await asyncio.sleep(0.01)
        flag.set()  # only possible because the job's blocking wait is not on the loop
        return await task

    assert asyncio.run(main()).result is True


def test_plain_function_returning_an_awaitable_is_awaited() -> None:
    result = run(job("sync_returns_awaitable"))
    assert result.status is RunStatus.SUCCEEDED
    assert result.result == "awaited on the loop"


def test_sync_generator_is_iterated_in_threads() -> None:
    result = run(job("gen_three"))
    assert result.status is RunStatus.SUCCEEDED
    assert result.result == [1, 2, 3]
    assert result.items == 3
    assert result.result_preview == "[1, 2, 3]"
    assert all(name.startswith("qtasks-job-") for name in calls["gen_threads"])


def test_async_generator_is_iterated_on_the_loop() -> None:
    result = run(job("agen_three"))
    assert result.result == [1, 2, 3]
    assert result.items == 3


def test_plain_function_returning_a_generator_is_iterated() -> None:
    result = run(job("factory_of_generator"))
    assert result.result == [7, 8]
    assert result.items == 2


def test_async_job_through_the_real_resolver(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "exec_mod_for_tests.py").write_text(
        textwrap.dedent(
            """
            import asyncio

            async def double(x):
                await asyncio.sleep(0)
                return x * 2

            def count(n):
                yield from range(n)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    entrypoints.clear_cache()
    try:
        spec = JobSpec(name="d", entrypoint="exec_mod_for_tests:double", args=(21,))
        gen_spec = JobSpec(name="c", entrypoint="exec_mod_for_tests:count", args=(4,))
        assert run(spec, resolve=entrypoints.resolve).result == 42
        assert run(gen_spec, resolve=entrypoints.resolve).result == [0, 1, 2, 3]
        missing = JobSpec(name="m", entrypoint="exec_mod_for_tests:nope")
        failed = run(missing, resolve=entrypoints.resolve)
        assert failed.status is RunStatus.FAILED
        assert failed.error_type == "qtasks_cli.errors.EntryPointError"
        assert "nope" in (failed.error or "")
    finally:
        entrypoints.clear_cache()
        sys.modules.pop("exec_mod_for_tests", None)


# --- generate_handler and echo -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("handler", "expected"),
    [
        ("handler_times_ten", [10, 20, 30]),
        ("handler_async", ["a1", "a2", "a3"]),
        ("handler_awaitable", ["a1", "a2", "a3"]),
    ],
)
@pytest.mark.parametrize("entry", ["gen_three", "agen_three"])
def test_generate_handler_results_are_the_run_result(
    entry: str, handler: str, expected: list[Any]
) -> None:
    result = run(job(entry, generate_handler=f"t:{handler}"))
    assert result.status is RunStatus.SUCCEEDED
    assert result.result == expected
    assert result.items == 3


def test_sync_handler_runs_in_a_thread() -> None:
    run(job("agen_three", generate_handler="t:handler_times_ten"))
    assert len(calls["handler_threads"]) == 3
    assert all(name.startswith("qtasks-job-") for name in calls["handler_threads"])


def test_echo_emits_one_redacted_clipped_item_event_per_item() -> None:
    events: list[Event] = []
    spec = job("gen_secret", echo=True, secrets=((SECRET, "${TOKEN}"),))
    result = run(spec, events=events)
    items = [e for e in events if e.kind is EventKind.ITEM]
    assert [e.items for e in items] == [1, 2]
    assert items[0].item == repr("token=${TOKEN}")
    assert items[1].item is not None and len(items[1].item) == 200
    assert items[1].item.endswith("…")
    assert SECRET not in (result.result_preview or "")
    assert kinds(events) == [EventKind.STARTED, EventKind.ITEM, EventKind.ITEM, EventKind.FINISHED]


def test_echo_shows_the_handled_value_when_a_handler_is_set() -> None:
    events: list[Event] = []
    run(job("gen_three", echo=True, generate_handler="t:handler_async"), events=events)
    assert [e.item for e in events if e.kind is EventKind.ITEM] == ["'a1'", "'a2'", "'a3'"]


def test_no_item_events_without_echo() -> None:
    events: list[Event] = []
    run(job("gen_three"), events=events)
    assert EventKind.ITEM not in kinds(events)


@pytest.mark.parametrize("entry", ["gen_closable", "agen_closable", "gen_three"])
def test_handler_that_raises_fails_the_attempt(entry: str) -> None:
    async def main() -> RunResult:
        result = await run_async(job(entry, generate_handler="t:handler_raises"))
        # Checked before asyncio.run's shutdown, which would close async generators itself.
        closed.append(calls.get("closed"))
        return result

    closed: list[str | None] = []
    result = asyncio.run(main())
    assert result.status is RunStatus.FAILED
    assert result.error_type == "LookupError"
    assert result.error == "generate_handler 't:handler_raises' failed: cannot store 1"
    assert result.items == 0
    assert result.traceback is not None and "handler_raises" in result.traceback
    if entry == "gen_closable":
        assert (closed[0] or "").startswith("qtasks-job-")  # closed, in a job thread
    if entry == "agen_closable":
        assert closed == ["loop"]


# --- retries -------------------------------------------------------------------------------------


def test_retries_until_success_with_backoff_delays() -> None:
    flaky.errors[:] = [ConnectionError("down"), ConnectionError("still down")]
    sleeper = Sleeper()
    events: list[Event] = []
    policy = RetryPolicy(retries=3, delay=timedelta(seconds=1), backoff=2.0)
    result = run(job("flaky", retry=policy), sleep=sleeper, events=events)
    assert result.status is RunStatus.SUCCEEDED
    assert result.attempts == 3 and flaky.calls == 3
    assert sleeper.delays == [1.0, 2.0]
    assert [a.status for a in result.attempt_log] == [
        RunStatus.FAILED,
        RunStatus.FAILED,
        RunStatus.SUCCEEDED,
    ]
    assert result.attempt_log[0].error == "down"
    assert kinds(events) == [
        EventKind.STARTED,
        EventKind.ATTEMPT_FAILED,
        EventKind.RETRYING,
        EventKind.ATTEMPT_FAILED,
        EventKind.RETRYING,
        EventKind.FINISHED,
    ]
    failed = [e for e in events if e.kind is EventKind.ATTEMPT_FAILED]
    assert [(e.attempt, e.max_attempts, e.error_type, e.error) for e in failed] == [
        (1, 4, "ConnectionError", "down"),
        (2, 4, "ConnectionError", "still down"),
    ]
    retrying = [e for e in events if e.kind is EventKind.RETRYING]
    assert [(e.attempt, e.delay) for e in retrying] == [(2, 1.0), (3, 2.0)]


def test_retries_used_up_delays_capped_at_max_delay() -> None:
    flaky.errors[:] = [RuntimeError(f"fail {i}") for i in range(10)]
    sleeper = Sleeper()
    policy = RetryPolicy(
        retries=4, delay=timedelta(seconds=1), backoff=3.0, max_delay=timedelta(seconds=5)
    )
    result = run(job("flaky", retry=policy), sleep=sleeper)
    assert result.status is RunStatus.FAILED
    assert result.attempts == 5 and flaky.calls == 5
    assert sleeper.delays == [1.0, 3.0, 5.0, 5.0]
    assert result.error == "fail 4"
    assert [a.number for a in result.attempt_log] == [1, 2, 3, 4, 5]


def test_jitter_is_added_within_bounds() -> None:
    flaky.errors[:] = [RuntimeError("x")] * 20
    sleeper = Sleeper()
    policy = RetryPolicy(
        retries=20, delay=timedelta(seconds=2), backoff=1.0, jitter=timedelta(seconds=0.5)
    )
    run(job("flaky", retry=policy), sleep=sleeper)
    assert len(sleeper.delays) == 20
    assert all(2.0 <= d <= 2.5 for d in sleeper.delays)
    assert len(set(sleeper.delays)) > 1  # random, not a constant


def test_jitter_uses_uniform_zero_to_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    import random

    seen: list[tuple[float, float]] = []

    def uniform(a: float, b: float) -> float:
        seen.append((a, b))
        return b

    monkeypatch.setattr(random, "uniform", uniform)
    flaky.errors[:] = [RuntimeError("x")]
    sleeper = Sleeper()
    policy = RetryPolicy(retries=1, delay=timedelta(seconds=3), jitter=timedelta(seconds=0.25))
    run(job("flaky", retry=policy), sleep=sleeper)
    assert sleeper.delays == [3.25]
    assert seen[0] == (0.0, 0.25)


def test_retry_on_matches_subclasses() -> None:
    flaky.errors[:] = [ConnectionRefusedError("refused"), ConnectionResetError("reset")]
    policy = RetryPolicy(retries=5, on=("ConnectionError",), delay=timedelta(0))
    result = run(job("flaky", retry=policy))
    assert result.status is RunStatus.SUCCEEDED
    assert result.attempts == 3


def test_exception_not_in_retry_on_fails_at_once() -> None:
    flaky.errors[:] = [ValueError("bad input")]
    sleeper = Sleeper()
    events: list[Event] = []
    policy = RetryPolicy(retries=5, on=("ConnectionError",))
    result = run(job("flaky", retry=policy), sleep=sleeper, events=events)
    assert result.status is RunStatus.FAILED
    assert result.attempts == 1 and flaky.calls == 1
    assert sleeper.delays == []
    assert EventKind.RETRYING not in kinds(events)


def test_unresolvable_retry_on_name_is_logged_and_matches_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    flaky.errors[:] = [ConnectionError("x")]
    policy = RetryPolicy(retries=3, on=("NoSuchError", "ConnectionError"))
    result = run(job("flaky", retry=policy))
    assert result.status is RunStatus.SUCCEEDED  # the valid name still counts
    assert "'NoSuchError' cannot be resolved" in caplog.text


@pytest.mark.parametrize(
    "exc", [SystemExit(3), KeyboardInterrupt(), GeneratorExit(), CustomBase("custom")]
)
def test_base_exceptions_are_never_retried_by_default(exc: BaseException) -> None:
    flaky.errors[:] = [exc]
    result = run(job("flaky", retry=RetryPolicy(retries=3)))
    assert result.status is RunStatus.FAILED
    assert result.attempts == 1


def test_base_exception_listed_in_retry_on_is_retried() -> None:
    flaky.errors[:] = [CustomBase("once")]
    policy = RetryPolicy(retries=1, on=(f"{__name__}:CustomBase",))
    result = run(job("flaky", retry=policy))
    assert result.status is RunStatus.SUCCEEDED
    assert result.attempts == 2


# --- anything the job raises fails the run, never the process ------------------------------------


@pytest.mark.parametrize("entry", ["raise_in_sync", "raise_in_async"])
@pytest.mark.parametrize(
    ("exc", "error_type"),
    [
        (SystemExit(3), "SystemExit"),
        (KeyboardInterrupt(), "KeyboardInterrupt"),
        (GeneratorExit(), "GeneratorExit"),
        (CustomBase("custom"), f"{__name__}.CustomBase"),
        (ValueError("plain"), "ValueError"),
    ],
)
def test_anything_raised_fails_the_run_and_the_loop_goes_on(
    entry: str, exc: BaseException, error_type: str
) -> None:
    async def main() -> tuple[RunResult, RunResult]:
        runtime = Runtime(2)
        failed = await run_async(job(entry, args=(exc,)), runtime=runtime)
        after = await run_async(job("async_add", args=(1, 1)), runtime=runtime)
        return failed, after

    failed, after = asyncio.run(main())
    assert failed.status is RunStatus.FAILED
    assert failed.error_type == error_type
    assert failed.traceback is not None and entry in failed.traceback
    assert after.status is RunStatus.SUCCEEDED and after.result == 2


# --- timeouts ------------------------------------------------------------------------------------


def test_async_timeout_cancels_the_job() -> None:
    events: list[Event] = []
    spec = job("async_sleeps_forever", timeout=timedelta(milliseconds=50))
    result = run(spec, events=events)
    assert result.status is RunStatus.TIMED_OUT
    assert result.error_type == "TimeoutError"
    assert result.error == "timed out after 50ms"
    assert calls["cancelled"] is True
    assert result.attempt_log[0].status is RunStatus.TIMED_OUT
    assert result.traceback is not None
    assert "async_sleeps_forever" in result.traceback
    assert "cancelled here" in result.traceback
    assert f"{os.sep}asyncio{os.sep}" not in result.traceback
    finished = events[-1]
    assert finished.status is RunStatus.TIMED_OUT


def test_sync_timeout_leaves_a_zombie_counted_until_its_thread_returns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = threading.Event()
    runtime = Runtime(1)

    async def main() -> RunResult:
        await runtime.capacity.acquire()  # as the supervisor does
        spec = job("sync_blocks", args=(release,), timeout=timedelta(milliseconds=50))
        result = await run_async(spec, runtime=runtime)
        runtime.capacity.release()
        assert runtime.zombies == 1
        assert runtime.capacity.in_use == 1  # the stuck thread still counts
        waiter = asyncio.create_task(runtime.capacity.acquire())
        await asyncio.sleep(0.01)
        assert not waiter.done()  # the zombie holds the only unit
        release.set()
        await until(lambda: runtime.zombies == 0)
        await asyncio.wait_for(waiter, 5)
        assert runtime.capacity.in_use == 1  # now held by the waiter
        runtime.capacity.release()
        return result

    try:
        with caplog.at_level(logging.WARNING, logger="qtasks_cli.executor"):
            result = asyncio.run(main())
    finally:
        release.set()
    assert result.status is RunStatus.TIMED_OUT
    assert runtime.capacity.in_use == 0
    assert "job 'sync_blocks' run r1" in caplog.text
    assert "thread still running; counted against max_concurrent until it returns" in caplog.text
    assert result.traceback is not None
    assert "sync_blocks" in result.traceback and "still running here" in result.traceback
    assert "threading.py" not in result.traceback


@pytest.mark.parametrize(
    ("on", "attempts"),
    [((), 2), (("TimeoutError",), 2), (("OSError",), 2), (("ValueError",), 1)],
)
def test_timeout_is_retried_only_when_timeout_error_is_retried(
    on: tuple[str, ...], attempts: int
) -> None:
    policy = RetryPolicy(retries=1, on=on, delay=timedelta(0))
    spec = job("async_sleeps_forever", timeout=timedelta(milliseconds=20), retry=policy)
    result = run(spec)
    assert result.status is RunStatus.TIMED_OUT
    assert result.attempts == attempts


def test_last_attempt_decides_the_status() -> None:
    flaky.errors[:] = [TimeoutError("from the job")]
    result = run(job("flaky", retry=RetryPolicy(retries=1, delay=timedelta(0))))
    assert result.status is RunStatus.SUCCEEDED
    flaky.errors[:] = [TimeoutError("raised, not a timeout")]
    result = run(job("flaky"))
    assert result.status is RunStatus.FAILED  # only a real timeout is TIMED_OUT


# --- hooks ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("hook", ["hook_sync", "hook_async"])
def test_on_success_hook_gets_the_run_result(hook: str) -> None:
    result = run(job("async_add", args=(1,), on_success=f"t:{hook}", on_failure="t:hook_raises"))
    [call] = calls["hooks"]
    assert call[0] == hook.removeprefix("hook_")
    assert call[1] == result
    assert call[1].status is RunStatus.SUCCEEDED and call[1].run_id == "r1"
    if hook == "hook_sync":
        assert call[2].startswith("qtasks-job-")


def test_on_failure_hook_runs_once_after_the_retries() -> None:
    flaky.errors[:] = [RuntimeError("a"), RuntimeError("b")]
    spec = job(
        "flaky",
        retry=RetryPolicy(retries=1, delay=timedelta(0)),
        on_failure="t:hook_sync",
        on_success="t:hook_raises",
    )
    result = run(spec)
    [call] = calls["hooks"]
    assert call[1] == result
    assert call[1].status is RunStatus.FAILED and call[1].attempts == 2


def test_on_failure_hook_runs_after_a_timeout() -> None:
    spec = job(
        "async_sleeps_forever", timeout=timedelta(milliseconds=20), on_failure="t:hook_async"
    )
    result = run(spec)
    assert calls["hooks"][0][1].status is RunStatus.TIMED_OUT
    assert result.status is RunStatus.TIMED_OUT


def test_hook_that_raises_is_logged_and_changes_nothing(caplog: pytest.LogCaptureFixture) -> None:
    spec = job("async_add", args=(1,), on_success="t:hook_raises", secrets=((SECRET, "${PW}"),))
    with caplog.at_level(logging.WARNING, logger="qtasks_cli.executor"):
        result = run(spec)
    assert result.status is RunStatus.SUCCEEDED
    [record] = [r for r in caplog.records if "hook" in r.getMessage()]
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "'t:hook_raises'" in message and "hook broke for r1" in message
    assert SECRET not in message and "${PW}" in message


def test_hook_that_hangs_is_abandoned_at_the_job_timeout(caplog: pytest.LogCaptureFixture) -> None:
    spec = job(
        "async_add", args=(1,), timeout=timedelta(milliseconds=50), on_success="t:hook_hangs"
    )
    with caplog.at_level(logging.WARNING, logger="qtasks_cli.executor"):
        result = run(spec)
    assert result.status is RunStatus.SUCCEEDED
    assert "'t:hook_hangs' did not finish within 50ms" in caplog.text


def hook_blocks(result: RunResult) -> None:
    calls["hook_started"].set()
    calls["hook_gate"].wait(10)


def test_a_hung_hook_holds_neither_the_record_nor_the_job() -> None:
    # The run is over when its body is: its result is returned (and recorded by the caller)
    # while the hook still runs, and the hook's thread, abandoned at its timeout, is not the
    # job's (a job counts as running while its own abandoned thread lives).
    calls["hook_started"], calls["hook_gate"] = threading.Event(), threading.Event()
    spec = job(
        "async_add", args=(1,), timeout=timedelta(milliseconds=50), on_success="t:hook_blocks"
    )

    async def main() -> tuple[RunResult, bool, int, int]:
        runtime = Runtime(4)
        result = await execute(
            spec,
            run_id="r1",
            trigger=TriggerKind.MANUAL,
            scheduled=None,
            runtime=runtime,
            emit=lambda _: None,
            resolve=resolve,
        )
        hook_running = not calls["hook_started"].is_set() or not calls["hook_gate"].is_set()
        await runtime.settle_hooks(None)  # the hook times out: its thread is abandoned
        stuck_job = runtime.occupancy.of(spec.name).stuck
        stuck_hook = runtime.occupancy.of(f"{spec.name} (on_success hook)").stuck
        calls["hook_gate"].set()
        return result, hook_running, stuck_job, stuck_hook

    result, hook_running, stuck_job, stuck_hook = asyncio.run(main())
    assert result.status is RunStatus.SUCCEEDED and result.result == 1 and hook_running
    assert stuck_job == 0 and stuck_hook == 1  # counted as the hook's, not the job's


def test_unresolvable_hook_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    def strict(ref: str) -> Any:
        if ref == "t:missing_hook":
            raise LookupError("no such hook")
        return resolve(ref)

    with caplog.at_level(logging.WARNING, logger="qtasks_cli.executor"):
        result = run(job("async_add", args=(1,), on_success="t:missing_hook"), resolve=strict)
    assert result.status is RunStatus.SUCCEEDED
    assert "'t:missing_hook' failed: LookupError: no such hook" in caplog.text


# --- errors and tracebacks -----------------------------------------------------------------------


def test_traceback_keeps_user_frames_only_and_secrets_are_redacted() -> None:
    spec = job("user_function_that_fails", args=(SECRET,), secrets=((SECRET, "${PASSWORD}"),))
    result = run(spec)
    assert result.status is RunStatus.FAILED
    assert result.error_type == "ValueError"
    assert result.error == "login refused for password ${PASSWORD}"
    tb = result.traceback or ""
    assert tb.startswith("Traceback (most recent call last):")
    assert "test_executor.py" in tb and "user_function_that_fails" in tb
    assert "qtasks_cli" not in tb and "tenacity" not in tb
    assert f"{os.sep}asyncio{os.sep}" not in tb
    assert "threading.py" not in tb
    assert SECRET not in tb and "${PASSWORD}" in tb
    assert result.attempt_log[0].error == result.error


def test_import_error_traceback_shows_the_user_module_not_importlib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "exec_broken_mod.py").write_text("x = 1\nraise OSError('no config file')\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    def import_it(ref: str) -> Any:
        module, _, attr = ref.partition(":")
        return getattr(importlib.import_module(module), attr)

    try:
        result = run(JobSpec(name="b", entrypoint="exec_broken_mod:main"), resolve=import_it)
    finally:
        sys.modules.pop("exec_broken_mod", None)
    assert result.status is RunStatus.FAILED
    assert result.error_type == "OSError"
    tb = result.traceback or ""
    assert 'exec_broken_mod.py", line 2' in tb
    assert "<frozen importlib" not in tb and f"{os.sep}importlib{os.sep}" not in tb
    assert "qtasks_cli" not in tb


def test_long_error_and_traceback_are_truncated() -> None:
    result = run(job("raises_long", args=(50_000,)))
    assert result.error is not None and len(result.error) == ERROR_CHARS
    assert result.error.endswith("…")
    tb = result.traceback or ""
    assert len(tb) == TRACEBACK_CHARS
    assert tb.startswith("…") and tb.rstrip().endswith("E")  # the end is kept

    deep = run(job("raises_deep", args=(400,)))
    assert (deep.traceback or "").rstrip().endswith("RuntimeError: the bottom")


def test_error_type_of_a_non_builtin_is_qualified() -> None:
    result = run(job("raise_in_sync", args=(CustomBase("x"),)))
    assert result.error_type == f"{__name__}.CustomBase"


def test_result_preview_json_or_clipped_repr() -> None:
    assert result_preview(None, str) is None
    assert result_preview({"a": [1, "b"]}, str) == '{"a": [1, "b"]}'
    assert result_preview({"when": T0}, str) == '{"when": "' + repr(T0) + '"}'
    big = result_preview(list(range(1000)), str) or ""
    assert len(big) == 200 and big.startswith("[0, 1, 2") and big.endswith("…")
    assert result_preview(f"pw {SECRET}", lambda s: s.replace(SECRET, "${PW}")) == '"pw ${PW}"'
    loop: list[Any] = []
    loop.append(loop)
    assert result_preview(loop, str) == "[[...]]"  # circular: JSON fails, repr does not


def test_big_result_kept_whole_preview_clipped() -> None:
    result = run(job("returns_big"))
    assert result.result == list(range(1000))
    assert result.result_preview is not None and len(result.result_preview) == 200


def test_a_sink_that_raises_does_not_break_the_run(caplog: pytest.LogCaptureFixture) -> None:
    def bad_emit(event: Event) -> None:
        raise RuntimeError("sink down")

    async def main() -> RunResult:
        return await execute(
            job("async_add", args=(1,)),
            run_id="r1",
            trigger=TriggerKind.SCHEDULE,
            scheduled=T0,
            runtime=Runtime(1),
            emit=bad_emit,
            resolve=resolve,
        )

    assert asyncio.run(main()).status is RunStatus.SUCCEEDED
    assert "emitting the started event failed" in caplog.text


def test_after_shutdown_sync_jobs_fail_cleanly() -> None:
    runtime = Runtime(1)
    runtime.shutdown()
    result = run(job("sync_thread_name"), runtime=runtime)
    assert result.status is RunStatus.FAILED
    assert "shut down" in (result.error or "")


# --- cancellation --------------------------------------------------------------------------------


def test_cancelling_execute_reports_cancelled_and_reraises() -> None:
    events: list[Event] = []

    async def main() -> None:
        started = asyncio.Event()
        spec = job("async_waits", args=(started,), retry=RetryPolicy(retries=2))
        task = asyncio.create_task(run_async(spec, events=events))
        await asyncio.wait_for(started.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    finished = events[-1]
    assert finished.kind is EventKind.FINISHED
    assert finished.status is RunStatus.CANCELLED
    assert finished.attempt == 1


def test_cancelling_a_sync_job_leaves_a_counted_zombie() -> None:
    release = threading.Event()
    runtime = Runtime(2)

    async def main() -> None:
        started = threading.Event()
        spec = job("sync_blocks", args=(release, started))
        task = asyncio.create_task(run_async(spec, runtime=runtime))
        await until(started.is_set)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert runtime.zombies == 1 and runtime.capacity.in_use == 1
        release.set()
        await until(lambda: runtime.zombies == 0)
        assert runtime.capacity.in_use == 0

    try:
        asyncio.run(main())
    finally:
        release.set()


# --- capacity ------------------------------------------------------------------------------------


def test_capacity_serves_waiters_in_order() -> None:
    async def main() -> list[int]:
        capacity = Capacity(1)
        order: list[int] = []
        await capacity.acquire()

        async def worker(i: int) -> None:
            await capacity.acquire()
            order.append(i)

        tasks = [asyncio.create_task(worker(i)) for i in range(4)]
        await asyncio.sleep(0)
        assert capacity.waiting == 4
        for _ in range(4):
            capacity.release()
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        assert capacity.in_use == 1 and capacity.waiting == 0
        return order

    assert asyncio.run(main()) == [0, 1, 2, 3]


def test_capacity_newcomer_does_not_overtake_a_waiter() -> None:
    async def main() -> None:
        capacity = Capacity(1)
        await capacity.acquire()
        first = asyncio.create_task(capacity.acquire())
        await asyncio.sleep(0)
        capacity.release()  # handed to ``first`` even before it runs again
        assert capacity.in_use == 1 and capacity.waiting == 0
        late = asyncio.create_task(capacity.acquire())
        await asyncio.sleep(0)
        assert first.done() and not late.done()
        capacity.release()
        await asyncio.wait_for(late, 1)

    asyncio.run(main())


def test_capacity_borrow_exceeds_the_limit_and_blocks_acquire() -> None:
    async def main() -> None:
        capacity = Capacity(2)
        await capacity.acquire()
        await capacity.acquire()
        capacity.borrow()
        assert capacity.in_use == 3 and capacity.limit == 2
        waiter = asyncio.create_task(capacity.acquire())
        capacity.release()  # 2 in use: still at the limit
        await asyncio.sleep(0)
        assert not waiter.done()
        capacity.release()
        await asyncio.wait_for(waiter, 1)
        assert capacity.in_use == 2

    asyncio.run(main())


def test_capacity_cancelled_waiters_neither_block_nor_leak() -> None:
    async def main() -> None:
        capacity = Capacity(1)
        await capacity.acquire()
        gone = asyncio.create_task(capacity.acquire())
        nxt = asyncio.create_task(capacity.acquire())
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.sleep(0)
        assert capacity.waiting == 1
        capacity.release()
        await asyncio.wait_for(nxt, 1)
        # Granted, then cancelled before it could run: the unit must pass on.
        granted = asyncio.create_task(capacity.acquire())
        after = asyncio.create_task(capacity.acquire())
        await asyncio.sleep(0)
        capacity.release()
        granted.cancel()
        await asyncio.wait_for(after, 1)
        assert capacity.in_use == 1

    asyncio.run(main())


def test_capacity_rejects_bad_limits_and_extra_releases() -> None:
    with pytest.raises(ValueError, match="at least 1, got 0"):
        Capacity(0)
    with pytest.raises(RuntimeError, match="release"):
        Capacity(1).release()
