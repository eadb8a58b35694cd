"""Attempts of one run never overlap: a retry after a timed-out attempt whose thread (or task, or
child process) still runs waits for it, up to the job's timeout; if it still runs, no retry."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from datetime import timedelta
from typing import Any

from qtasks_cli.executor import execute
from qtasks_cli.models import JobSpec, RetryPolicy, RunResult, RunStatus, TriggerKind
from qtasks_cli.runtime import Runtime

LOG: list[tuple[str, int, float]] = []
RELEASE = threading.Event()


def slow_then_quick(calls: list[int]) -> str:
    """Attempt 1 outlives its timeout a little (but returns); later attempts are quick."""
    calls.append(1)
    number = len(calls)
    LOG.append(("enter", number, time.monotonic()))
    try:
        if number == 1:
            time.sleep(0.6)
            raise ConnectionError("attempt 1 failed late")
        return f"attempt {number}"
    finally:
        LOG.append(("exit", number, time.monotonic()))


def hangs(calls: list[int]) -> None:
    calls.append(1)
    RELEASE.wait(30)


async def ignores_cancel(calls: list[int]) -> None:
    calls.append(1)
    while not RELEASE.is_set():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.05)


def resolve(ref: str) -> Any:
    return globals()[ref.partition(":")[2]]


def run(job: JobSpec, calls: list[int]) -> RunResult:
    async def main() -> RunResult:
        runtime = Runtime(4)
        try:
            return await execute(
                job,
                run_id="r1",
                trigger=TriggerKind.MANUAL,
                scheduled=None,
                runtime=runtime,
                emit=lambda _: None,
                kwargs={"calls": calls},
                resolve=resolve,
                sleep=lambda _: asyncio.sleep(0),
            )
        finally:
            RELEASE.set()  # what a test left hanging ends before the loop closes
            runtime.shutdown()

    return asyncio.run(main())


def spec(entry: str, timeout: float) -> JobSpec:
    return JobSpec(
        name=entry,
        entrypoint=f"t:{entry}",
        timeout=timedelta(seconds=timeout),
        kill_grace=timedelta(seconds=0.05),
        retry=RetryPolicy(retries=2, delay=timedelta(0)),
    )


def test_a_retry_waits_for_the_timed_out_attempts_thread() -> None:
    LOG.clear()
    calls: list[int] = []
    # Attempt 1 times out at 0.5 s and returns at 0.6 s, within the wait (one more timeout).
    result = run(spec("slow_then_quick", timeout=0.5), calls)
    assert result.status is RunStatus.SUCCEEDED, result
    assert result.result == "attempt 2"
    assert result.attempts == 2
    first_exit = next(t for kind, n, t in LOG if kind == "exit" and n == 1)
    second_enter = next(t for kind, n, t in LOG if kind == "enter" and n == 2)
    assert second_enter >= first_exit, LOG  # attempt 2 started after attempt 1's body ended


def test_no_retry_while_the_attempts_thread_still_runs() -> None:
    RELEASE.clear()
    calls: list[int] = []
    result = run(spec("hangs", timeout=0.2), calls)
    assert result.status is RunStatus.TIMED_OUT, result
    assert len(calls) == 1, "a second copy of the body was started beside the first"
    assert result.attempts == 1
    assert "not retried" in (result.error or ""), result.error


def test_no_retry_while_a_task_that_ignores_cancellation_still_runs() -> None:
    RELEASE.clear()
    calls: list[int] = []
    result = run(spec("ignores_cancel", timeout=0.2), calls)
    assert result.status is RunStatus.TIMED_OUT, result
    assert len(calls) == 1
    assert "not retried" in (result.error or ""), result.error
