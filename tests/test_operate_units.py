"""The operator's pieces in isolation: the control store contract over SQLite and PostgreSQL
(one suite, both stores), the status report, sparklines, histograms, the output buffer and
the placeholder environment; property tests where the input space is wide."""

from __future__ import annotations

import itertools
import json
import os
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pg import fresh_schema, postgres_url

from qtasks_cli.metrics import _Histogram
from qtasks_cli.models import RunStatus
from qtasks_cli.output import Capture, _Buffer, _current, _thread_start
from qtasks_cli.store import open_control
from qtasks_cli.store.base import OUTPUT_KEPT_CHARS, OUTPUT_LINE_CHARS, OUTPUT_LINES, clip_lines
from qtasks_cli.store.control import ControlStore, DaemonInfo, PlaceholderEnv
from qtasks_cli.store.sqlite import enqueue_now
from qtasks_cli.ui.sparkline import ASCII_BARS, BARS, sparkline, strip

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


# --- one contract, both stores -----------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def control(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[ControlStore, str]]:
    if request.param == "sqlite":
        state = str(tmp_path / "state.db")
        store = open_control(state)
        yield store, state
        store.close()
        return
    url = postgres_url()
    with fresh_schema(url) as schema:
        store = open_control(url, schema=schema)
        yield store, f"{url}#{schema}"
        store.close()


def _enqueue(state: str, job: str) -> str:
    if "#" in state:
        from qtasks_cli.store.postgres import enqueue_now as pg_enqueue

        url, schema = state.split("#")
        return pg_enqueue(url, job, [], {"token": "x"}, schema=schema)
    return enqueue_now(state, job, [], {"token": "x"})


def test_pause_is_idempotent_and_keeps_the_first_pauser(control) -> None:
    store, _ = control
    first = store.pause("report", "alice@box (pid 1)", T0)
    again = store.pause("report", "bob@box (pid 2)", T0 + timedelta(hours=1))
    assert again == first and first.by == "alice@box (pid 1)" and first.since == T0
    assert set(store.paused()) == {"report"}
    lifted = store.resume("report")
    assert lifted is not None and lifted.by == "alice@box (pid 1)"
    assert store.resume("report") is None and store.paused() == {}


def test_cancel_of_a_waiting_request_is_immediate_and_unknown_is_said(control) -> None:
    store, state = control
    run_id = _enqueue(state, "notify")
    assert store.request_cancel(run_id, "me", T0) == "cancelled"
    row = store.run(run_id)
    assert row is not None and row.status is RunStatus.CANCELLED
    assert row.error == "cancelled by me before it started"
    assert store.request_cancel(run_id, "me", T0) == "cancelled"  # the finished status
    assert store.request_cancel("nope", "me", T0) == "unknown"
    assert store.run_arguments(run_id) == ([], {"token": "x"})
    assert store.cancel_requests() == []


def test_publish_output_tidy_and_daemons(control) -> None:
    store, state = control
    seen = T0 + timedelta(seconds=5)
    info = DaemonInfo(
        node_id="h:1", host="h", pid=1, started=T0, last_seen=seen, published=seen,
        version="0.1.0", config="/srv/jobs.yaml", digest="abc", every=2.0, running=1,
        waiting=2, abandoned=1, pid_start=12345,
        jobs={"report": {"next": T0.isoformat(), "running": 0, "pending": 0, "enabled": True,
                         "waiting": 2, "abandoned": ["r1"]}},
    )  # fmt: skip
    store.publish(info)
    store.publish(info)  # a replace, not a second row
    assert store.daemons() == [info]
    assert info.alive(T0 + timedelta(seconds=6)) and not info.alive(T0 + timedelta(seconds=12))
    run_id = _enqueue(state, "notify")
    lines = [f"line {i} \x1b[31m'\"\\" for i in range(OUTPUT_LINES + 5)]
    store.add_output(run_id, lines)
    assert store.output(run_id) == lines[-OUTPUT_LINES:]
    # What neither store can hold in JSON text (NUL, a lone surrogate) is escaped, not lost.
    store.add_output(run_id, ["nul \x00 here", "lone \udcff surrogate"])
    assert store.output(run_id) == ["nul \\x00 here", "lone \\udcff surrogate"]
    store.add_output(run_id, lines)
    store.add_output("gone-run", ["x"])
    assert store.tidy() == 1 and store.output("gone-run") == [] and store.output(run_id)
    store.withdraw("h:1")
    assert store.daemons() == []


