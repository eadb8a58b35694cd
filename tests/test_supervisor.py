"""The supervisor's decisions under a controlled clock, against the real SQLite store."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from reliability import virtual

from qtasks_cli import cancels
from qtasks_cli.events import Event, EventKind
from qtasks_cli.models import Config, RunResult, RunStatus, TriggerKind
from qtasks_cli.store.sqlite import SqliteStore
from qtasks_cli.supervisor import Supervisor

T0 = datetime(2026, 11, 28, 12, 0, 0, tzinfo=timezone.utc)
GATES: dict[str, asyncio.Event] = {}
CALLS: list[tuple[str, Any]] = []


async def quick(tag: str = "") -> str:
    CALLS.append(("quick", tag))
    return tag


async def gated(name: str = "gate") -> None:
    CALLS.append(("gated", name))
    await GATES.setdefault(name, asyncio.Event()).wait()


def blocking_async_misuse() -> None:  # referenced in docs of the suite, not run here
    pass


def make_config(tmp_path: Path, jobs: str, settings: str = "") -> Config:
    return virtual.make_config(tmp_path, jobs, settings)


async def supervise(
    config: Config,
    store_path: Path,
    start: datetime,
    until: datetime,
    on_tick: Callable[[datetime], None] | None = None,
    before: Callable[[Supervisor], Any] | None = None,
) -> tuple[list[Event], list[RunResult]]:
    return await virtual.supervise(config, store_path, start, until, on_step=on_tick, before=before)


def by_job(rows: list[RunResult], job: str) -> list[RunResult]:
    return [r for r in rows if r.job == job]


@pytest.fixture(autouse=True)
def _reset() -> None:
    GATES.clear()
    CALLS.clear()


JOB = "entrypoint: test_supervisor:quick"


def acted(
    config: Config,
    tmp_path: Path,
    acts: list[tuple[float, Callable[[Supervisor], Any]]],
    until: float,
) -> list[RunResult]:
    """Supervise ``config`` from 0.5 s to ``until`` seconds after T0, doing each act (given
    the supervisor) once the virtual clock reaches its second; every act must have been
    done. The rows."""
    holder: list[Supervisor] = []
    done: set[int] = set()

    async def grab(supervisor: Supervisor) -> None:
        holder.append(supervisor)

    def steps(now: datetime) -> None:
        for index, (at, act) in enumerate(acts):
            if now >= T0 + timedelta(seconds=at) and index not in done:
                done.add(index)
                act(holder[0])

    _, rows = asyncio.run(
        supervise(
            config,
            tmp_path / "s.db",
            T0 + timedelta(milliseconds=500),
            T0 + timedelta(seconds=until),
            on_tick=steps,
            before=grab,
        )
    )
    assert len(done) == len(acts), done
    return rows


def release_gate(_: Supervisor) -> None:
    GATES.setdefault("gate", asyncio.Event()).set()


def test_every_second_fires_each_second_once_and_never_drifts(tmp_path: Path) -> None:
    config = make_config(tmp_path, f"tick:\n  {JOB}\n  schedule: '* * * * * *'\n")
    _, rows = asyncio.run(
        supervise(
            config, tmp_path / "s.db", T0 + timedelta(milliseconds=300), T0 + timedelta(seconds=10)
        )
    )
    ticks = by_job(rows, "tick")
    assert [r.scheduled for r in ticks] == [T0 + timedelta(seconds=s) for s in range(1, 11)]
    assert {r.status for r in ticks} == {RunStatus.SUCCEEDED}
    assert {r.trigger for r in ticks} == {TriggerKind.SCHEDULE}


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("latest", {10: ("catch_up", "succeeded"), 5: ("schedule", "missed")}),
        ("all", {5: ("catch_up", "succeeded"), 10: ("catch_up", "succeeded")}),
        ("none", {5: ("schedule", "missed"), 10: ("schedule", "missed")}),
    ],
)
def test_downtime_goes_through_catch_up(
    tmp_path: Path, policy: str, expected: dict[int, tuple[str, str]]
) -> None:
    config = make_config(
        tmp_path, f"five:\n  {JOB}\n  schedule: '*/5 * * * * *'\n  catch_up: {policy}\n"
    )
    db = tmp_path / "s.db"
    # First life: fires at :00 only (starts just before it).
    asyncio.run(supervise(config, db, T0 - timedelta(milliseconds=500), T0 + timedelta(seconds=1)))
    # Down until 12:00:12.5, then a second life.
    _, rows = asyncio.run(
        supervise(config, db, T0 + timedelta(seconds=12.5), T0 + timedelta(seconds=13))
    )
    got = {
        int((r.scheduled - T0).total_seconds()): (str(r.trigger), str(r.status))
        for r in by_job(rows, "five")
    }
    assert got == {0: ("schedule", "succeeded"), **expected}


def test_misfire_grace_limits_catch_up(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        f"five:\n  {JOB}\n  schedule: '*/5 * * * * *'\n  catch_up: all\n  misfire_grace: 6s\n",
    )
    db = tmp_path / "s.db"
    asyncio.run(supervise(config, db, T0 - timedelta(milliseconds=500), T0 + timedelta(seconds=1)))
    _, rows = asyncio.run(
        supervise(config, db, T0 + timedelta(seconds=12.5), T0 + timedelta(seconds=13))
    )
    got = {int((r.scheduled - T0).total_seconds()): str(r.status) for r in by_job(rows, "five")}
    assert got == {0: "succeeded", 5: "missed", 10: "succeeded"}


def test_max_catch_up_caps_all(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        f"tick:\n  {JOB}\n  schedule: '* * * * * *'\n  catch_up: all\n",
        settings="max_catch_up: 3\n",
    )
    db = tmp_path / "s.db"
    asyncio.run(
        supervise(config, db, T0 - timedelta(milliseconds=500), T0 + timedelta(milliseconds=500))
    )
    _, rows = asyncio.run(
        supervise(config, db, T0 + timedelta(seconds=10.5), T0 + timedelta(seconds=10.9))
    )
    ticks = by_job(rows, "tick")
    runs = [
        int((r.scheduled - T0).total_seconds()) for r in ticks if r.status is RunStatus.SUCCEEDED
    ]
    missed = [
        int((r.scheduled - T0).total_seconds()) for r in ticks if r.status is RunStatus.MISSED
    ]
    assert runs == [0, 7, 8, 9, 10]  # :10 is on time; the three newest missed ones caught up
    assert missed == [1, 2, 3, 4, 5, 6]


def test_fresh_state_backfills_nothing(tmp_path: Path) -> None:
    config = make_config(tmp_path, f"daily:\n  {JOB}\n  schedule: '0 0 * * *'\n  catch_up: all\n")
    _, rows = asyncio.run(supervise(config, tmp_path / "s.db", T0, T0 + timedelta(seconds=5)))
    assert rows == []


def test_changed_schedule_never_backfills(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    old = make_config(tmp_path, f"job:\n  {JOB}\n  schedule: '*/5 * * * * *'\n  catch_up: all\n")
    asyncio.run(supervise(old, db, T0 - timedelta(milliseconds=500), T0 + timedelta(seconds=1)))
    new = make_config(tmp_path, f"job:\n  {JOB}\n  schedule: '*/2 * * * * *'\n  catch_up: all\n")
    _, rows = asyncio.run(
        supervise(new, db, T0 + timedelta(seconds=9.5), T0 + timedelta(seconds=12))
    )
    got = [int((r.scheduled - T0).total_seconds()) for r in by_job(rows, "job")]
    assert got == [0, 10, 12]  # nothing between 0 and 9.5 from the new schedule


def test_late_wake_is_caught_up_without_doubles(tmp_path: Path) -> None:
    config = make_config(tmp_path, f"tick:\n  {JOB}\n  schedule: '* * * * * *'\n")
    jumped = False

    def block_once(now: datetime) -> None:
        nonlocal jumped
        if not jumped and now >= T0 + timedelta(seconds=3):
            jumped = True
            clock_holder[0].now = now + timedelta(seconds=5.2)  # the loop was blocked 5.2 s

    clock_holder: list[Any] = []

    async def grab(supervisor: Supervisor) -> None:
        clock_holder.append(supervisor.clock)

    _, rows = asyncio.run(
        supervise(
            config,
            tmp_path / "s.db",
            T0 + timedelta(milliseconds=500),
            T0 + timedelta(seconds=12),
            on_tick=block_once,
            before=grab,
        )
    )
    ticks = by_job(rows, "tick")
    seconds = [int((r.scheduled - T0).total_seconds()) for r in ticks]
    assert seconds == list(range(1, 13))  # every second accounted for, none twice
    statuses = {int((r.scheduled - T0).total_seconds()): r.status for r in ticks}
    assert statuses[8] is RunStatus.SUCCEEDED  # on time when the loop woke up at 8.2
    assert {statuses[s] for s in (3, 4, 5, 6, 7)} == {RunStatus.MISSED}
    assert statuses[2] is RunStatus.SUCCEEDED and statuses[9] is RunStatus.SUCCEEDED


@pytest.mark.parametrize(
    ("overlap", "ran", "skipped"), [("skip", 1, 3), ("queue", 2, 2), ("allow", 4, 0)]
)
def test_overlap_policies(tmp_path: Path, overlap: str, ran: int, skipped: int) -> None:
    config = make_config(
        tmp_path,
        "slow:\n  entrypoint: test_supervisor:gated\n"
        f"  schedule: '* * * * * *'\n  overlap: {overlap}\n",
    )

    def release_at_end(now: datetime) -> None:
        if now >= T0 + timedelta(seconds=4):
            GATES.setdefault("gate", asyncio.Event()).set()

    _, rows = asyncio.run(
        supervise(
            config,
            tmp_path / "s.db",
            T0 + timedelta(milliseconds=500),
            T0 + timedelta(seconds=4.5),
            on_tick=release_at_end,
        )
    )
    slow = by_job(rows, "slow")
    assert len([c for c in CALLS if c[0] == "gated"]) == ran
    assert len([r for r in slow if r.status is RunStatus.SKIPPED]) == skipped
    assert len({r.scheduled for r in slow}) == len(slow) == 4


def test_max_concurrent_runs_wait_in_order(tmp_path: Path) -> None:
    jobs = "".join(
        f"j{i}:\n  entrypoint: test_supervisor:quick\n  args: [j{i}]\n  schedule: '* * * * * *'\n"
        for i in range(5)
    )
    config = make_config(tmp_path, jobs, settings="max_concurrent: 1\n")
    _, rows = asyncio.run(
        supervise(
            config, tmp_path / "s.db", T0 + timedelta(milliseconds=500), T0 + timedelta(seconds=1)
        )
    )
    assert [c[1] for c in CALLS] == ["j0", "j1", "j2", "j3", "j4"]
    assert len([r for r in rows if r.status is RunStatus.SUCCEEDED]) == 5


def test_startup_schedule_fires_once_per_start(tmp_path: Path) -> None:
    config = make_config(tmp_path, f"boot:\n  {JOB}\n  schedule: '@startup'\n")
    db = tmp_path / "s.db"
    asyncio.run(supervise(config, db, T0, T0 + timedelta(seconds=3)))
    _, rows = asyncio.run(
        supervise(config, db, T0 + timedelta(seconds=10), T0 + timedelta(seconds=13))
    )
    assert [(r.trigger, r.status) for r in rows] == [(TriggerKind.STARTUP, RunStatus.SUCCEEDED)] * 2


def test_queued_requests_run_once_with_their_arguments(tmp_path: Path) -> None:
    config = make_config(tmp_path, f"notify:\n  {JOB}\n")
    db = tmp_path / "s.db"

    async def enqueue(supervisor: Supervisor) -> None:
        for i in range(3):
            await supervisor.store.enqueue("notify", [f"order-{i}"], {}, T0)

    _, rows = asyncio.run(supervise(config, db, T0, T0 + timedelta(seconds=3), before=enqueue))
    assert sorted(c[1] for c in CALLS) == ["order-0", "order-1", "order-2"]
    assert {(r.trigger, r.status) for r in rows} == {(TriggerKind.QUEUED, RunStatus.SUCCEEDED)}
    assert len(rows) == 3


def test_interrupted_runs_are_reported_and_optionally_rerun(tmp_path: Path) -> None:
    config = make_config(tmp_path, f"a:\n  {JOB}\n  retry_interrupted: true\nb:\n  {JOB}\n")
    db = tmp_path / "s.db"

    async def crash_leftovers() -> None:
        store = SqliteStore(db)
        await store.open()
        from qtasks_cli.store.base import Fire

        for job in ("a", "b"):
            fire = Fire(
                job=job,
                scheduled=T0 - timedelta(minutes=1),
                trigger=TriggerKind.SCHEDULE,
                run_id=f"dead-{job}",
                schedule_key="",
            )
            await store.claim([fire])
            await store.start(fire.run_id, T0 - timedelta(minutes=1))
        await store.close()

    asyncio.run(crash_leftovers())
    events, rows = asyncio.run(supervise(config, db, T0, T0 + timedelta(seconds=2)))
    interrupted = [e.job for e in events if e.kind is EventKind.INTERRUPTED]
    assert sorted(interrupted) == ["a", "b"]
    assert {r.run_id: r.status for r in rows if r.run_id.startswith("dead")} == {
        "dead-a": RunStatus.INTERRUPTED,
        "dead-b": RunStatus.INTERRUPTED,
    }
    reruns = [r for r in rows if not r.run_id.startswith("dead")]
    assert [(r.job, r.status) for r in reruns] == [("a", RunStatus.SUCCEEDED)]


def test_reload_keeps_unchanged_jobs_times_and_adds_new_ones(tmp_path: Path) -> None:
    first = make_config(
        tmp_path,
        f"keep:\n  {JOB}\n  schedule: '* * * * * *'\ngone:\n  {JOB}\n  schedule: '* * * * * *'\n",
    )
    second = make_config(
        tmp_path,
        f"keep:\n  {JOB}\n  schedule: '* * * * * *'\nnew:\n  {JOB}\n  schedule: '* * * * * *'\n",
    )
    holder: list[Supervisor] = []

    async def grab(supervisor: Supervisor) -> None:
        holder.append(supervisor)

    def swap(now: datetime) -> None:
        if now == T0 + timedelta(seconds=3):
            holder[0].apply_config(second)

    _, rows = asyncio.run(
        supervise(
            first,
            tmp_path / "s.db",
            T0 + timedelta(milliseconds=500),
            T0 + timedelta(seconds=6),
            on_tick=swap,
            before=grab,
        )
    )
    secs = {
        job: [int((r.scheduled - T0).total_seconds()) for r in by_job(rows, job)]
        for job in ("keep", "gone", "new")
    }
    assert secs["keep"] == [1, 2, 3, 4, 5, 6]
    assert secs["gone"] == [1, 2]  # removed when the clock reached :03
    assert secs["new"] == [4, 5, 6]


def test_history_is_pruned_to_keep_runs_in_the_background(tmp_path: Path) -> None:
    jobs = f"tick:\n  {JOB}\n  schedule: '* * * * * *'\n"
    db = tmp_path / "s.db"
    asyncio.run(
        supervise(
            make_config(tmp_path, jobs),
            db,
            T0 + timedelta(milliseconds=500),
            T0 + timedelta(seconds=10),
        )
    )
    pruned = make_config(tmp_path, jobs, settings="keep_runs: 3\n")
    # The next life prunes at start, then hourly: run it past one hour boundary.
    _, rows = asyncio.run(
        supervise(pruned, db, T0 + timedelta(seconds=10.5), T0 + timedelta(seconds=12))
    )
    assert len(rows) <= 5  # 3 kept + at most the runs of the new life before the prune ended
    assert [int((r.scheduled - T0).total_seconds()) for r in rows][-2:] == [11, 12]


def test_fires_wait_for_a_refusing_store_and_never_run_unclaimed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Late but once: while the store refuses claims nothing runs; when it answers, the
    fires missed meanwhile go through catch_up (latest: one catch-up run, others missed)."""
    from qtasks_cli.errors import StoreError

    refusing = {"on": True}
    original = SqliteStore.claim
    claimed_while_refusing: list[str] = []

    async def flaky_claim(self: SqliteStore, fires: Any) -> list[bool]:
        if refusing["on"]:
            claimed_while_refusing.extend(f.job for f in fires)
            raise StoreError("database is locked", transient=True)
        return await original(self, fires)

    monkeypatch.setattr(SqliteStore, "claim", flaky_claim)
    calls_at_recovery: list[int] = []

    def recover(now: datetime) -> None:
        if refusing["on"] and now >= T0 + timedelta(seconds=3.6):
            calls_at_recovery.append(len(CALLS))
            refusing["on"] = False

    config = make_config(tmp_path, f"tick:\n  {JOB}\n  schedule: '* * * * * *'\n")
    _, rows = asyncio.run(
        supervise(
            config,
            tmp_path / "s.db",
            T0 + timedelta(milliseconds=500),
            T0 + timedelta(seconds=8),
            on_tick=recover,
        )
    )
    assert claimed_while_refusing  # the store was asked, and refused
    assert calls_at_recovery == [0]  # nothing ran while no claim was written
    ticks = by_job(rows, "tick")
    seconds = [int((r.scheduled - T0).total_seconds()) for r in ticks]
    assert seconds == sorted(set(seconds))  # no (job, time) twice
    status = {int((r.scheduled - T0).total_seconds()): r.status for r in ticks}
    ran = [s for s, st in status.items() if st is RunStatus.SUCCEEDED]
    assert len([c for c in CALLS if c[0] == "quick"]) == len(ran)  # every body has its row
    assert {status[s] for s in (5, 6, 7, 8)} == {RunStatus.SUCCEEDED}
    assert RunStatus.MISSED in {status[s] for s in (1, 2)}  # late fires went through catch_up


