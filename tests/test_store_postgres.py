"""PostgreSQL-only behaviour, against the real server (see ``tests/pg.py``): nodes racing
for the same fires, the per-job advisory lock, SKIP LOCKED takers, NOTIFY latency, dead
nodes, concurrent schema creation, reconnecting, the sync enqueue path and passwords."""

from __future__ import annotations

import asyncio
import logging
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

import psycopg
import pytest
from pg import drop_schema, fresh_schema, new_schema_name, postgres_url

from qtasks_cli.errors import StoreError
from qtasks_cli.models import RunStatus, TriggerKind
from qtasks_cli.recovery import MAY_HAVE_RUN
from qtasks_cli.store import new_run_id, open_store
from qtasks_cli.store import postgres as pg_module
from qtasks_cli.store.base import Claim, Fire
from qtasks_cli.store.postgres import PostgresStore, close_cached_connections, enqueue_now
from qtasks_cli.store.postgres_schema import channel_name

T = TypeVar("T")
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)
SECOND = timedelta(seconds=1)
MINUTE = timedelta(minutes=1)
TIMEOUT = timedelta(seconds=30)
PYTHON = sys.executable


@pytest.fixture
def url() -> str:
    return postgres_url()


@pytest.fixture
def schema(url: str) -> Iterator[str]:
    with fresh_schema(url) as name:
        yield name


@pytest.fixture
def make(url: str, schema: str) -> Callable[..., PostgresStore]:
    def factory(**options: Any) -> PostgresStore:
        return PostgresStore(url, schema=schema, **options)

    return factory


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def fire(job: str, scheduled: datetime, status: RunStatus = RunStatus.CLAIMED) -> Fire:
    return Fire(
        job=job,
        scheduled=scheduled,
        trigger=TriggerKind.SCHEDULE,
        run_id=new_run_id(),
        schedule_key="k",
        status=status,
    )


def in_threads(
    count: int, body: Callable[[int, threading.Barrier], Coroutine[Any, Any, T]]
) -> list[T]:
    """Run ``body(i, barrier)`` in ``count`` threads, each with its own event loop (a node)."""
    barrier = threading.Barrier(count, timeout=30)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            results[index] = asyncio.run(body(index, barrier))
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
        assert not thread.is_alive()
    if errors:
        raise errors[0]
    return results


def sql(url: str, statement: str, params: tuple[Any, ...] = ()) -> list[Any]:
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


# -- claiming: exactly one node wins each fire -------------------------------------------


