"""The behaviour every ``Store`` must have, run against each implementation.

``store_factory`` gives a function that makes a new, unopened store on ONE database
per test (two stores from it are two processes, or a daemon and its restart). To run
this suite against another backend, add its name to the fixture's params. PostgreSQL
runs get a fresh schema each, dropped afterwards (see ``tests/pg.py`` for where the
server is found and when a missing server skips or fails).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import pytest

from qtasks_cli.errors import StoreError
from qtasks_cli.models import Attempt, RunResult, RunStatus, TriggerKind
from qtasks_cli.recovery import IN_PROGRESS, MAY_HAVE_RUN
from qtasks_cli.store import new_run_id
from qtasks_cli.store.base import (
    Announcer,
    Claim,
    ClusterStore,
    Fire,
    JobStats,
    Store,
    busy_error,
)

T = TypeVar("T")


@dataclass(frozen=True)
class StoreFactory:
    """Makes unopened stores on one database; ``state`` and ``schema`` name it for a child."""

    make: Callable[[], Store]
    state: str
    schema: str = "qtasks"

    def __call__(self) -> Store:
        return self.make()


T0 = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)
SECOND = timedelta(seconds=1)
MINUTE = timedelta(minutes=1)


@pytest.fixture(params=["sqlite", "postgres"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    if request.param == "sqlite":
        from qtasks_cli.store.sqlite import SqliteStore

        path = tmp_path / "state" / "state.db"
        yield StoreFactory(lambda: SqliteStore(path), str(path))
    elif request.param == "postgres":
        from pg import fresh_schema, postgres_url

        url = postgres_url()
        from qtasks_cli.store.postgres import PostgresStore

        with fresh_schema(url) as schema:
            yield StoreFactory(lambda: PostgresStore(url, schema=schema), url, schema)
    else:
        raise AssertionError(f"unknown store {request.param!r}")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@asynccontextmanager
async def opened(factory: StoreFactory) -> AsyncIterator[Store]:
    store = factory()
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def fire(
    job: str,
    scheduled: datetime,
    *,
    key: str = "every 1m",
    status: RunStatus = RunStatus.CLAIMED,
    error: str | None = None,
    trigger: TriggerKind = TriggerKind.SCHEDULE,
) -> Fire:
    return Fire(
        job=job,
        scheduled=scheduled,
        trigger=trigger,
        run_id=new_run_id(),
        schedule_key=key,
        status=status,
        error=error,
    )


def outcome(
    f: Fire,
    status: RunStatus,
    started: datetime,
    seconds: float,
    **extra: Any,
) -> RunResult:
    return RunResult(
        job=f.job,
        run_id=f.run_id,
        trigger=f.trigger,
        scheduled=f.scheduled,
        started=started,
        ended=started + timedelta(seconds=seconds),
        attempts=extra.pop("attempts", 1),
        status=status,
        **extra,
    )


async def finished_run(
    store: Store, job: str, scheduled: datetime, status: RunStatus, seconds: float
) -> Fire:
    f = fire(job, scheduled)
    assert await store.claim([f]) == [True]
    await store.start(f.run_id, scheduled)
    await store.finish(outcome(f, status, scheduled, seconds))
    return f


def assert_utc(value: datetime | None) -> None:
    assert value is not None
    assert value.utcoffset() == timedelta(0)


# -- claim: the exactly-once guard ------------------------------------------------------


def test_claim_records_each_job_and_time_once(store_factory: StoreFactory) -> None:
    async def body() -> None:
        async with opened(store_factory) as store:
            first, second = fire("a", T0), fire("a", T0 + MINUTE)
            assert await store.claim([first, second]) == [True, True]
            again, other_job = fire("a", T0), fire("b", T0)
            assert await store.claim([again, other_job]) == [False, True]
            twice = [fire("c", T0), fire("c", T0)]
            assert await store.claim(twice) == [True, False]

            assert await store.get_run(again.run_id) is None
            assert await store.get_run(twice[1].run_id) is None
            row = await store.get_run(first.run_id)
            assert row is not None
            assert (row.job, row.status, row.trigger) == ("a", RunStatus.CLAIMED, "schedule")
            assert row.scheduled == T0
            assert_utc(row.scheduled)
            assert row.started is None and row.ended is None
            ids = {r.run_id for r in await store.history("a")}
            assert ids == {first.run_id, second.run_id}
            assert await store.claim([]) == []

    run(body())


def test_claim_is_exactly_once_across_a_restart(store_factory: StoreFactory) -> None:
    async def body() -> None:
        async with opened(store_factory) as before:
            assert await before.claim([fire("a", T0), fire("a", T0 + MINUTE)]) == [True, True]
        async with opened(store_factory) as after:
            replay = [fire("a", T0), fire("a", T0 + MINUTE), fire("a", T0 + 2 * MINUTE)]
            assert await after.claim(replay) == [False, False, True]
            assert len(await after.history("a")) == 3

    run(body())


def test_two_live_stores_never_both_claim_a_fire(store_factory: StoreFactory) -> None:
    async def body() -> None:
        async with opened(store_factory) as one, opened(store_factory) as two:
            times = [T0 + i * SECOND for i in range(200)]
            mine = [fire("a", t) for t in times]
            theirs = [fire("a", t) for t in reversed(times)]
            got_mine, got_theirs = await asyncio.gather(one.claim(mine), two.claim(theirs))
            winners = dict(zip(times, got_mine, strict=True))
            for t, won in zip(reversed(times), got_theirs, strict=True):
                assert winners[t] != won, f"{t} claimed {'twice' if won else 'never'}"
            assert len(await one.history("a", limit=1000)) == 200

    run(body())


def test_last_fired_keeps_the_latest_time_and_its_schedule_key(
    store_factory: StoreFactory,
) -> None:
    async def body() -> None:
        async with opened(store_factory) as store:
            assert await store.last_fired() == {}
            await store.claim([fire("a", T0, key="k1")])
            assert await store.last_fired() == {"a": (T0, "k1")}
            await store.claim([fire("a", T0 + 2 * MINUTE, key="k2"), fire("b", T0, key="kb")])
            await store.claim([fire("a", T0 + MINUTE, key="k3")])  # an older fire
            # several fires of one job in one call: the latest one counts
            await store.claim([fire("c", T0 + 5 * MINUTE, key="c2"), fire("c", T0, key="c1")])
            # a skipped fire still advances the job's last fire
            await store.claim([fire("b", T0 + MINUTE, key="kb", status=RunStatus.SKIPPED)])
            last = await store.last_fired()
            assert last == {
                "a": (T0 + 2 * MINUTE, "k2"),
                "b": (T0 + MINUTE, "kb"),
                "c": (T0 + 5 * MINUTE, "c2"),
            }
            for when, _ in last.values():
                assert_utc(when)
        async with opened(store_factory) as restarted:
            assert (await restarted.last_fired())["a"] == (T0 + 2 * MINUTE, "k2")

    run(body())


def test_skipped_and_missed_fires_are_recorded_as_finished(store_factory: StoreFactory) -> None:
    async def body() -> None:
        async with opened(store_factory) as store:
            skipped = fire("a", T0, status=RunStatus.SKIPPED, error="still running")
            missed = fire(
                "a",
                T0 + MINUTE,
                status=RunStatus.MISSED,
                error="missed by 2h",
                trigger=TriggerKind.CATCH_UP,
            )
            assert await store.claim([skipped, missed]) == [True, True]
            for f in (skipped, missed):
                row = await store.get_run(f.run_id)
                assert row is not None
                assert row.status is f.status and row.status.finished
                assert row.error == f.error
                assert row.trigger is f.trigger
                assert row.started is None
                assert row.ended is not None
            # the pair is taken for good, even though the run never happened
            assert await store.claim([fire("a", T0)]) == [False]
            assert [r.status for r in await store.history("a", status=RunStatus.MISSED)] == [
                RunStatus.MISSED
            ]

    run(body())


# -- start, finish, add_run ---------------------------------------------------------------


def test_start_and_finish_reach_history_and_other_stores(store_factory: StoreFactory) -> None:
    async def body() -> None:
        async with opened(store_factory) as daemon, opened(store_factory) as reader:
            f = fire("a", T0)
            await daemon.claim([f])
            await daemon.start(f.run_id, T0 + SECOND)
            row = await daemon.get_run(f.run_id)  # own reads see own buffered writes
            assert row is not None
            assert row.status is RunStatus.RUNNING
            assert row.started == T0 + SECOND
            assert row.pid == os.getpid()
            assert row.host

            await daemon.flush()
            row = await reader.get_run(f.run_id)
            assert row is not None and row.status is RunStatus.RUNNING

            log = (
                Attempt(
                    number=1,
                    started=T0 + SECOND,
                    ended=T0 + 2 * SECOND,
                    status=RunStatus.FAILED,
                    error_type="ValueError",
                    error="bad input",
                ),
                Attempt(
                    number=2,
                    started=T0 + 3 * SECOND,
                    ended=T0 + 5 * SECOND,
                    status=RunStatus.TIMED_OUT,
                    error_type="TimeoutError",
                    error="timed out after 2s",
                ),
            )
            result = outcome(
                f,
                RunStatus.TIMED_OUT,
                T0 + SECOND,
                4,
                attempts=2,
                error_type="TimeoutError",
                error="timed out after 2s",
                traceback="Traceback (most recent call last):\n  ...\nTimeoutError\n",
                result_preview='{"rows": 3}',
                items=7,
                attempt_log=log,
            )
            await daemon.finish(result)
            await daemon.flush()

            row = await reader.get_run(f.run_id)
            assert row is not None
            assert row.status is RunStatus.TIMED_OUT
            assert (row.started, row.ended) == (T0 + SECOND, T0 + 5 * SECOND)
            assert row.duration == 4.0
            assert row.attempts == 2
            assert (row.error_type, row.error) == ("TimeoutError", "timed out after 2s")
            assert row.traceback == result.traceback
            assert row.result_preview == '{"rows": 3}'
            assert row.result is None  # the value itself stays in memory: only its preview is kept
            assert row.items == 7
            assert row.scheduled == T0
            assert_utc(row.ended)
            assert await reader.attempts(f.run_id) == list(log)
            assert [r.run_id for r in await reader.history()] == [f.run_id]
            assert await reader.attempts("no-such-run") == []

    run(body())


def test_close_writes_what_is_buffered(store_factory: StoreFactory) -> None:
    async def body() -> None:
        f = fire("a", T0)
        async with opened(store_factory) as daemon:
            await daemon.claim([f])
            await daemon.start(f.run_id, T0)
            await daemon.finish(outcome(f, RunStatus.SUCCEEDED, T0, 1.5))
        async with opened(store_factory) as reader:
            row = await reader.get_run(f.run_id)
            assert row is not None
            assert row.status is RunStatus.SUCCEEDED and row.duration == 1.5

    run(body())


def test_long_tracebacks_keep_their_end(store_factory: StoreFactory) -> None:
    async def body() -> None:
        async with opened(store_factory) as store:
            f = fire("a", T0)
            await store.claim([f])
            text = "".join(f"  frame {i}\n" for i in range(20_000)) + "RecursionError: deep\n"
            await store.finish(outcome(f, RunStatus.FAILED, T0, 1, traceback=text))
            row = await store.get_run(f.run_id)
            assert row is not None and row.traceback is not None
            assert len(row.traceback) < 16 * 1024 + 100
            assert row.traceback.endswith("RecursionError: deep\n")

    run(body())


def test_a_runs_output_is_written_with_its_end(store_factory: StoreFactory) -> None:
    """``finish`` writes the output lines in the same write as the outcome: once a reader sees
    the run finished, its output is there (what ``show`` right after ``--wait`` relies on).
    Lines are bounded, and what neither store can hold in JSON (NUL, a lone surrogate) is
    escaped."""
    from qtasks_cli.store import open_control
    from qtasks_cli.store.base import OUTPUT_LINE_CHARS, OUTPUT_LINES

    async def body() -> list[str]:
        async with opened(store_factory) as store:
            base = {"job": "a", "run_id": run_id, "trigger": TriggerKind.MANUAL,
                    "scheduled": None, "started": T0}  # fmt: skip
            await store.add_run(RunResult(**base, ended=None, attempts=0, status=RunStatus.RUNNING))
            lines = [f"line {i}" for i in range(OUTPUT_LINES + 3)]
            lines += ["x" * (OUTPUT_LINE_CHARS + 9), "nul \x00", "lone \udcff"]
            done = RunResult(**base, ended=T0 + SECOND, attempts=1,
                             status=RunStatus.SUCCEEDED, output=tuple(lines))  # fmt: skip
            await store.finish(done)
            row = await store.get_run(run_id)  # reads see buffered writes
            assert row is not None and row.status is RunStatus.SUCCEEDED
            return lines

    run_id = new_run_id()
    lines = run(body())
    control = open_control(store_factory.state, schema=store_factory.schema)
    try:
        kept = control.output(run_id)
    finally:
        control.close()
    assert len(kept) == OUTPUT_LINES
    assert kept[-3:] == ["x" * OUTPUT_LINE_CHARS, "nul \\x00", "lone \\udcff"]
    assert kept[:-3] == lines[-OUTPUT_LINES:-3]


def test_add_run_records_a_manual_run(store_factory: StoreFactory) -> None:
    async def body() -> None:
        async with opened(store_factory) as store:
            run_id = new_run_id()
            running = RunResult(
                job="a",
                run_id=run_id,
                trigger=TriggerKind.MANUAL,
                scheduled=None,
                started=T0,
                ended=None,
                attempts=0,
                status=RunStatus.RUNNING,
            )
            await store.add_run(running, args=[1, 2], kwargs={"x": "y"})
            row = await store.get_run(run_id)
            assert row is not None
            assert (row.status, row.trigger, row.scheduled) == (
                RunStatus.RUNNING,
                TriggerKind.MANUAL,
                None,
            )
            assert row.started == T0
            # manual runs have no scheduled time, so they never collide with each other
            other = RunResult(
                job="a",
                run_id=new_run_id(),
                trigger=TriggerKind.MANUAL,
                scheduled=None,
                started=T0,
                ended=None,
                attempts=0,
                status=RunStatus.RUNNING,
            )
            await store.add_run(other)
            with pytest.raises(StoreError, match=run_id):
                await store.add_run(running)

            done = RunResult(
                job="a",
                run_id=run_id,
                trigger=TriggerKind.MANUAL,
                scheduled=None,
                started=T0,
                ended=T0 + 3 * SECOND,
                attempts=1,
                status=RunStatus.SUCCEEDED,
                result_preview="42",
            )
            await store.finish(done)
            row = await store.get_run(run_id)
            assert row is not None
            assert (row.status, row.duration) == (RunStatus.SUCCEEDED, 3.0)
            assert row.result_preview == "42"

    run(body())


def test_times_round_trip_as_aware_utc(store_factory: StoreFactory) -> None:
    async def body() -> None:
        berlin = datetime(2024, 7, 1, 14, 30, 15, 123456, tzinfo=ZoneInfo("Europe/Berlin"))
        async with opened(store_factory) as store:
            f = fire("a", berlin)
            await store.claim([f])
            await store.start(f.run_id, berlin + SECOND)
            row = await store.get_run(f.run_id)
            assert row is not None
            assert row.scheduled == berlin
            assert row.scheduled is not None and row.scheduled.hour == 12  # 14:30 CEST
            assert row.scheduled.microsecond == 123456
            assert_utc(row.scheduled)
            assert_utc(row.started)
            assert_utc(row.created)
            assert (await store.last_fired())["a"][0] == berlin

    run(body())


# -- overlap across nodes: claim with exclusive_jobs -------------------------------------

_ANOTHER_NODE = """
import asyncio, sys
from datetime import datetime
from qtasks_cli.models import RunResult, RunStatus, TriggerKind
from qtasks_cli.store import new_run_id, open_store
from qtasks_cli.store.base import Fire