HANG = __import__("threading").Event()


def hang() -> None:
    HANG.wait(30)


def test_a_hung_thread_holds_one_slot_of_its_own_job_not_every_slot(tmp_path: Path) -> None:
    jobs = (
        f"tick:\n  {JOB}\n  schedule: '* * * * * *'\n"
        "hung:\n  entrypoint: test_supervisor:hang\n  schedule: '* * * * * *'\n"
        "  timeout: 50ms\n"
    )
    config = make_config(tmp_path, jobs, settings="max_concurrent: 2\n")
    HANG.clear()
    try:
        _, rows = asyncio.run(
            supervise(
                config,
                tmp_path / "s.db",
                T0 + timedelta(milliseconds=500),
                T0 + timedelta(seconds=6),
            )
        )
    finally:
        HANG.set()
    assert {r.status for r in by_job(rows, "tick")} == {RunStatus.SUCCEEDED}
    assert len(by_job(rows, "tick")) == 6
    hung = by_job(rows, "hung")
    assert hung[0].status is RunStatus.TIMED_OUT
    assert {r.status for r in hung[1:]} == {RunStatus.SKIPPED}
    assert all("thread is still running after its timeout" in (r.error or "") for r in hung[1:])


def test_a_job_removed_and_added_back_while_it_runs_still_counts_its_run(tmp_path: Path) -> None:
    """Invariant: under ``overlap: skip`` no two bodies of one job run at once, and a job is
    never skipped once nothing of it runs. Its run in progress survives a reload that removes
    the job and one that adds it back (the counts are kept per job name, occupancy.py)."""
    slow = "slow:\n  entrypoint: test_supervisor:gated\n  schedule: '* * * * * *'\n"
    slow += "  overlap: skip\n"
    other = f"other:\n  {JOB}\n  schedule: '0 0 0 1 1 *'\n"
    with_slow, without = make_config(tmp_path, slow + other), make_config(tmp_path, other)
    holder: list[Supervisor] = []
    done: set[str] = set()

    async def grab(supervisor: Supervisor) -> None:
        holder.append(supervisor)

    def steps(now: datetime) -> None:
        for at, what, act in (
            (1.5, "remove", lambda: holder[0].apply_config(without)),
            (2.5, "add back", lambda: holder[0].apply_config(with_slow)),
            (4.5, "release", lambda: GATES.setdefault("gate", asyncio.Event()).set()),
        ):
            if now >= T0 + timedelta(seconds=at) and what not in done:
                done.add(what)
                act()

    _, rows = asyncio.run(
        supervise(
            with_slow,
            tmp_path / "s.db",
            T0 + timedelta(milliseconds=500),
            T0 + timedelta(seconds=7),
            on_tick=steps,
            before=grab,
        )
    )
    assert done == {"remove", "add back", "release"}
    by_second = {int((r.scheduled - T0).total_seconds()): r for r in by_job(rows, "slow")}
    started = [c for c in CALLS if c[0] == "gated"]
    # The body of :01 ran alone until the release; the fires of :03 and :04 saw it running.
    assert by_second[1].status is RunStatus.SUCCEEDED
    for second in (3, 4):
        assert by_second[second].status is RunStatus.SKIPPED, by_second[second]
        assert "previous run still running" in (by_second[second].error or "")
    # Once it ended, the job runs again: its count came back to zero, not below.
    for second in (5, 6, 7):
        assert by_second[second].status is RunStatus.SUCCEEDED, by_second[second]
    assert len(started) == 4