def test_cancel_races_with_a_daemon_taking_the_request(tmp_path: Path) -> None:
    """A request is either taken by the daemon or cancelled, never both: the take and the
    cancel are each one transaction on the same row."""
    import asyncio

    from qtasks_cli.store.sqlite import SqliteStore

    state = str(tmp_path / "state.db")
    ids = [enqueue_now(state, "notify", [], {}) for _ in range(200)]
    control = open_control(state)
    answers: dict[str, str] = {}

    def cancel_all() -> None:
        for run_id in ids:
            answers[run_id] = control.request_cancel(run_id, "me", T0)

    async def take() -> list[str]:
        store = SqliteStore(state)
        await store.open()
        taken: list[str] = []
        try:
            for _ in range(50):
                taken += [r.run_id for r in await store.take_queued(T0, limit=5)]
                await asyncio.sleep(0)
        finally:
            await store.close()
        return taken

    thread = threading.Thread(target=cancel_all)
    thread.start()
    taken = asyncio.run(take())
    thread.join(30)
    control.close()
    for run_id in ids:
        if run_id in taken:
            assert answers[run_id] == "requested", run_id  # the daemon's to stop
        else:
            assert answers[run_id] == "cancelled", run_id


# --- pure pieces ---------------------------------------------------------------------------------


@given(st.lists(st.one_of(st.none(), st.floats(0, 1e6, allow_nan=False)), max_size=60))
def test_sparkline_has_one_scaled_character_per_run(values: list[float | None]) -> None:
    line = sparkline(values)
    assert len(line) == len(values)
    known = [(v, c) for v, c in zip(values, line) if v is not None]
    assert all(c in BARS for _, c in known)
    assert all(c == " " for v, c in zip(values, line) if v is None)
    ordered = sorted(known)  # a larger value is never drawn lower
    for (_, ca), (_, cb) in itertools.pairwise(ordered):
        assert BARS.index(ca) <= BARS.index(cb)
    if known and max(v for v, _ in known) > min(v for v, _ in known):
        assert BARS[0] in line and BARS[-1] in line
    assert set(sparkline(values, ascii_only=True)) <= set(ASCII_BARS) | {" "}


def test_strip_colours_by_outcome() -> None:
    cells = strip([RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.SKIPPED])
    assert [style for _, style in cells] == ["green", "bold red", "yellow", "dim"]
    assert (
        "".join(c for c, _ in strip([RunStatus.SUCCEEDED, RunStatus.TIMED_OUT], ascii_only=True))
        == "+T"
    )


@given(st.lists(st.floats(0, 1e5, allow_nan=False), max_size=200))
def test_histogram_buckets_are_cumulative_and_complete(values: list[float]) -> None:
    hist = _Histogram((0.1, 1.0, 10.0))
    for value in values:
        hist.observe(value)
    counts = [c for _, c in hist.exposition()]
    assert counts == sorted(counts) and counts[-1] == len(values) == hist.count
    for bound, count in hist.exposition()[:-1]:
        assert count == sum(1 for v in values if v <= float(bound))


@settings(max_examples=200)
@given(st.lists(st.text(max_size=3000), max_size=40))
def test_output_buffer_keeps_the_last_lines_bounded(writes: list[str]) -> None:
    buffer = _Buffer()
    for text in writes:
        buffer.write(text)
    lines = buffer.close()
    expected = "".join(writes).split("\n")
    if expected and expected[-1] == "":
        expected = expected[:-1]
    assert len(lines) <= OUTPUT_LINES
    assert all(len(line) <= OUTPUT_KEPT_CHARS for line in lines)
    tail = [line[:OUTPUT_KEPT_CHARS] for line in expected[-OUTPUT_LINES:]]
    if all(len(line) <= OUTPUT_KEPT_CHARS for line in expected[-OUTPUT_LINES:]):
        assert lines == tail
    assert all(len(line) <= OUTPUT_LINE_CHARS for line in clip_lines(lines))


