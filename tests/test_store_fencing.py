"""Fencing, over both stores (the contract suite's fixture): a final status is final. A run's
start, finish, attempts and output are written only by its owner while it is unfinished;
what recovery or another node concluded is never rewritten by a daemon that comes back, and a
cancel asked before the owner died is honoured by recovery (cancelled, not interrupted, never
re-run), reported once."""

from __future__ import annotations

import logging
import subprocess
import sys
from datetime import timedelta

import pytest
from test_store_contract import (  # noqa: F401  (store_factory is the fixture)
    MINUTE,
    SECOND,
    T0,
    StoreFactory,
    fire,
    opened,
    outcome,
    run,
    store_factory,
)

from qtasks_cli.models import Attempt, RunResult, RunStatus, TriggerKind
from qtasks_cli.store import open_control
from qtasks_cli.store.base import ClusterStore
from qtasks_cli.store.control import ControlStore


def _control(factory: StoreFactory) -> ControlStore:
    if factory.state.startswith("postgresql"):
        return open_control(factory.state, schema=factory.schema)
    return open_control(factory.state)


ATTEMPT = Attempt(number=1, started=T0, ended=T0 + SECOND, status=RunStatus.SUCCEEDED)


def test_what_recovery_concluded_is_never_rewritten_by_the_owner(
    store_factory: StoreFactory,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def body() -> None:
        now = T0 + timedelta(hours=1)
        async with opened(store_factory) as owner:
            running, claimed = fire("a", T0), fire("b", T0)
            assert await owner.claim([running, claimed]) == [True, True]
            await owner.start(running.run_id, T0 + SECOND)
            request = await owner.enqueue("q", [1], {}, T0)
            assert [q.run_id for q in await owner.take_queued(T0)] == [request]
            assert await owner.begin(request, T0 + SECOND) is True
            await owner.flush()
            async with opened(store_factory) as survivor:  # the owner is presumed dead
                concluded = await survivor.recover(now)
                assert {r.run_id for r in concluded} == {running.run_id, claimed.run_id, request}
                before = {r.run_id: r for r in concluded}

                # The owner comes back and carries on as if nothing happened.
                await owner.start(claimed.run_id, T0 + 2 * SECOND)
                await owner.finish(
                    outcome(running, RunStatus.SUCCEEDED, T0 + SECOND, 5, attempt_log=(ATTEMPT,),
                            output=("a line",))
                )  # fmt: skip
                await owner.finish(outcome(claimed, RunStatus.FAILED, T0 + 2 * SECOND, 1))
                await owner.finish(
                    RunResult(job="q", run_id=request, trigger=TriggerKind.QUEUED, scheduled=None,
                              started=T0 + SECOND, ended=now, attempts=1,
                              status=RunStatus.FAILED)
                )  # fmt: skip
                await owner.flush()
                for run_id, was in before.items():
                    row = await survivor.get_run(run_id)
                    assert row is not None
                    assert (row.status, row.error, row.started, row.ended) == (
                        RunStatus.INTERRUPTED, was.error, was.started, was.ended
                    ), run_id  # fmt: skip
                    assert await survivor.attempts(run_id) == []
        control = _control(store_factory)
        try:
            assert control.output(running.run_id) == []
        finally:
            control.close()

    with caplog.at_level(logging.WARNING):
        run(body())
    refusals = [r for r in caplog.records if "already says interrupted" in r.getMessage()]
    assert len(refusals) == 4, [r.getMessage() for r in caplog.records]  # 1 start, 3 finishes


def test_a_repeated_finish_changes_nothing_and_says_nothing(
    store_factory: StoreFactory,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def body() -> None:
        async with opened(store_factory) as store:
            f = fire("a", T0)
            await store.claim([f])
            await store.start(f.run_id, T0)
            done = outcome(f, RunStatus.SUCCEEDED, T0, 1, attempt_log=(ATTEMPT,))
            await store.finish(done)
            await store.flush()
            await store.finish(done)  # a batch written again after an unanswered commit
            await store.finish(outcome(f, RunStatus.FAILED, T0, 9))  # a late contradiction
            await store.flush()
            row = await store.get_run(f.run_id)
            assert row is not None and row.status is RunStatus.SUCCEEDED and row.duration == 1
            assert await store.attempts(f.run_id) == [ATTEMPT]

    with caplog.at_level(logging.WARNING):
        run(body())
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(messages) == 1 and "already says succeeded" in messages[0], messages


_INTRUDER = """
import asyncio, sys
from datetime import datetime, timedelta
from qtasks_cli.models import RunResult, RunStatus, TriggerKind
from qtasks_cli.store import open_store

async def main():
    store = open_store(sys.argv[1], schema=sys.argv[2])
    await store.open()
    when = datetime.fromisoformat(sys.argv[4])
    await store.start(sys.argv[3], when)
    await store.finish(RunResult(job="a", run_id=sys.argv[3], trigger=TriggerKind.SCHEDULE,
                                 scheduled=when, started=when, ended=when + timedelta(seconds=1),
                                 attempts=1, status=RunStatus.SUCCEEDED))
    await store.close()

asyncio.run(main())
"""


def test_another_process_never_writes_a_run_it_does_not_own(
    store_factory: StoreFactory,  # noqa: F811
) -> None:
    async def body() -> None:
        async with opened(store_factory) as owner:
            f = fire("a", T0)
            await owner.claim([f])
            await owner.start(f.run_id, T0 + SECOND)
            await owner.flush()
            child = subprocess.run(
                [sys.executable, "-c", _INTRUDER, store_factory.state, store_factory.schema,
                 f.run_id, (T0 + MINUTE).isoformat()],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert child.returncode == 0, child.stderr
            assert "is not recorded: the run is now running" in child.stderr
            row = await owner.get_run(f.run_id)
            assert row is not None
            assert (row.status, row.started, row.ended) == (RunStatus.RUNNING, T0 + SECOND, None)
            await owner.finish(outcome(f, RunStatus.SUCCEEDED, T0 + SECOND, 2))
            await owner.flush()
            row = await owner.get_run(f.run_id)
            assert row is not None and row.status is RunStatus.SUCCEEDED and row.duration == 2

    run(body())


def test_recovery_honours_a_cancel_asked_before_the_owner_died(
    store_factory: StoreFactory,  # noqa: F811
) -> None:
    async def body() -> None:
        now = T0 + timedelta(hours=1)
        control = _control(store_factory)
        try:
            async with opened(store_factory) as owner:
                running, left = fire("a", T0), fire("a", T0 + MINUTE)
                await owner.claim([running, left])
                await owner.start(running.run_id, T0)
                await owner.start(left.run_id, T0 + MINUTE)
                taken = await owner.enqueue("q", [1], {}, T0)
                assert [q.run_id for q in await owner.take_queued(T0)] == [taken]
                await owner.flush()
                for run_id in (running.run_id, taken):
                    assert control.request_cancel(run_id, "me@box (pid 1)", T0) == "requested"
                async with opened(store_factory) as survivor:
                    # Both jobs re-run interrupted runs: a cancelled run is not re-run.
                    interrupted = await survivor.recover(now, rerun_jobs={"a", "q"})
                    assert [r.run_id for r in interrupted] == [left.run_id]
                    for run_id, how in (
                        (running.run_id, "while it ran"),
                        (taken, "before it began"),
                    ):
                        row = await survivor.get_run(run_id)
                        assert row is not None and row.status is RunStatus.CANCELLED, run_id
                        assert (row.error or "").startswith(
                            f"cancelled by me@box (pid 1); its daemon stopped {how}"
                        ), row.error
                    # The only request queued again is the re-run of the interrupted run.
                    again = await survivor.take_queued(now)
                    assert [(q.job, q.trigger.value) for q in again] == [("a", "rerun")]
            reported = control.take_unreported_cancels("reported by node x")
            assert sorted(r.run_id for r in reported) == sorted([running.run_id, taken])
            assert control.take_unreported_cancels("reported by node y") == []
            assert control.cancel_requests() == []
        finally:
            control.close()

    run(body())


def test_a_node_presumed_dead_learns_it_from_its_heartbeat(
    store_factory: StoreFactory,  # noqa: F811
) -> None:
    async def body() -> None:
        async with opened(store_factory) as frozen, opened(store_factory) as survivor:
            if not isinstance(frozen, ClusterStore):
                return  # one daemon per file: it has no heartbeat, and nobody presumes it dead
            await frozen.lock_daemon()
            await survivor.lock_daemon()
            assert await frozen.heartbeat(T0, digest="d", fingerprints={}) is True
            f = fire("a", T0)
            await frozen.claim([f])
            await frozen.start(f.run_id, T0)
            await frozen.flush()
            later = T0 + 10 * MINUTE
            assert await survivor.heartbeat(later, digest="d", fingerprints={}) is True
            reaped = await survivor.reap_dead_nodes(later, timedelta(seconds=30))
            assert [r.run_id for r in reaped] == [f.run_id]
            assert await frozen.heartbeat(later, digest="d", fingerprints={}) is False
            assert await frozen.heartbeat(later + SECOND, digest="d", fingerprints={}) is True
            await frozen.finish(outcome(f, RunStatus.SUCCEEDED, T0, 600))
            await frozen.flush()
            row = await survivor.get_run(f.run_id)
            assert row is not None and row.status is RunStatus.INTERRUPTED

    run(body())