def _reload_while_queued(tmp_path: Path, second: str) -> tuple[list[RunResult], int]:
    """``slow`` (overlap: queue) holds its first run until 4.5 s; at 2.5 s, while the fire of
    :02 waits behind it, the file is reloaded with ``second`` jobs. Its rows, and how many
    bodies had started before the release."""
    slow = "slow:\n  entrypoint: test_supervisor:gated\n  schedule: '* * * * * *'\n"
    other = f"other:\n  {JOB}\n  schedule: '0 0 0 1 1 *'\n"
    first = make_config(tmp_path, slow + "  overlap: queue\n" + other)
    then = make_config(tmp_path, second.format(slow=slow) + other)
    holder: list[Supervisor] = []
    done: set[str] = set()
    before: list[int] = []

    async def grab(supervisor: Supervisor) -> None:
        holder.append(supervisor)

    def release() -> None:
        before.append(len([c for c in CALLS if c[0] == "gated"]))
        GATES.setdefault("gate", asyncio.Event()).set()

    def steps(now: datetime) -> None:
        for at, what, act in (
            (2.5, "reload", lambda: holder[0].apply_config(then)),
            (4.5, "release", release),
        ):
            if now >= T0 + timedelta(seconds=at) and what not in done:
                done.add(what)
                act()

    _, rows = asyncio.run(
        supervise(
            first,
            tmp_path / "s.db",
            T0 + timedelta(milliseconds=500),
            T0 + timedelta(seconds=6),
            on_tick=steps,
            before=grab,
        )
    )
    assert done == {"reload", "release"}
    return by_job(rows, "slow"), before[0]