def test_capture_keeps_each_runs_lines_apart_across_threads() -> None:
    """A run's output is what its task, the threads that copy its context and the threads
    it starts (however deep, and pools it makes) print; never another run's or the daemon's
    own (a pool thread a run happened to start, used later by the daemon)."""
    import asyncio
    import concurrent.futures
    import io
    import sys

    from qtasks_cli.events import KINDS, EventKind

    capture = Capture()
    saved = sys.stdout
    sys.stdout = io.StringIO()
    try:

        async def run(run_id: str, pool: list[concurrent.futures.ThreadPoolExecutor]) -> None:
            capture.sink(KINDS[EventKind.STARTED](time=T0, job="j", run_id=run_id))
            print(f"{run_id} on the loop")
            await asyncio.sleep(0)
            await asyncio.to_thread(lambda: print(f"{run_id} in a thread"))

            def nested() -> None:
                inner = threading.Thread(target=lambda: print(f"{run_id} two threads deep"))
                inner.start()
                inner.join()

            outer = threading.Thread(target=nested)
            outer.start()
            await asyncio.to_thread(outer.join)
            mine = concurrent.futures.ThreadPoolExecutor(1)
            pool.append(mine)
            await asyncio.wrap_future(mine.submit(print, f"{run_id} in its pool"))
            capture.sink(
                KINDS[EventKind.FINISHED](
                    time=T0, job="j", run_id=run_id, status=RunStatus.SUCCEEDED
                )
            )

        async def main() -> None:
            capture.install()  # in the daemon's main task: its context says "no run"
            pools: list[concurrent.futures.ThreadPoolExecutor] = []
            await asyncio.gather(run("a", pools), run("b", pools))
            # The daemon's own to_thread, on a pool thread "a" started: not "a"'s.
            await asyncio.to_thread(print, "the daemon's own")
            for pool in pools:
                pool.shutdown()

        asyncio.run(main())
        print("outside any run")
        capture.uninstall()
    finally:
        sys.stdout = saved
    assert threading.Thread.start is _thread_start  # put back
    for run_id in ("a", "b"):
        assert capture.take(run_id) == [
            f"{run_id} on the loop",
            f"{run_id} in a thread",
            f"{run_id} two threads deep",
            f"{run_id} in its pool",
        ]
        assert capture.take(run_id) == []  # once
    assert _current.get() is None


def test_placeholder_env_reads_missing_variables_as_their_placeholder(monkeypatch) -> None:
    monkeypatch.setenv("QT_PRESENT", "yes")
    monkeypatch.delenv("QT_ABSENT", raising=False)
    env = PlaceholderEnv()
    assert env.get("QT_PRESENT") == "yes" and env.get("QT_ABSENT") == "${QT_ABSENT}"
    assert env.get("QT_ABSENT", "") == ""  # asked with a default (TZ): the default
    assert "QT_PRESENT" in dict(env) and len(env) == len(os.environ)


def test_daemon_info_round_trips_through_json() -> None:
    from qtasks_cli.store.control import info_body, info_from_row

    info = DaemonInfo(
        node_id="n", host="h", pid=3, started=T0, last_seen=T0, published=T0, version="v",
        config="c", digest="d", every=2.0, running=2, queued=1, waiting=4, abandoned=1,
        pid_start=99, jobs={"a": {"next": None}},
    )  # fmt: skip
    body = json.loads(json.dumps(info_body(info)))
    assert info_from_row("n", "h", 3, T0, T0, body) == info
    # A PostgreSQL node's own heartbeat, newer than its row, is what liveness goes by.
    beat = T0 + timedelta(seconds=30)
    merged = info_from_row("n", "h", 3, T0, T0, body, beat=beat)
    assert merged.last_seen == beat and merged.written == T0


# --- the control thread sleeps while nobody asks ----------------------------------------------


@given(st.floats(0, 4e9, allow_nan=False), st.floats(0, 120, allow_nan=False))
def test_rounds_fall_in_the_quiet_part_of_a_second(now: float, after: float) -> None:
    import math

    from qtasks_cli.control import QUIET, quiet_instant

    when = quiet_instant(after, now)
    assert when >= now + after - 1e-6
    fraction = when - math.floor(when)
    assert QUIET[0] - 1e-6 <= fraction <= QUIET[1] + 1e-6
    assert when - (now + after) <= 1 - (QUIET[1] - QUIET[0]) + 1e-6