async def main():
    store = open_store(sys.argv[1], schema=sys.argv[2])
    await store.open()
    when = datetime.fromisoformat(sys.argv[3])
    fire = Fire(job="x", scheduled=when, trigger=TriggerKind.SCHEDULE, run_id=new_run_id(),
                schedule_key="k")
    assert await store.claim([fire]) == [True]
    await store.start(fire.run_id, when)
    manual = RunResult(job="m", run_id=new_run_id(), trigger=TriggerKind.MANUAL, scheduled=None,
                       started=when, ended=None, attempts=0, status=RunStatus.RUNNING)
    await store.add_run(manual)
    await store.close()
    print(fire.run_id, store.node_id)

asyncio.run(main())
"""


def _finish_as_another_node(factory: StoreFactory, run_id: str) -> None:
    """Mark ``run_id`` succeeded behind the stores' backs, as the node owning it would."""
    sql = "UPDATE {}runs SET status = 'succeeded' WHERE run_id = {}"
    if factory.state.startswith("postgresql"):
        import psycopg

        with psycopg.connect(factory.state, autocommit=True) as conn:
            conn.execute(sql.format(f'"{factory.schema}".', "%s"), (run_id,))
        return
    import sqlite3

    conn = sqlite3.connect(factory.state, timeout=10)
    try:
        with conn:
            conn.execute(sql.format("", "?"), (run_id,))
    finally:
        conn.close()