def test_a_run_queued_behind_a_job_a_reload_removes_is_recorded_cancelled(
    tmp_path: Path,
) -> None:
    """Invariant: nothing the daemon said it would run is lost. A fire queued behind its job's
    run when a reload removes the job is recorded ``cancelled`` (removed by a reload), never
    left ``claimed``."""
    rows, _ = _reload_while_queued(tmp_path, "")
    queued = [r for r in rows if int((r.scheduled - T0).total_seconds()) == 2]
    assert [(r.status, r.error) for r in queued] == [(RunStatus.CANCELLED, cancels.REMOVED)]
    assert not [r for r in rows if r.status in (RunStatus.CLAIMED, RunStatus.RUNNING)], rows


def test_a_run_queued_behind_its_job_starts_at_once_when_a_reload_makes_it_allow(
    tmp_path: Path,
) -> None:
    """A reload that changes ``overlap: queue`` to ``allow`` lets the queued run start: it no
    longer waits behind anything (before, it waited for ever while later fires ran)."""
    rows, before_release = _reload_while_queued(tmp_path, "{slow}  overlap: allow\n")
    by_second = {int((r.scheduled - T0).total_seconds()): r for r in rows}
    assert by_second[2].status is RunStatus.SUCCEEDED, by_second[2]
    # The fires of :01 to :04 all had their bodies going before the release at 4.5 s.
    assert before_release == 4, (before_release, by_second)