def test_the_control_thread_does_a_round_only_when_asked_or_at_its_heartbeat(
    tmp_path: Path,
) -> None:
    """Idle, the thread does not wake; a poke (what a command's datagram or NOTIFY does)
    gets a round, with a fresh publish, within a second."""
    import asyncio
    import time
    from types import SimpleNamespace

    from qtasks_cli.control import Controller
    from qtasks_cli.models import Snapshot

    state = str(tmp_path / "state.db")

    def snapshot() -> Snapshot:
        return Snapshot(now=datetime.now(timezone.utc), started_at=T0, jobs=(), running=0,
                        queued=0, state=state)  # fmt: skip

    supervisor = SimpleNamespace(
        paused=frozenset(),
        store=SimpleNamespace(node_id="here:1"),
        cluster=SimpleNamespace(shared=False),
        node_beat=5.0,
        config=SimpleNamespace(path=tmp_path / "jobs.yaml", digest="d"),
        snapshot=snapshot,
        runtime=SimpleNamespace(abandoned={"r1": "job"}),
        cancel_run=lambda run_id, by: False,
        ready=SimpleNamespace(is_set=lambda: True),  # started: the first round may come
    )
    reader = open_control(state)

    async def until(predicate: Any, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, "not in time"
            await asyncio.sleep(0.02)

    async def main() -> None:
        controller = Controller(supervisor, state=state, schema="qtasks", heartbeat=60.0)  # type: ignore[arg-type]
        controller.woken = True
        await controller.start()
        try:
            await until(lambda: controller.rounds == 1)
            [first] = reader.daemons()
            assert first.every == 60.0 and first.jobs == {}
            assert first.abandoned == 0 and first.pid_start is not None
            await asyncio.sleep(1.2)  # idle: not one more round
            assert controller.rounds == 1
            controller.poke()  # a round at once, not at the 60 s heartbeat
            await until(lambda: controller.rounds == 2, timeout=30)
            [second] = reader.daemons()
            assert second.written > first.written
        finally:
            await controller.stop()
        assert reader.daemons() == []  # withdrawn at the stop

    try:
        asyncio.run(main())
    finally:
        reader.close()


def test_the_control_threads_first_round_waits_for_the_start(tmp_path: Path) -> None:
    """No snapshot is taken on the loop before the supervisor has started (10,000 views held
    the start back, and showed no next fire); the first round comes once it has."""
    import asyncio
    import time
    from types import SimpleNamespace

    from qtasks_cli.control import Controller
    from qtasks_cli.models import Snapshot

    state = str(tmp_path / "state.db")
    taken: list[float] = []

    def snapshot() -> Snapshot:
        taken.append(time.monotonic())
        return Snapshot(now=datetime.now(timezone.utc), started_at=T0, jobs=(), running=0,
                        queued=0, state=state)  # fmt: skip

    async def main() -> None:
        started = asyncio.Event()
        supervisor = SimpleNamespace(
            paused=frozenset(),
            store=SimpleNamespace(node_id="here:1"),
            cluster=SimpleNamespace(shared=False),
            node_beat=5.0,
            config=SimpleNamespace(path=tmp_path / "jobs.yaml", digest="d"),
            snapshot=snapshot,
            runtime=SimpleNamespace(abandoned={}),
            cancel_run=lambda run_id, by: False,
            ready=started,
        )
        controller = Controller(supervisor, state=state, schema="qtasks", heartbeat=60.0)  # type: ignore[arg-type]
        controller.woken = True
        await controller.start()
        try:
            controller.poke()
            await asyncio.sleep(1.5)  # not started: no round, however poked
            assert controller.rounds == 0 and taken == []
            started.set()
            deadline = time.monotonic() + 30
            while controller.rounds < 1:
                assert time.monotonic() < deadline, "no round after the start"
                await asyncio.sleep(0.02)
            assert len(taken) == 1
        finally:
            await controller.stop()

    asyncio.run(main())


def test_liveness_by_process_here_and_by_heartbeat_elsewhere() -> None:
    import socket

    from qtasks_cli.status import is_alive
    from qtasks_cli.store.control import process_start

    here = socket.gethostname()
    now = datetime.now(timezone.utc)
    old = now - timedelta(minutes=10)
    me = DaemonInfo(
        node_id="n", host=here, pid=os.getpid(), started=old, last_seen=old, version="v",
        config="c", digest="d", every=60.0, pid_start=process_start(os.getpid()),
    )  # fmt: skip
    # This host: the process exists, however old its heartbeat (it is late, not gone).
    assert is_alive(me, now, here)
    assert not me.alive(now)
    # The pid now belongs to another process (started at another time): gone.
    reused = DaemonInfo(**{**_fields(me), "pid_start": (me.pid_start or 0) + 1})
    assert not is_alive(reused, now, here)
    # Another host: the heartbeat decides.
    elsewhere = DaemonInfo(**{**_fields(me), "host": "elsewhere"})
    assert not is_alive(elsewhere, now, here)
    fresh = DaemonInfo(**{**_fields(elsewhere), "last_seen": now - timedelta(seconds=100)})
    assert is_alive(fresh, now, here)


def _fields(info: DaemonInfo) -> dict[str, Any]:
    import dataclasses

    return {f.name: getattr(info, f.name) for f in dataclasses.fields(info)}


def test_a_postgres_nodes_heartbeat_is_its_sign_of_life(control) -> None:
    """A node rewrites its status row rarely; its ``nodes`` row beats every few seconds."""
    store, state = control
    if "#" not in state:
        pytest.skip("PostgreSQL only")
    import psycopg

    url, schema = state.split("#")
    info = DaemonInfo(
        node_id="h:1:x", host="h", pid=1, started=T0, last_seen=T0, published=T0,
        version="v", config="c", digest="d", every=5.0,
    )  # fmt: skip
    store.publish(info)
    beat = T0 + timedelta(minutes=3)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            f'INSERT INTO "{schema}".nodes (node_id, host, pid, started, last_seen, digest,'
            " fingerprints, local_key) VALUES (%s, 'h', 1, %s, %s, '', '{}', 'k')",
            ("h:1:x", T0, beat),
        )
    [seen] = store.daemons()
    assert seen.last_seen == beat and seen.written == T0
    store.wake()  # nobody listens: fine