def test_three_nodes_claiming_the_same_fires_each_fire_is_won_once(
    make: Callable[..., PostgresStore],
) -> None:
    times = [T0 + i * SECOND for i in range(300)]
    jobs = ["a", "b"]

    async def node(index: int, barrier: threading.Barrier) -> dict[tuple[str, datetime], bool]:
        store = make()
        await store.open()
        try:
            barrier.wait()
            # each node walks the fires in its own order and batch size
            order = [(job, t) for job in jobs for t in times]
            if index == 1:
                order.reverse()
            elif index == 2:
                order = order[len(order) // 2 :] + order[: len(order) // 2]
            size = (50, 7, 120)[index]
            won: dict[tuple[str, datetime], bool] = {}
            for start in range(0, len(order), size):
                chunk = order[start : start + size]
                result = await store.claim([fire(job, t) for job, t in chunk])
                won.update(zip(chunk, result))
            return won
        finally:
            await store.close()

    results = in_threads(3, node)
    for key in results[0]:
        winners = sum(result[key] for result in results)
        assert winners == 1, f"{key} won by {winners} nodes"

    async def check() -> None:
        store = make()
        await store.open()
        try:
            assert len(await store.history(limit=10_000)) == 600
            assert await store.last_fired() == {job: (times[-1], "k") for job in jobs}
        finally:
            await store.close()

    run(check())


def test_the_advisory_lock_lets_one_node_start_a_job_that_must_not_overlap(
    make: Callable[..., PostgresStore],
) -> None:
    # Each round, three nodes claim different times of a fresh job at once: without the
    # lock, two could both see no run in progress and both start one.
    rounds = 40

    async def node(index: int, barrier: threading.Barrier) -> list[Claim]:
        store = make()
        await store.open()
        try:
            outcomes = []
            for r in range(rounds):
                barrier.wait()
                mine = fire(f"job{r}", T0 + index * SECOND)
                (outcome,) = await store.claim([mine], exclusive_jobs={f"job{r}"})
                outcomes.append(outcome)
            return outcomes
        finally:
            await store.close()

    results = in_threads(3, node)
    for r in range(rounds):
        got = sorted(result[r] for result in results)
        assert got == [Claim.INSERTED, Claim.BUSY, Claim.BUSY], f"round {r}: {got}"

    async def check() -> None:
        store = make()
        await store.open()
        try:
            for r in range(rounds):
                rows = await store.history(f"job{r}")
                started = [row for row in rows if row.status is RunStatus.CLAIMED]
                skipped = [row for row in rows if row.status is RunStatus.SKIPPED]
                assert len(started) == 1 and len(skipped) == 2
                assert all(started[0].node in (row.error or "") for row in skipped)
        finally:
            await store.close()

    run(check())


# -- queued requests ----------------------------------------------------------------------


def test_three_takers_take_each_of_500_requests_once(make: Callable[..., PostgresStore]) -> None:
    async def fill() -> list[str]:
        store = make()
        await store.open()
        try:
            return [await store.enqueue("a", [i], {"i": i}, T0 + i * SECOND) for i in range(500)]
        finally:
            await store.close()

    expected = run(fill())

    async def taker(index: int, barrier: threading.Barrier) -> list[tuple[str, tuple[Any, ...]]]:
        store = make()
        await store.open()
        try:
            barrier.wait()
            taken = []
            while batch := await store.take_queued(T0, limit=9):
                taken += [(q.run_id, q.args) for q in batch]
            return taken
        finally:
            await store.close()

    results = in_threads(3, taker)
    every = [run_id for result in results for run_id, _ in result]
    assert sorted(every) == sorted(expected)
    assert len(set(every)) == 500
    for result in results:
        assert result, "a taker got nothing: the takers did not overlap"
        for run_id, args in result:
            assert args == (expected.index(run_id),)
        ids = [run_id for run_id, _ in result]
        assert ids == sorted(ids, key=expected.index)  # each in queue order
    print("taken per node:", [len(result) for result in results])


def test_a_notification_wakes_a_waiting_node_within_milliseconds(
    make: Callable[..., PostgresStore], url: str, schema: str
) -> None:
    async def body() -> list[float]:
        daemon = make()
        await daemon.open()
        try:
            await daemon.lock_daemon()
            latencies = []
            for i in range(20):
                loop = asyncio.get_running_loop()
                waiting = asyncio.create_task(daemon.wait_for_work(5))
                await asyncio.sleep(0.005)
                began = loop.time()
                # from another process's point of view: the sync path, in a thread
                await asyncio.to_thread(enqueue_now, url, "a", [i], schema=schema)
                assert await waiting is True
                latencies.append(loop.time() - began)
            taken = await daemon.take_queued(T0, limit=100)
            assert [q.args for q in taken] == [(i,) for i in range(20)]
            assert await daemon.wait_for_work(0.05) is False  # nothing more announced
            return latencies
        finally:
            await daemon.close()

    latencies = run(body())
    print(
        f"NOTIFY wake-up: median {statistics.median(latencies) * 1000:.1f} ms, "
        f"max {max(latencies) * 1000:.1f} ms (enqueue + commit + delivery)"
    )
    assert statistics.median(latencies) < 0.2
    assert max(latencies) < 1.0


def test_the_listener_reconnects_and_wakes_the_node(
    make: Callable[..., PostgresStore], url: str, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> None:
        daemon = make()
        await daemon.open()
        try:
            await daemon.lock_daemon()
            channel = channel_name(schema)
            listeners = await asyncio.to_thread(
                sql,
                url,
                "SELECT pid FROM pg_stat_activity WHERE query = %s",
                (f'LISTEN "{channel}"',),
            )
            assert len(listeners) == 1
            await asyncio.to_thread(sql, url, "SELECT pg_terminate_backend(%s)", (listeners[0][0],))
            # woken at once: requests written while nobody listened are not lost
            assert await daemon.wait_for_work(5) is True
            deadline = asyncio.get_running_loop().time() + 10
            while not daemon._listening:
                assert asyncio.get_running_loop().time() < deadline, "listener never came back"
                await asyncio.sleep(0.05)
            await daemon.wait_for_work(0)  # drop a wake-up left from the reconnection
            waiting = asyncio.create_task(daemon.wait_for_work(5))
            await asyncio.sleep(0.01)
            await asyncio.to_thread(enqueue_now, url, "a", schema=schema)
            assert await waiting is True
        finally:
            await daemon.close()

    with caplog.at_level(logging.WARNING, logger="qtasks_cli.store.postgres"):
        run(body())
    assert "not listening for notifications" in caplog.text


def test_a_lost_connection_fails_one_call_and_the_next_reconnects(
    make: Callable[..., PostgresStore], url: str
) -> None:
    async def body() -> None:
        store = make()
        await store.open()
        try:
            assert await store.claim([fire("a", T0)]) == [True]
            cur = await store._do("test", lambda conn: conn.execute("SELECT pg_backend_pid()"))
            row = await cur.fetchone()
            assert row is not None
            await asyncio.to_thread(sql, url, "SELECT pg_terminate_backend(%s)", (row[0],))
            with pytest.raises(StoreError) as caught:
                await store.history()
            assert str(caught.value).startswith(f"{store.location}: reading history failed")
            assert len(await store.history()) == 1
        finally:
            await store.close()

    run(body())


# -- nodes: heartbeats, dead nodes, config digests ----------------------------------------


def test_a_silent_node_is_reaped_once_and_its_work_given_back(
    make: Callable[..., PostgresStore], caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> None:
        dead, one, two = make(), make(), make()
        for store in (dead, one, two):
            await store.open()
        try:
            for store in (dead, one, two):
                await store.lock_daemon()
            await dead.heartbeat(T0, digest="old", fingerprints={"a": "1"})
            running, claimed = fire("a", T0), fire("b", T0)
            assert await dead.claim([running, claimed]) == [True, True]
            await dead.start(running.run_id, T0 + SECOND)
            request = await one.enqueue("q", [7], {}, T0)
            assert [q.run_id for q in await dead.take_queued(T0)] == [request]
            await dead.flush()
            later = T0 + 45 * SECOND
            for store in (one, two):
                await store.heartbeat(later, digest="new", fingerprints={"a": "2"})

            alive = await one.nodes(later, TIMEOUT)
            assert {n.node_id for n in alive} == {one.node_id, two.node_id}
            assert {n.digest for n in alive} == {"new"}

            # a live node's runs are left alone, whoever asks
            mine = fire("c", T0)
            await one.claim([mine])
            await one.start(mine.run_id, T0)
            await one.flush()

            reaped = await asyncio.gather(
                one.reap_dead_nodes(later, TIMEOUT), two.reap_dead_nodes(later, TIMEOUT)
            )
            ids = [row.run_id for rows in reaped for row in rows]
            assert sorted(ids) == sorted([running.run_id, claimed.run_id])  # once in all
            by_id = {row.run_id: row for rows in reaped for row in rows}
            assert by_id[running.run_id].status is RunStatus.INTERRUPTED
            error = by_id[running.run_id].error or ""
            assert error.startswith("daemon stopped while the run was in progress")
            assert dead.node_id in error
            assert (by_id[claimed.run_id].error or "").startswith(MAY_HAVE_RUN)
            assert by_id[running.run_id].ended == later
            row = await one.get_run(request)
            assert row is not None and row.status is RunStatus.QUEUED and row.node is None
            row = await one.get_run(mine.run_id)
            assert row is not None and row.status is RunStatus.RUNNING
            assert await one.reap_dead_nodes(later, TIMEOUT) == []
            assert dead.node_id not in {n.node_id for n in await two.nodes(T0, TIMEOUT)}

            # the presumed-dead node comes back: it says so and registers again
            await dead.heartbeat(later, digest="old", fingerprints={})
            assert "had been presumed dead" in caplog.text
            assert dead.node_id in {n.node_id for n in await two.nodes(later, TIMEOUT)}
        finally:
            for store in (dead, one, two):
                await store.close()

    with caplog.at_level(logging.INFO, logger="qtasks_cli.store.postgres"):
        run(body())


_KILLED_NODE = """
import asyncio, os, sys
from datetime import datetime, timezone
from qtasks_cli.models import TriggerKind
from qtasks_cli.store import new_run_id
from qtasks_cli.store.base import Fire
from qtasks_cli.store.postgres import PostgresStore

async def main():
    store = PostgresStore(sys.argv[1], schema=sys.argv[2])
    await store.open()
    await store.lock_daemon()
    now = datetime.now(timezone.utc)
    fire = Fire(job="a", scheduled=now, trigger=TriggerKind.SCHEDULE, run_id=new_run_id(),
                schedule_key="k")
    await store.claim([fire])
    await store.start(fire.run_id, now)
    await store.flush()
    print(fire.run_id, store.node_id, flush=True)
    os._exit(0)  # like kill -9: no close, the node row stays fresh

asyncio.run(main())
"""


def test_a_node_whose_process_is_gone_from_this_host_is_reaped_at_once(
    make: Callable[..., PostgresStore], url: str, schema: str
) -> None:
    child = subprocess.run(
        [PYTHON, "-c", _KILLED_NODE, url, schema], capture_output=True, text=True, timeout=60
    )
    assert child.returncode == 0, child.stderr
    run_id, node = child.stdout.split()

    async def body() -> None:
        store = make()
        await store.open()
        try:
            await store.lock_daemon()
            now = datetime.now(timezone.utc)
            assert node in {n.node_id for n in await store.nodes(now, TIMEOUT)}  # fresh
            rows = await store.recover(now)  # a restart on the same host
            assert [row.run_id for row in rows] == [run_id]
            assert rows[0].status is RunStatus.INTERRUPTED
            assert node not in {n.node_id for n in await store.nodes(now, TIMEOUT)}
        finally:
            await store.close()

    run(body())


def test_recover_at_a_node_start_leaves_live_nodes_alone(
    make: Callable[..., PostgresStore],
) -> None:
    async def body() -> None:
        live, stale, newcomer = make(), make(), make(node_timeout=TIMEOUT)
        for store in (live, stale, newcomer):
            await store.open()
        try:
            now = datetime.now(timezone.utc)
            await live.lock_daemon()
            await stale.lock_daemon()
            await live.heartbeat(now, digest="d", fingerprints={})
            await stale.heartbeat(now - 2 * TIMEOUT, digest="d", fingerprints={})
            theirs, lost = fire("a", T0), fire("b", T0)
            await live.claim([theirs])
            await stale.claim([lost])
            await newcomer.lock_daemon()
            rows = await newcomer.recover(now)
            assert [row.run_id for row in rows] == [lost.run_id]
            row = await newcomer.get_run(theirs.run_id)
            assert row is not None and row.status is RunStatus.CLAIMED
        finally:
            for store in (live, stale, newcomer):
                await store.close()

    run(body())


def test_a_clean_close_leaves_the_cluster(make: Callable[..., PostgresStore]) -> None:
    async def body() -> None:
        leaving, staying = make(), make()
        await leaving.open()
        await staying.open()
        try:
            await leaving.lock_daemon()
            await staying.lock_daemon()
            now = datetime.now(timezone.utc)
            nodes = {n.node_id for n in await staying.nodes(now, TIMEOUT)}
            assert nodes == {leaving.node_id, staying.node_id}
            await leaving.close()
            assert [n.node_id for n in await staying.nodes(now, TIMEOUT)] == [staying.node_id]
        finally:
            await leaving.close()
            await staying.close()

    run(body())


# -- the schema ---------------------------------------------------------------------------


def test_several_nodes_create_the_schema_at_once(url: str) -> None:
    schema = new_schema_name()
    try:

        async def node(index: int, barrier: threading.Barrier) -> bool:
            store = PostgresStore(url, schema=schema)
            barrier.wait()
            await store.open()
            try:
                return await store.claim([fire("a", T0)]) == [True]
            finally:
                await store.close()

        def enqueuer() -> str:
            return enqueue_now(url, "a", schema=schema)

        sync_ids: list[str] = []
        thread = threading.Thread(target=lambda: sync_ids.append(enqueuer()))
        thread.start()
        won = in_threads(6, node)
        thread.join(timeout=60)
        assert sum(won) == 1
        assert len(sync_ids) == 1
        version = sql(url, f'SELECT version FROM "{schema}".schema_version')
        assert version == [(len(pg_module.MIGRATIONS),)]
    finally:
        close_cached_connections()
        drop_schema(url, schema)


def test_a_schema_from_a_newer_qtasks_is_refused(
    make: Callable[..., PostgresStore], url: str, schema: str
) -> None:
    async def create() -> None:
        store = make()
        await store.open()
        await store.close()

    run(create())
    sql(url, f'UPDATE "{schema}".schema_version SET version = 99')
    with pytest.raises(StoreError, match="created by a newer qtasks") as caught:
        run(create())
    assert "99" in str(caught.value) and schema in str(caught.value)


def test_schema_names_must_be_plain_identifiers(url: str) -> None:
    for bad in ('x"; DROP TABLE runs; --', "1abc", "", "a" * 64, "with space"):
        with pytest.raises(StoreError, match="invalid PostgreSQL schema name"):
            PostgresStore(url, schema=bad)
    with pytest.raises(StoreError, match="invalid PostgreSQL schema name"):
        enqueue_now(url, "a", schema="bad-name")


def test_the_factory_passes_the_schema_and_the_node_timeout(url: str, schema: str) -> None:
    store = open_store(url, schema=schema, node_timeout=timedelta(seconds=5))
    assert isinstance(store, PostgresStore)
    assert store.schema == schema and store._node_timeout == timedelta(seconds=5)
    run_id = enqueue_now(url, "a", [1], schema=schema)
    from qtasks_cli.store import enqueue_now as factory_enqueue

    second = factory_enqueue(url, "a", [2], schema=schema)

    async def body() -> list[str]:
        await store.open()
        try:
            return [q.run_id for q in await store.take_queued(T0)]
        finally:
            await store.close()

    assert run(body()) == [run_id, second]


# -- enqueue without an event loop -------------------------------------------------------


def test_enqueue_now_throughput(url: str, schema: str) -> None:
    enqueue_now(url, "warmup", schema=schema)  # connect and create the schema first
    count = 5000
    began = time.perf_counter()
    ids = [enqueue_now(url, "a", [i], {"n": i}, schema=schema) for i in range(count)]
    elapsed = time.perf_counter() - began
    print(
        f"enqueue_now (PostgreSQL): {count / elapsed:,.0f} requests/s ({count} in {elapsed:.2f}s)"
    )
    assert len(set(ids)) == count
    # No speed is asserted (a busy machine makes it anything): bench/ measures throughput.
    rows = sql(url, f'SELECT count(*) FROM "{schema}".runs WHERE job = %s', ("a",))
    assert rows == [(count,)]


def test_enqueue_now_refuses_arguments_that_are_not_json(url: str, schema: str) -> None:
    with pytest.raises(StoreError, match="JSON values"):
        enqueue_now(url, "a", [{1, 2}], schema=schema)
    with pytest.raises(StoreError, match="keyword names must be strings"):
        enqueue_now(url, "a", [], {1: "x"}, schema=schema)


# -- passwords never show -----------------------------------------------------------------


def test_passwords_stay_out_of_locations_errors_and_logs(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "Zq7Secret9"
    server = psycopg.conninfo.conninfo_to_dict(url)
    host, port = server.get("host", "127.0.0.1"), server.get("port", "5432")
    user = server.get("user", "postgres")
    no_such_user = f"postgresql://qtasks_nobody:{secret}@{host}:{port}/test"
    refused = f"postgresql://{user}:{secret}@127.0.0.1:1/test"
    in_query = f"postgresql://{host}:{port}/qtasks_nodb?user={user}&password={secret}"
    caplog.set_level(logging.DEBUG)
    for bad in (no_such_user, refused, in_query):
        store = PostgresStore(bad, schema="qtasks")
        assert secret not in store.location
        with pytest.raises(StoreError) as caught:
            run(store.open())
        message = str(caught.value)
        assert secret not in message, message
        assert message.startswith(f"{store.location}: cannot connect: ")
        assert len(message) > len(store.location) + 20  # the server's reason is kept
        with pytest.raises(StoreError) as caught:
            enqueue_now(bad, "a")
        assert secret not in str(caught.value)
        assert secret not in open_store(bad).location
    assert secret not in caplog.text


def test_a_server_message_quoting_the_password_is_scrubbed(url: str) -> None:
    secret = "Zq7Secret9"
    # The server quotes a missing database's name: make that name the "password".
    params = {**psycopg.conninfo.conninfo_to_dict(url), "dbname": secret, "connect_timeout": 5}
    with pytest.raises(psycopg.Error) as raw:
        psycopg.connect(**params)
    assert secret in str(raw.value)
    scrubbed = pg_module._scrub(str(raw.value), f"postgresql://app:{secret}@db/jobs")
    assert secret not in scrubbed and "***" in scrubbed


def test_the_store_package_does_not_import_psycopg() -> None:
    code = "import sys, qtasks_cli.store, qtasks_cli.store.base; print('psycopg' in sys.modules)"
    out = subprocess.run(
        [PYTHON, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "False"


def test_the_duration_index_is_rebuilt_with_its_columns_and_stats_read_it_alone(
    url: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A schema made by the version before (the expression index alone) is migrated: the
    index includes ``started`` and ``ended``, and a percentile's walk reads the index alone
    (issue 16: the walk read every skipped run's row from the table)."""
    from qtasks_cli.models import RunResult
    from qtasks_cli.store import postgres_schema

    before = postgres_schema.MIGRATIONS[:-1]
    monkeypatch.setattr(postgres_schema, "MIGRATIONS", before)

    async def fill() -> None:
        store = PostgresStore(url, schema=schema)
        await store.open()
        try:
            for i in range(200):
                f = fire("a", T0 + timedelta(minutes=i))
                assert await store.claim([f]) == [True]
                await store.start(f.run_id, f.scheduled)
                await store.finish(
                    RunResult(
                        run_id=f.run_id,
                        job="a",
                        trigger=TriggerKind.SCHEDULE,
                        scheduled=f.scheduled,
                        status=RunStatus.SUCCEEDED,
                        started=f.scheduled,
                        ended=f.scheduled + timedelta(seconds=i + 1),
                    )
                )
        finally:
            await store.close()

    run(fill())
    close_cached_connections()
    old = sql(url, "SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND indexname = %s",
              (schema, "runs_duration"))  # fmt: skip
    assert "INCLUDE" not in old[0][0]
    monkeypatch.undo()

    async def stats() -> Any:
        store = PostgresStore(url, schema=schema)
        await store.open()
        try:
            return await store.stats("a")
        finally:
            await store.close()

    (found,) = run(stats())
    assert (found.runs, found.p50, found.p95) == (200, 100.5, pytest.approx(190.05))
    (definition,) = sql(
        url,
        "SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND indexname = %s",
        (schema, "runs_duration"),
    )
    assert "INCLUDE (started, ended)" in definition[0]
    sql(url, f'VACUUM ANALYZE "{schema}".runs')
    with psycopg.connect(url, autocommit=True) as conn:
        # 200 runs are few enough for a sort: make the planner show the walk it can take.
        for setting in ("enable_sort", "enable_bitmapscan", "enable_seqscan"):
            conn.execute(f"SET {setting} = off")
        plan = conn.execute(
            f'EXPLAIN (ANALYZE, FORMAT TEXT) SELECT ended - started FROM "{schema}".runs'
            " WHERE job = 'a' AND status IN ('succeeded', 'failed', 'timed_out', 'cancelled',"
            " 'interrupted', 'skipped', 'missed') AND started IS NOT NULL AND ended IS NOT NULL"
            " ORDER BY ended - started LIMIT 2 OFFSET 100"
        ).fetchall()
    shown = "\n".join(row[0] for row in plan)
    assert "Index Only Scan using runs_duration" in shown, shown
    assert "Heap Fetches: 0" in shown, shown