def test_a_run_waiting_for_a_slot_of_a_job_a_reload_removes_never_starts(
    tmp_path: Path,
) -> None:
    """Invariant: a removed job runs no more. A run of it still waiting for a max_concurrent
    slot when a reload removes the job is recorded ``cancelled`` (removed by a reload) and
    does not start when the slot comes free (before, it ran after its job was gone)."""
    hold = "hold:\n  entrypoint: test_supervisor:gated\n  schedule: '* * * * * *'\n"
    waits = f"w:\n  {JOB}\n  args: [w]\n  schedule: '* * * * * *'\n"
    first = make_config(tmp_path, hold + waits, settings="max_concurrent: 1\n")
    then = make_config(tmp_path, hold, settings="max_concurrent: 1\n")
    rows = acted(
        first, tmp_path, [(2.5, lambda sup: sup.apply_config(then)), (4.5, release_gate)], 6
    )
    assert ("quick", "w") not in CALLS, CALLS
    ran = [r for r in by_job(rows, "w") if r.status is not RunStatus.SKIPPED]
    assert [(r.status, r.error, r.started) for r in ran] == [
        (RunStatus.CANCELLED, cancels.REMOVED, None)
    ], ran


class _SlowFinish:
    """A store whose ``finish`` of job ``slow``'s runs waits until ``released``: the end of a
    run being recorded (its output redacted, its row written) takes as long as it likes."""

    def __init__(self, inner: SqliteStore) -> None:
        self._inner = inner
        self.released = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def finish(self, result: RunResult) -> None:
        if result.job == "slow":
            await self.released.wait()
        await self._inner.finish(result)