def test_exclusive_claims_skip_while_another_node_runs_the_job(
    store_factory: StoreFactory,
) -> None:
    # The other node is another process, which left its runs in progress.
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            _ANOTHER_NODE,
            store_factory.state,
            store_factory.schema,
            T0.isoformat(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 0, child.stderr
    their_run, their_node = child.stdout.split()

    async def body() -> None:
        async with opened(store_factory) as store:
            assert store.node_id != their_node
            row = await store.get_run(their_run)
            assert row is not None and row.node == their_node

            busy = fire("x", T0 + MINUTE)
            assert await store.claim([busy], exclusive_jobs={"x", "other"}) == [Claim.BUSY]
            row = await store.get_run(busy.run_id)
            assert row is not None
            assert row.status is RunStatus.SKIPPED and row.ended is not None
            assert row.error == busy_error(their_node)
            assert their_node in row.error
            assert (await store.last_fired())["x"][0] == T0 + MINUTE
            # the pair is taken: the same fire claimed again is not inserted again
            assert await store.claim([fire("x", T0 + MINUTE)], exclusive_jobs={"x"}) == [
                Claim.EXISTS
            ]

            # skipped and missed fires go in as they are; overlap allow passes no job
            skipped = fire("x", T0 + 2 * MINUTE, status=RunStatus.SKIPPED, error="local")
            allowed = fire("x", T0 + 3 * MINUTE)
            result = await store.claim([skipped, allowed], exclusive_jobs=())
            assert result == [Claim.INSERTED, Claim.INSERTED]
            row = await store.get_run(allowed.run_id)
            assert row is not None and row.status is RunStatus.CLAIMED
            row = await store.get_run(skipped.run_id)
            assert row is not None and row.error == "local"
            plain = await store.claim([fire("x", T0 + 4 * MINUTE)])
            assert plain == [True] and type(plain[0]) is bool

            # this node's own runs and anyone's manual runs do not count
            mine = fire("z", T0)
            await store.claim([mine])
            await store.start(mine.run_id, T0)
            assert await store.claim([fire("z", T0 + MINUTE)], exclusive_jobs={"z"}) == [
                Claim.INSERTED
            ]
            assert await store.claim([fire("m", T0)], exclusive_jobs={"m"}) == [Claim.INSERTED]

            # once the other node's run has finished, the job is free again (the other node
            # writes it: this store may not, see test_store_fencing)
            _finish_as_another_node(store_factory, their_run)
            # ... but this node's own claimed x runs (above) still do not count
            free = fire("x", T0 + 5 * MINUTE)
            assert await store.claim([free], exclusive_jobs={"x"}) == [Claim.INSERTED]

    run(body())


# -- the cluster view ---------------------------------------------------------------------


def test_only_a_store_several_daemons_share_is_a_cluster_and_announces_work(
    store_factory: StoreFactory,
) -> None:
    """The seams only some stores have are told by type, never by a flag: PostgreSQL is a
    ``ClusterStore`` and an ``Announcer`` (NOTIFY); SQLite, one daemon per file whose
    wake-ups come as datagrams, is neither."""
    store = store_factory()
    shared = not store.location.endswith(".db")  # the factory's SQLite file, else PostgreSQL
    assert isinstance(store, ClusterStore) is shared
    assert isinstance(store, Announcer) is shared


def test_heartbeat_shows_this_node_with_its_digest(store_factory: StoreFactory) -> None:
    async def body() -> None:
        async with opened(store_factory) as store:
            if not isinstance(store, ClusterStore):
                pytest.skip("one daemon per file: no nodes to heartbeat")
            await store.lock_daemon()
            await store.heartbeat(T0, digest="d1", fingerprints={"a": "fa", "b": "fb"})
            (node,) = await store.nodes(T0 + 10 * SECOND, timedelta(seconds=30))
            assert node.node_id == store.node_id
            assert (node.digest, dict(node.fingerprints)) == ("d1", {"a": "fa", "b": "fb"})
            assert node.last_seen == T0
            assert node.pid == os.getpid() and node.host
            assert_utc(node.last_seen)
            assert_utc(node.started)

            await store.heartbeat(T0 + MINUTE, digest="d2", fingerprints={})
            (node,) = await store.nodes(T0 + MINUTE, timedelta(seconds=30))
            assert (node.digest, dict(node.fingerprints)) == ("d2", {})
            # silent for longer than the timeout: not alive, but a node never reaps itself
            later = T0 + 2 * MINUTE
            assert await store.nodes(later, timedelta(seconds=30)) == []
            assert await store.reap_dead_nodes(later, timedelta(seconds=30)) == []

    run(body())


def test_wait_for_work_wakes_when_it_can_and_times_out(store_factory: StoreFactory) -> None:
    async def body() -> None:
        async with opened(store_factory) as daemon, opened(store_factory) as client:
            if not isinstance(daemon, Announcer):
                pytest.skip("its wake-ups come as datagrams (wake.py), not from the store")
            await daemon.lock_daemon()
            loop = asyncio.get_running_loop()
            began = loop.time()
            assert await daemon.wait_for_work(0.05) is False
            assert loop.time() - began >= 0.04
            waiting = asyncio.create_task(daemon.wait_for_work(5))
            await asyncio.sleep(0.01)
            request = await client.enqueue("a", [], {}, T0)
            assert await waiting is True
            assert [q.run_id for q in await daemon.take_queued(T0)] == [request]

    run(body())


# -- recover ------------------------------------------------------------------------------


def test_recover_interrupts_runs_of_a_dead_daemon(store_factory: StoreFactory) -> None:
    async def body() -> None:
        now = T0 + timedelta(hours=1)
        async with opened(store_factory) as dead:
            never_started, running, done = fire("a", T0), fire("b", T0), fire("c", T0)
            await dead.claim([never_started, running, done])
            await dead.start(running.run_id, T0 + SECOND)
            await dead.start(done.run_id, T0)
            await dead.finish(outcome(done, RunStatus.SUCCEEDED, T0, 1))

            handed_over = await dead.enqueue("q", [1], {}, T0)
            queued_running = await dead.enqueue("q", [2], {}, T0 + SECOND)
            assert [q.run_id for q in await dead.take_queued(T0, limit=2)] == [
                handed_over,
                queued_running,
            ]
            await dead.start(queued_running, T0 + 2 * SECOND)
            waiting = await dead.enqueue("q", [3], {}, T0 + 2 * SECOND)
            manual = RunResult(
                job="m",
                run_id=new_run_id(),
                trigger=TriggerKind.MANUAL,
                scheduled=None,
                started=T0,
                ended=None,
                attempts=0,
                status=RunStatus.RUNNING,
            )
            await dead.add_run(manual)

        async with opened(store_factory) as daemon:
            rows = await daemon.recover(now)
            by_id = {row.run_id: row for row in rows}
            assert set(by_id) == {
                never_started.run_id,
                running.run_id,
                queued_running,
                manual.run_id,
            }
            for row in rows:
                assert row.status is RunStatus.INTERRUPTED
                assert row.ended == now
            # a claim is written ahead of the instant: the run may have started
            assert (by_id[never_started.run_id].error or "").startswith(MAY_HAVE_RUN)
            in_progress = by_id[running.run_id].error or ""
            assert in_progress.startswith("daemon stopped while the run was in progress")
            assert "2024-03-01" in in_progress
            assert by_id[running.run_id].started == T0 + SECOND

            handed = await daemon.get_run(handed_over)
            assert handed is not None and handed.status is RunStatus.QUEUED
            finished = await daemon.get_run(done.run_id)
            assert finished is not None and finished.status is RunStatus.SUCCEEDED
            # the handed-over request is offered again, before the one that waited
            taken = await daemon.take_queued(now)
            assert [(q.run_id, q.args) for q in taken] == [(handed_over, (1,)), (waiting, (3,))]
            # a second restart before they started: given back again, nothing interrupted
            assert await daemon.recover(now) == []
            for run_id in (handed_over, waiting):
                row = await daemon.get_run(run_id)
                assert row is not None and row.status is RunStatus.QUEUED

    run(body())


def test_recover_on_a_clean_store_changes_nothing(store_factory: StoreFactory) -> None:
    async def body() -> None:
        async with opened(store_factory) as store:
            await finished_run(store, "a", T0, RunStatus.SUCCEEDED, 1)
            queued = await store.enqueue("a", [], {}, T0)
            assert await store.recover(T0 + MINUTE) == []
            row = await store.get_run(queued)
            assert row is not None and row.status is RunStatus.QUEUED

    run(body())


# -- queued requests ---------------------------------------------------------------------


def test_enqueue_and_take_queued_oldest_first(store_factory: StoreFactory) -> None:
    async def body() -> None:
        async with opened(store_factory) as client, opened(store_factory) as daemon:
            late = await client.enqueue("a", [1, "x"], {"flag": True}, T0 + 2 * SECOND)
            early = await client.enqueue("a", [], {}, T0)
            middle = await client.enqueue("b", [[1, 2]], {"d": {"k": None}}, T0 + SECOND)
            assert len({late, early, middle}) == 3

            row = await client.get_run(late)
            assert row is not None
            assert (row.status, row.trigger, row.scheduled) == (
                RunStatus.QUEUED,
                TriggerKind.QUEUED,
                None,
            )

            first = await daemon.take_queued(T0 + 3 * SECOND, limit=2)
            assert [(q.run_id, q.job, q.args, dict(q.kwargs), q.enqueued) for q in first] == [
                (early, "a", (), {}, T0),
                (middle, "b", ([1, 2],), {"d": {"k": None}}, T0 + SECOND),
            ]
            assert_utc(first[0].enqueued)
            claimed = await client.get_run(early)
            assert claimed is not None and claimed.status is RunStatus.CLAIMED

            rest = await daemon.take_queued(T0 + 3 * SECOND)
            assert [(q.run_id, q.args, dict(q.kwargs)) for q in rest] == [
                (late, (1, "x"), {"flag": True})
            ]
            assert await daemon.take_queued(T0 + 3 * SECOND) == []
            assert await client.history(status=RunStatus.QUEUED) == []

    run(body())


def test_enqueue_refuses_arguments_that_are_not_json(store_factory: StoreFactory) -> None:
    async def body() -> None:
        async with opened(store_factory) as store:
            with pytest.raises(StoreError, match=r"'a'.*JSON"):
                await store.enqueue("a", [object()], {}, T0)
            assert await store.take_queued(T0) == []

    run(body())


def test_each_request_is_taken_once_by_concurrent_takers(store_factory: StoreFactory) -> None:
    async def fill() -> list[str]:
        async with opened(store_factory) as client:
            return [await client.enqueue("a", [i], {}, T0 + i * SECOND) for i in range(300)]

    expected = run(fill())
    barrier = threading.Barrier(2, timeout=30)
    taken: list[list[str]] = [[], []]
    errors: list[BaseException] = []

    async def take(into: list[str]) -> None:
        async with opened(store_factory) as daemon:
            barrier.wait()
            while batch := await daemon.take_queued(T0, limit=7):
                into.extend(q.run_id for q in batch)

    def worker(index: int) -> None:
        try:
            asyncio.run(take(taken[index]))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive()
    assert errors == []
    assert not set(taken[0]) & set(taken[1])
    assert sorted(taken[0] + taken[1]) == sorted(expected)
    # each taker got its requests in queue order
    for ids in taken:
        assert ids == sorted(ids, key=expected.index)


def test_changed_reports_writes_of_other_connections(store_factory: StoreFactory) -> None:
    async def body() -> None:
        async with opened(store_factory) as daemon, opened(store_factory) as client:
            await daemon.lock_daemon()  # PostgreSQL listens from here on
            assert await daemon.changed() is False
            await client.enqueue("a", [], {}, T0)
            assert await daemon.changed() is True
            assert await daemon.changed() is False
            await daemon.enqueue("a", [], {}, T0)  # its own write
            assert await daemon.changed() is False
            await client.claim([fire("a", T0)])
            assert await daemon.changed() is True

    run(body())


# -- history, stats, prune ----------------------------------------------------------------


def test_history_is_newest_first_and_filters(store_factory: StoreFactory) -> None:
    async def body() -> None:
        async with opened(store_factory) as store:
            old = fire("a", T0)  # never started: ordered by its scheduled time
            new = fire("a", T0 + 10 * MINUTE)
            await store.claim([old, new])
            await store.start(new.run_id, T0 + 10 * MINUTE + 5 * SECOND)
            manual = RunResult(
                job="b",
                run_id=new_run_id(),
                trigger=TriggerKind.MANUAL,
                scheduled=None,
                started=T0 + 5 * MINUTE,
                ended=None,
                attempts=0,
                status=RunStatus.RUNNING,
            )
            await store.add_run(manual)
            queued = await store.enqueue("c", [], {}, T0 + 7 * MINUTE)  # by its created time
            # equal times: the later run id first
            tie_1 = fire("d", T0 - MINUTE, status=RunStatus.SKIPPED, error="x")
            tie_2 = fire("e", T0 - MINUTE, status=RunStatus.SKIPPED, error="x")
            await store.claim([tie_1, tie_2])

            def ids(rows: list[Any]) -> list[str]:
                return [row.run_id for row in rows]

            everything = [new.run_id, queued, manual.run_id, old.run_id, tie_2.run_id]
            assert ids(await store.history()) == [*everything, tie_1.run_id]
            assert ids(await store.history(limit=5)) == everything
            assert ids(await store.history(limit=2)) == [new.run_id, queued]
            assert ids(await store.history("a")) == [new.run_id, old.run_id]
            assert ids(await store.history("a", limit=1)) == [new.run_id]
            assert ids(await store.history(status=RunStatus.QUEUED)) == [queued]
            assert ids(await store.history("a", status=RunStatus.RUNNING)) == [new.run_id]
            assert ids(await store.history("b", status=RunStatus.QUEUED)) == []
            assert await store.history("nobody") == []
            assert await store.get_run("no-such-run") is None

    run(body())


def test_stats_counts_and_percentiles(store_factory: StoreFactory) -> None:
    async def body() -> None:
        async with opened(store_factory) as store:
            plan = [
                (RunStatus.SUCCEEDED, 1),
                (RunStatus.SUCCEEDED, 2),
                (RunStatus.SUCCEEDED, 3),
                (RunStatus.SUCCEEDED, 10),
                (RunStatus.FAILED, 4),
                (RunStatus.TIMED_OUT, 5),
                (RunStatus.INTERRUPTED, 6),
                (RunStatus.CANCELLED, 7),
            ]
            for i, (status, seconds) in enumerate(plan):
                await finished_run(store, "s", T0 + i * MINUTE, status, seconds)
            await store.claim(
                [
                    fire("s", T0 + 20 * MINUTE, status=RunStatus.SKIPPED, error="busy"),
                    fire("s", T0 + 21 * MINUTE, status=RunStatus.MISSED, error="down"),
                ]
            )
            await finished_run(store, "t", T0, RunStatus.SUCCEEDED, 2)

            s, t = await store.stats()
            # durations sorted: 1 2 3 4 5 6 7 10 -> p50 between 4 and 5, p95 at rank 6.65
            assert s == JobStats(
                job="s",
                runs=10,
                succeeded=4,
                failed=3,
                p50=pytest.approx(4.5),
                p95=pytest.approx(7 + 0.65 * 3),
                last_success=T0 + 3 * MINUTE + 10 * SECOND,  # the 10 s run ended last
                last_failure=T0 + 6 * MINUTE + 6 * SECOND,
                extra={"skipped": 1, "missed": 1, "cancelled": 1},
            )
            assert s.success_rate == pytest.approx(4 / 7)
            assert_utc(s.last_success)
            assert t == JobStats(
                job="t",
                runs=1,
                succeeded=1,
                failed=0,
                p50=2.0,
                p95=2.0,
                last_success=T0 + 2 * SECOND,
                last_failure=None,
                extra={},
            )
            assert await store.stats("t") == [t]
            assert await store.stats("never") == [
                JobStats(
                    job="never",
                    runs=0,
                    succeeded=0,
                    failed=0,
                    p50=None,
                    p95=None,
                    last_success=None,
                    last_failure=None,
                    extra={},
                )
            ]

    run(body())


@pytest.mark.parametrize("seed", range(3))
def test_stats_agree_with_a_python_reading_of_the_runs(
    store_factory: StoreFactory, seed: int
) -> None:
    """Seeded: durations from a microsecond to three days (PostgreSQL reads them as intervals
    with days), every finished status, several jobs; counts and p50/p95 (linear between the
    closest ranks) as Python works them out from the same runs."""
    import random

    rng = random.Random(seed)
    statuses = [
        RunStatus.SUCCEEDED,
        RunStatus.FAILED,
        RunStatus.TIMED_OUT,
        RunStatus.CANCELLED,
        RunStatus.INTERRUPTED,
    ]

    def percentile(values: list[float], q: float) -> float:
        ordered = sorted(values)
        pos = q * (len(ordered) - 1)
        low = int(pos)
        high = ordered[low + 1] if low + 1 < len(ordered) else ordered[low]
        return ordered[low] + (high - ordered[low]) * (pos - low)

    async def body() -> None:
        async with opened(store_factory) as store:
            durations: dict[str, list[float]] = {}
            tallies: dict[str, dict[RunStatus, int]] = {}
            for i in range(rng.randint(5, 40)):
                job = rng.choice("abc")
                seconds = rng.choice(
                    [1e-6, rng.uniform(0, 1), rng.uniform(1, 600), rng.uniform(86_400, 3 * 86_400)]
                )
                seconds = round(seconds, 6)
                status = rng.choice(statuses)
                await finished_run(store, job, T0 + i * MINUTE, status, seconds)
                durations.setdefault(job, []).append(seconds)
                per_job = tallies.setdefault(job, {})
                per_job[status] = per_job.get(status, 0) + 1
            for found in await store.stats():
                values = durations[found.job]
                assert found.runs == len(values)
                assert found.succeeded == tallies[found.job].get(RunStatus.SUCCEEDED, 0)
                assert found.p50 == pytest.approx(percentile(values, 0.5), abs=2e-6)
                assert found.p95 == pytest.approx(percentile(values, 0.95), abs=2e-6)
            assert sorted(f.job for f in await store.stats()) == sorted(durations)

    run(body())


def test_prune_by_count_keeps_the_newest_and_unfinished(store_factory: StoreFactory) -> None:
    async def body() -> None:
        async with opened(store_factory) as store:
            oldest = fire("a", T0)
            assert await store.claim([oldest]) == [True]
            attempt = Attempt(number=1, started=T0, ended=T0 + SECOND, status=RunStatus.FAILED)
            await store.finish(outcome(oldest, RunStatus.FAILED, T0, 1, attempt_log=(attempt,)))
            a_runs = [oldest] + [
                await finished_run(store, "a", T0 + i * MINUTE, RunStatus.SUCCEEDED, 1)
                for i in range(1, 5)
            ]
            b_runs = [
                await finished_run(store, "b", T0 + i * MINUTE, RunStatus.FAILED, 1)
                for i in range(2)
            ]
            assert await store.attempts(oldest.run_id) == [attempt]
            running = fire("a", T0 - timedelta(days=30))
            await store.claim([running])
            await store.start(running.run_id, T0 - timedelta(days=30))
            claimed = fire("a", T0 - timedelta(days=31))
            await store.claim([claimed])
            queued = await store.enqueue("a", [], {}, T0 - timedelta(days=32))

            deleted = await store.prune(keep_runs=2, keep_days=None, now=T0 + MINUTE * 10)
            assert deleted == 3
            left = {row.run_id for row in await store.history("a")}
            assert left == {
                a_runs[3].run_id,
                a_runs[4].run_id,
                running.run_id,
                claimed.run_id,
                queued,
            }
            assert await store.attempts(oldest.run_id) == []
            assert len(await store.history("b")) == len(b_runs)
            assert await store.prune(keep_runs=2, keep_days=None, now=T0) == 0
            assert await store.prune(keep_runs=None, keep_days=None, now=T0) == 0
            # rows scheduled after now (a clock stepped back) still guard their (job, time)
            assert await store.prune(keep_runs=0, keep_days=None, now=T0) == 0
            assert await store.prune(keep_runs=0, keep_days=None, now=T0 + MINUTE * 10) == 4
            assert {row.run_id for row in await store.history()} == {
                running.run_id,
                claimed.run_id,
                queued,
            }

    run(body())


def test_prune_by_age(store_factory: StoreFactory) -> None:
    async def body() -> None:
        async with opened(store_factory) as store:
            day = timedelta(days=1)
            old = await finished_run(store, "a", T0, RunStatus.SUCCEEDED, 1)
            recent = await finished_run(store, "a", T0 + 9 * day, RunStatus.SUCCEEDED, 1)
            skipped = fire("b", T0 - day, status=RunStatus.SKIPPED, error="busy")
            await store.claim([skipped])  # ended when recorded, which is now-ish
            running = fire("c", T0 - day)
            await store.claim([running])
            await store.start(running.run_id, T0 - day)
            now = T0 + 10 * day

            deleted = await store.prune(keep_runs=1000, keep_days=1.5, now=now)
            assert deleted == 1
            assert await store.get_run(old.run_id) is None
            for kept in (recent.run_id, skipped.run_id, running.run_id):
                assert await store.get_run(kept) is not None
            assert await store.prune(keep_runs=None, keep_days=1.5, now=now) == 0
            assert await store.prune(keep_runs=None, keep_days=0.5, now=now) == 1
            assert await store.get_run(recent.run_id) is None

    run(body())


# -- the ledger: begin, re-runs with their arguments, released claims ----------------------


def test_a_request_is_begun_once_and_never_after_it_was_given_back(
    store_factory: StoreFactory,
) -> None:
    """``begin`` is the durable guard of a request's body: it succeeds once, for the
    daemon that took the request, and never after recovery gave the request back."""

    async def body() -> None:
        async with opened(store_factory) as dead:
            first = await dead.enqueue("q", [1], {"order_id": 42}, T0)
            second = await dead.enqueue("q", [2], {}, T0)
            taken = [q.run_id for q in await dead.take_queued(T0, limit=2)]
            assert taken == [first, second]
            assert await dead.begin(first, T0 + SECOND) is True
            assert await dead.begin(first, T0 + SECOND) is False  # begun already
            async with opened(store_factory) as daemon:
                rows = await daemon.recover(T0 + MINUTE)
                assert [r.run_id for r in rows] == [first]  # begun: may have run
                assert (rows[0].error or "").startswith(IN_PROGRESS)
                # never begun: certainly not run, so offered again, with its arguments
                again = await daemon.take_queued(T0 + MINUTE)
                assert [(q.run_id, q.args) for q in again] == [(second, (2,))]
                # a node presumed dead that lives on may no longer start it (SQLite admits
                # one daemon per file, by its lock, and cannot tell two stores of one pid)
                if isinstance(dead, ClusterStore):
                    assert await dead.begin(second, T0 + MINUTE) is False
                assert await daemon.begin(second, T0 + MINUTE) is True

    run(body())


def test_recover_reruns_interrupted_runs_with_their_arguments(
    store_factory: StoreFactory,
) -> None:
    """``retry_interrupted``: the re-run is a new request written in the recovery's own
    transaction, with the original arguments (None: the job file's)."""

    async def body() -> None:
        async with opened(store_factory) as dead:
            scheduled = fire("tick", T0)
            await dead.claim([scheduled])
            request = await dead.enqueue("notify", [], {"order_id": 42, "q": "a\\'\"b"}, T0)
            assert [q.run_id for q in await dead.take_queued(T0)] == [request]
            assert await dead.begin(request, T0)
            other = await dead.enqueue("other", [7], {}, T0)
            assert [q.run_id for q in await dead.take_queued(T0)] == [other]
            assert await dead.begin(other, T0)
        async with opened(store_factory) as daemon:
            rows = await daemon.recover(T0 + MINUTE, rerun_jobs={"notify", "tick"})
            by_job = {row.job: row for row in rows}
            assert set(by_job) == {"tick", "notify", "other"}
            assert "re-run as" in (by_job["notify"].error or "")
            assert "re-run as" in (by_job["tick"].error or "")
            assert "re-run as" not in (by_job["other"].error or "")
            again = {q.job: q for q in await daemon.take_queued(T0 + MINUTE)}
            assert set(again) == {"notify", "tick"}
            assert again["notify"].kwargs == {"order_id": 42, "q": "a\\'\"b"}
            assert again["notify"].args == ()
            assert again["tick"].args is None and again["tick"].kwargs is None
            assert (by_job["notify"].error or "").endswith(
                f"re-run as {again['notify'].run_id} (retry_interrupted)"
            )
            assert {q.trigger for q in again.values()} == {TriggerKind.RERUN}
            # a re-run that is interrupted in turn is not re-run again: once is the promise
            for q in again.values():
                assert await daemon.begin(q.run_id, T0 + MINUTE)
        async with opened(store_factory) as third:
            rows = await third.recover(T0 + 2 * MINUTE, rerun_jobs={"notify", "tick"})
            assert len(rows) == 2
            assert all("not re-run again" in (r.error or "") for r in rows)
            assert all(r.trigger is TriggerKind.RERUN for r in rows)
            assert await third.take_queued(T0 + 2 * MINUTE) == []

    run(body())


def test_released_claims_can_be_claimed_again(store_factory: StoreFactory) -> None:
    """A claim given back before its instant (graceful stop) leaves no row and moves the
    job's last fire back, so the next start fires or catches it up."""

    async def body() -> None:
        async with opened(store_factory) as store:
            done, ahead = fire("a", T0), fire("a", T0 + MINUTE)
            await store.claim([done, ahead])
            await store.start(done.run_id, T0)
            await store.finish(outcome(done, RunStatus.SUCCEEDED, T0, 1))
            await store.release([ahead, done])  # a finished run is never released
            assert await store.get_run(ahead.run_id) is None
            kept = await store.get_run(done.run_id)
            assert kept is not None and kept.status is RunStatus.SUCCEEDED
            last = await store.last_fired()
            assert last["a"][0] < T0 + MINUTE
            again = fire("a", T0 + MINUTE)
            assert await store.claim([again]) == [True]

    run(body())


def test_missed_rows_never_prune_real_history(store_factory: StoreFactory) -> None:
    """``keep_runs`` counts runs and missed/skipped rows apart: a burst of missed fires (a
    clock jump, a long outage) leaves the job's real history alone."""

    async def body() -> None:
        async with opened(store_factory) as store:
            ran = [fire("a", T0 + i * SECOND) for i in range(3)]
            await store.claim(ran)
            for f in ran:
                await store.finish(outcome(f, RunStatus.SUCCEEDED, f.scheduled, 0.1))
            missed = [
                fire("a", T0 + MINUTE + i * SECOND, status=RunStatus.MISSED, error="missed")
                for i in range(20)
            ]
            await store.claim(missed)
            await store.prune(keep_runs=5, keep_days=None, now=T0 + 2 * MINUTE)
            rows = await store.history("a", limit=100)
            assert sum(r.status is RunStatus.SUCCEEDED for r in rows) == 3
            assert sum(r.status is RunStatus.MISSED for r in rows) == 5

    run(body())


def test_texts_a_store_cannot_hold_are_escaped_not_fatal(store_factory: StoreFactory) -> None:
    """An error with a lone surrogate (an undecodable file name) or a NUL must not wedge the
    writer: the run is recorded with the text escaped, and later writes go on."""

    async def body() -> None:
        async with opened(store_factory) as store:
            bad, good = fire("bad", T0), fire("good", T0)
            await store.claim([bad, good])
            text = "cannot import caf\udce9.csv \x00 here"
            attempt = Attempt(
                number=1, started=T0, ended=T0 + SECOND, status=RunStatus.FAILED, error=text
            )
            await store.finish(
                outcome(
                    bad,
                    RunStatus.FAILED,
                    T0,
                    1,
                    error=text,
                    error_type="Bad\x00Error",
                    traceback=text,
                    result_preview=text,
                    attempt_log=(attempt,),
                )
            )
            await store.finish(outcome(good, RunStatus.SUCCEEDED, T0, 1))
            await store.flush()
            row = await store.get_run(bad.run_id)
            assert row is not None and row.status is RunStatus.FAILED
            assert row.error == "cannot import caf\\udce9.csv \\x00 here"
            kept = await store.get_run(good.run_id)
            assert kept is not None and kept.status is RunStatus.SUCCEEDED
            assert (await store.attempts(bad.run_id))[0].error == row.error

    run(body())
