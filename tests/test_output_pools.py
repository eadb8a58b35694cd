"""A work item handed to a ``ThreadPoolExecutor`` is its submitter's output: a pool made at
import (outside any run) whose threads a first run happened to start serves later runs and the
daemon itself, and each item is kept as the output of whoever submitted it, or of nobody."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import sys
from datetime import datetime, timezone

from qtasks_cli.events import KINDS, EventKind
from qtasks_cli.models import RunStatus
from qtasks_cli.output import Capture, _current, _pool_submit

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


def test_a_shared_pool_keeps_each_submitters_lines_apart() -> None:
    pool = concurrent.futures.ThreadPoolExecutor(1)  # one thread: every item shares it
    capture = Capture()
    saved = sys.stdout
    sys.stdout = io.StringIO()
    try:

        async def run(run_id: str, gate: asyncio.Event, go: asyncio.Event) -> None:
            capture.sink(KINDS[EventKind.STARTED](time=T0, job="j", run_id=run_id))
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(pool, print, f"{run_id} first")
            gate.set()
            await go.wait()  # both runs are open now
            await asyncio.wrap_future(pool.submit(print, f"{run_id} second"))
            capture.sink(
                KINDS[EventKind.FINISHED](
                    time=T0, job="j", run_id=run_id, status=RunStatus.SUCCEEDED
                )
            )

        async def main() -> None:
            capture.install()
            a_ready, b_ready = asyncio.Event(), asyncio.Event()
            a = asyncio.create_task(run("a", a_ready, b_ready))  # "a" starts the pool's thread
            await a_ready.wait()
            b = asyncio.create_task(run("b", b_ready, a_ready))
            await asyncio.gather(a, b)
            # The daemon's own item on the thread "a" started, while nothing is open: no run's.
            await asyncio.wrap_future(pool.submit(print, "the daemon's own"))

        asyncio.run(main())
        capture.uninstall()
    finally:
        sys.stdout = saved
        pool.shutdown()
    assert concurrent.futures.ThreadPoolExecutor.submit is _pool_submit  # put back
    assert capture.take("a") == ["a first", "a second"]
    assert capture.take("b") == ["b first", "b second"]
    assert _current.get() is None


def test_the_daemons_executor_runs_a_jobs_call_in_the_jobs_context() -> None:
    from qtasks_cli.context import RUN_VAR, RunInfo
    from qtasks_cli.offthread import DaemonExecutor

    executor = DaemonExecutor(job_workers=1)
    seen: list[object] = []

    async def main() -> None:
        asyncio.get_running_loop().set_default_executor(executor)
        for run_id in ("a", "b"):
            token = RUN_VAR.set(RunInfo(job="j", run_id=run_id, trigger="schedule", scheduled=None))
            try:
                await asyncio.get_running_loop().run_in_executor(
                    None, lambda: seen.append(RUN_VAR.get())
                )
            finally:
                RUN_VAR.reset(token)

    asyncio.run(main())
    assert [getattr(info, "run_id", None) for info in seen] == ["a", "b"]