def test_a_run_whose_end_is_still_being_recorded_makes_no_fire_skip(tmp_path: Path) -> None:
    """Invariant: a fire is skipped only for a run that still runs. A run whose body ended
    is over for the overlap rule while its end is being recorded (before, every fire until
    the row was written was skipped "previous run still running", although the history
    said that run had ended before it)."""
    config = make_config(tmp_path, f"slow:\n  {JOB}\n  args: [s]\n  schedule: '* * * * * *'\n")
    stores: list[_SlowFinish] = []

    def wrap(inner: SqliteStore) -> Any:
        stores.append(_SlowFinish(inner))
        return stores[0]

    def steps(now: datetime) -> None:
        if now >= T0 + timedelta(seconds=4.5):
            stores[0].released.set()

    _, rows = asyncio.run(
        virtual.supervise(
            config,
            tmp_path / "s.db",
            T0 + timedelta(milliseconds=500),
            T0 + timedelta(seconds=6),
            wrap=wrap,
            on_step=steps,
        )
    )
    assert [r.status for r in rows] == [RunStatus.SUCCEEDED] * len(rows), virtual.show(rows)
    assert len(rows) >= 5, virtual.show(rows)


def test_a_reload_that_raises_max_concurrent_starts_the_runs_waiting_for_a_slot(
    tmp_path: Path,
) -> None:
    """A reload's settings apply: raising ``max_concurrent`` hands the new slots to the runs
    waiting for one at once (before, the reload said "0 changed" and they kept waiting), and
    the reload says what changed."""
    jobs = (
        "hold:\n  entrypoint: test_supervisor:gated\n  schedule: '* * * * * *'\n"
        f"w:\n  {JOB}\n  args: [w]\n  schedule: '* * * * * *'\n"
    )
    first = make_config(tmp_path, jobs, settings="max_concurrent: 1\n")
    then = make_config(tmp_path, jobs, settings="max_concurrent: 2\n")
    holder: list[Supervisor] = []
    seen: dict[str, int] = {}

    async def grab(supervisor: Supervisor) -> None:
        holder.append(supervisor)

    def steps(now: datetime) -> None:
        if now >= T0 + timedelta(seconds=2.5) and "reload" not in seen:
            seen["reload"] = CALLS.count(("quick", "w"))
            holder[0].apply_config(then)
        if now >= T0 + timedelta(seconds=3.5) and "after" not in seen:
            seen["after"] = CALLS.count(("quick", "w"))

    events, _ = asyncio.run(
        supervise(
            first,
            tmp_path / "s.db",
            T0 + timedelta(milliseconds=500),
            T0 + timedelta(seconds=4),
            on_tick=steps,
            before=grab,
        )
    )
    assert seen["reload"] == 0 and seen["after"] >= 1, seen
    said = [e.message for e in events if e.kind is EventKind.RELOADED]
    assert said and said[0].endswith("; settings.max_concurrent 1 -> 2"), said