def test_one_order_of_states_in_the_live_table_and_systemd_status() -> None:
    from qtasks_cli.models import JobView, Snapshot
    from qtasks_cli.systemd import status_line
    from qtasks_cli.ui.render import state_cell

    def view(**fields: Any) -> JobView:
        base: dict[str, Any] = {"name": "j", "schedule": "s", "enabled": True, "next_fire": None,
                                "running": 0, "pending": 0, "max_attempts": 1}  # fmt: skip
        return JobView(**{**base, **fields})

    assert state_cell(view(enabled=False, paused=True))[0] == "disabled"
    assert state_cell(view(paused=True))[0] == "paused"
    assert state_cell(view(waiting=1, pending=1, abandoned=1))[0] == "waiting for a slot"
    assert state_cell(view(pending=2, abandoned=1))[0] == "queued"
    assert state_cell(view(abandoned=1, enabled=False))[0] == "abandoned, still running"
    assert state_cell(view())[0] == "idle"
    from qtasks_cli.ui.render import _UNICODE, _next

    soon = T0 + timedelta(hours=1)
    assert _next(view(next_fire=soon, paused=True), T0, None, _UNICODE)[0] == _UNICODE.none
    assert _next(view(next_fire=soon), T0, None, _UNICODE)[0] != _UNICODE.none
    snapshot = Snapshot(
        now=T0, started_at=T0, jobs=(view(next_fire=T0 + timedelta(hours=1), paused=True),),
        running=1, queued=2, state="s", waiting=3, abandoned=1,
    )  # fmt: skip
    line = status_line(snapshot)
    assert "1 running, 3 waiting for a slot, 2 queued, 1 abandoned still running" in line
    assert "next:" not in line  # a paused job's next fire is no fire


def test_last_result_is_a_run_that_ran_not_one_cancelled_before_it_started(control) -> None:
    # `status` LAST: a queued request cancelled before any daemon took it never ran.
    store, state = control
    run_id = _enqueue(state, "report")
    assert store.request_cancel(run_id, "me", T0) == "cancelled"
    overview = store.overview(since=None)
    assert "report" not in overview.last, overview.last


def test_a_daemon_that_is_gone_leaves_the_listing_when_another_starts(control) -> None:
    # Every SIGKILLed daemon stayed in `status` for good; the next start tidies them away.
    import socket
    import subprocess

    from qtasks_cli.control import _withdraw_gone
    from qtasks_cli.store.base import local_key

    store, _ = control
    dead = subprocess.Popen(["true"])
    dead.wait(10)
    now = datetime.now(timezone.utc)
    for node, pid, seen in [("gone", dead.pid, now), ("me", os.getpid(), now)]:
        store.publish(
            DaemonInfo(
                node_id=node, host=socket.gethostname(), pid=pid, started=seen, last_seen=seen,
                published=seen, version="v", config="c", digest="d", every=2.0,
                local_key=local_key(),
            )
        )  # fmt: skip
    _withdraw_gone(store)
    assert [d.node_id for d in store.daemons()] == ["me"]