@pytest.mark.parametrize(
    "second",
    ["  enabled: false\n", "  schedule: '0 0 0 1 1 *'\n"],
    ids=["disabled", "rescheduled"],
)
def test_a_reload_gives_back_the_claims_its_new_definition_no_longer_makes(
    tmp_path: Path, second: str
) -> None:
    """Invariant: a reload's changes take effect for the very next instant. A claim written
    ahead (0.5 s) for a job the reload then disables or moves to other times is given back,
    not run under the old definition (before, the fire claimed before the reload ran)."""
    tick = f"t:\n  {JOB}\n  args: [t]\n  schedule: '* * * * * *'\n"
    first = make_config(tmp_path, tick)
    then = make_config(
        tmp_path,
        tick.replace("  schedule: '* * * * * *'\n", "") + second
        if "schedule" in second
        else tick + second,
    )
    holder: list[Supervisor] = []
    calls_at_reload: list[int] = []

    async def grab(supervisor: Supervisor) -> None:
        holder.append(supervisor)

    def steps(now: datetime) -> None:
        if now >= T0 + timedelta(seconds=2.8) and not calls_at_reload:
            assert holder[0].ledger.next_instant() == T0 + timedelta(seconds=3)  # held
            calls_at_reload.append(len(CALLS))
            holder[0].apply_config(then)

    _, rows = asyncio.run(
        supervise(
            first,
            tmp_path / "s.db",
            T0 + timedelta(milliseconds=500),
            T0 + timedelta(seconds=5),
            on_tick=steps,
            before=grab,
        )
    )
    assert calls_at_reload == [2], calls_at_reload  # :01 and :02 ran before it
    assert len(CALLS) == 2, CALLS
    assert [int((r.scheduled - T0).total_seconds()) for r in rows] == [1, 2], virtual.show(rows)


def test_a_reload_that_changes_only_the_arguments_keeps_the_claim_and_its_fire(
    tmp_path: Path,
) -> None:
    """The other side: a claim the new definition still makes stands, and the fire runs
    with the new arguments (no instant is lost to a reload)."""
    tick = f"t:\n  {JOB}\n  args: [old]\n  schedule: '* * * * * *'\n"
    first = make_config(tmp_path, tick)
    then = make_config(tmp_path, tick.replace("[old]", "[new]"))
    rows = acted(first, tmp_path, [(2.8, lambda sup: sup.apply_config(then))], 4)
    assert [c[1] for c in CALLS] == ["old", "old", "new", "new"], CALLS
    assert [int((r.scheduled - T0).total_seconds()) for r in rows] == [1, 2, 3, 4]


class _SlowBegin:
    """A store whose ``begin`` (a handed-over request's durable running mark) waits until
    ``released``."""

    def __init__(self, inner: SqliteStore) -> None:
        self._inner = inner
        self.released = asyncio.Event()
        self.begun = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def begin(self, run_id: str, started: datetime) -> bool:
        self.begun.set()
        await self.released.wait()
        return bool(await self._inner.begin(run_id, started))


def test_a_request_whose_begin_is_written_as_the_stop_begins_never_starts(
    tmp_path: Path,
) -> None:
    """Invariant: nothing starts once the stop began. A handed-over request whose durable
    begin was being written when SIGTERM came (a PostgreSQL round trip) is recorded
    ``cancelled at shutdown`` and its body never runs (before, it started in the grace)."""
    config = make_config(tmp_path, f"notify:\n  {JOB}\n  args: [n]\n")
    stores: list[_SlowBegin] = []

    def wrap(inner: SqliteStore) -> Any:
        stores.append(_SlowBegin(inner))
        return stores[0]

    async def enqueue_then_stop(supervisor: Supervisor) -> None:
        await stores[0]._inner.enqueue("notify", [], {}, T0)

        async def stop_while_beginning() -> None:
            await stores[0].begun.wait()
            supervisor.request_stop()
            await asyncio.sleep(0)
            stores[0].released.set()

        asyncio.get_running_loop().create_task(stop_while_beginning())

    _, rows = asyncio.run(
        virtual.supervise(
            config,
            tmp_path / "s.db",
            T0,
            T0 + timedelta(seconds=3),
            wrap=wrap,
            before=enqueue_then_stop,
        )
    )
    assert CALLS == [], CALLS
    assert [(r.status, r.error) for r in rows] == [(RunStatus.CANCELLED, cancels.AT_SHUTDOWN)]
