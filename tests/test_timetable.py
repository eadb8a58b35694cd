"""timetable: the heap of next fires the loop sleeps until.

What the loop relies on: fires come off the heap in time order and each job's once; a job
rescheduled (reload, clock step) never fires at its old time; a reload keeps the next fire of
a job whose schedule did not change, and never backfills a changed one.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from qtasks_cli.models import JobSpec
from qtasks_cli.schedule import parse_schedule
from qtasks_cli.timetable import JobState, Timetable

NOW = datetime(2026, 3, 1, 12, 0, 30, tzinfo=timezone.utc)
UTC = ZoneInfo("UTC")


def spec(name: str, schedule: str = "* * * * *", **fields: object) -> JobSpec:
    return JobSpec(name=name, entrypoint="m:f", schedule=parse_schedule(schedule, UTC), **fields)  # type: ignore[arg-type]


def table(*specs: JobSpec) -> Timetable:
    jobs: dict[str, JobState] = {}
    timetable = Timetable(jobs)
    timetable.fill({s.name: s for s in specs})
    return timetable


@given(st.lists(st.integers(1, 120), min_size=1, max_size=12))
def test_fires_come_off_in_time_order_once_each(seconds: list[int]) -> None:
    timetable = table(*(spec(f"j{i}") for i in range(len(seconds))))
    for i, s in enumerate(seconds):
        timetable.push(f"j{i}", NOW + timedelta(seconds=s))
    taken = list(timetable.take_due(NOW + timedelta(seconds=max(seconds))))
    assert [when for _, when in taken] == sorted(when for _, when in taken)
    assert sorted(name for name, _ in taken) == sorted(f"j{i}" for i in range(len(seconds)))
    assert timetable.first() is None


def test_a_rescheduled_job_never_fires_at_its_old_time() -> None:
    timetable = table(spec("a"))
    timetable.push("a", NOW + timedelta(seconds=5))
    timetable.schedule("a", NOW + timedelta(minutes=10))  # a clock step, say
    assert timetable.jobs["a"].next_fire == datetime(2026, 3, 1, 12, 11, tzinfo=timezone.utc)
    assert list(timetable.take_due(NOW + timedelta(minutes=5))) == []
    assert timetable.first() == datetime(2026, 3, 1, 12, 11, tzinfo=timezone.utc)


def test_start_schedules_from_the_last_fire_only_under_the_same_schedule() -> None:
    job = spec("a")
    timetable = table(job)
    assert job.schedule is not None
    before = datetime(2026, 3, 1, 11, 0, tzinfo=timezone.utc)
    ahead = timetable.schedule_all({"a": job}, NOW, {"a": (before, job.schedule.key)})
    assert ahead == [] and timetable.jobs["a"].next_fire == before + timedelta(minutes=1)
    timetable.schedule_all({"a": job}, NOW, {"a": (before, "another schedule")})
    assert timetable.jobs["a"].next_fire == datetime(2026, 3, 1, 12, 1, tzinfo=timezone.utc)


def test_a_last_fire_in_the_future_is_said_and_scheduled_from_now() -> None:
    job = spec("a")
    assert job.schedule is not None
    timetable = table(job)
    future = NOW + timedelta(hours=2)
    ahead = timetable.schedule_all({"a": job}, NOW, {"a": (future, job.schedule.key)})
    assert ahead == [f"a ({future.isoformat()})"]
    assert timetable.jobs["a"].next_fire == datetime(2026, 3, 1, 12, 1, tzinfo=timezone.utc)


def test_a_reload_keeps_unchanged_times_and_reschedules_the_rest() -> None:
    old = {"same": spec("same"), "moved": spec("moved"), "gone": spec("gone")}
    timetable = table(*old.values())
    for name in old:
        timetable.push(name, NOW - timedelta(minutes=5))  # a next fire from before
    new = {
        "same": replace(old["same"], description="only the words changed"),
        "moved": spec("moved", "0 * * * *"),
        "added": spec("added"),
    }
    changes = timetable.apply(old, new, NOW)
    assert (changes.added, changes.removed) == (["added"], ["gone"])
    assert set(changes.changed) == {"same", "moved"}
    assert timetable.jobs["same"].next_fire == NOW - timedelta(minutes=5)  # kept
    assert timetable.jobs["moved"].next_fire == datetime(2026, 3, 1, 13, tzinfo=timezone.utc)
    assert timetable.jobs["added"].next_fire == datetime(2026, 3, 1, 12, 1, tzinfo=timezone.utc)
    assert "gone" not in timetable.jobs
    taken = dict(timetable.take_due(NOW))
    assert taken == {"same": NOW - timedelta(minutes=5)}  # no stale entry of "moved"


def test_a_disabled_job_has_no_next_fire() -> None:
    timetable = table(spec("off", enabled=False))
    timetable.schedule("off", NOW)
    assert timetable.jobs["off"].next_fire is None and timetable.first() is None


SCHEDULES = ["* * * * *", "*/5 * * * * *", "0 0 29 2 *", "30 2 * * *", "*/7 * * * * *", None]


@given(
    old=st.dictionaries(st.sampled_from("abcdef"), st.sampled_from(SCHEDULES), max_size=6),
    new=st.dictionaries(st.sampled_from("abcdef"), st.sampled_from(SCHEDULES), max_size=6),
    disabled=st.sets(st.sampled_from("abcdef")),
    worked_out=st.integers(0, 3600),
    applied=st.integers(0, 3600),
)
def test_first_fires_worked_out_ahead_change_nothing(
    old: dict[str, str | None],
    new: dict[str, str | None],
    disabled: set[str],
    worked_out: int,
    applied: int,
) -> None:
    """A reload's first fires are worked out off the loop (first_fires) at one time and applied
    at a later one: the heap ends up exactly as when the loop works them out at apply time,
    whatever passed in between (a first fire already gone is worked out again)."""
    from qtasks_cli.timetable import first_fires

    def specs(table: dict[str, str | None], enabled: bool = True) -> dict[str, JobSpec]:
        made = {}
        for name, text in table.items():
            schedule = parse_schedule(text, UTC) if text is not None else None
            on = enabled and name not in disabled
            made[name] = JobSpec(name=name, entrypoint="m:f", schedule=schedule, enabled=on)
        return made

    before, after = specs(old, enabled=True), specs(new)
    at = NOW + timedelta(seconds=worked_out)
    now = at + timedelta(seconds=applied)
    ahead = first_fires(before, after, at)
    plain, early = table(*before.values()), table(*before.values())
    plain.apply(before, after, now)
    early.apply(before, after, now, ahead)
    assert {n: s.next_fire for n, s in plain.jobs.items()} == {
        n: s.next_fire for n, s in early.jobs.items()
    }
    assert list(plain.take_due(now + timedelta(days=400))) == list(
        early.take_due(now + timedelta(days=400))
    )


def test_reloads_that_reschedule_every_job_leave_no_heap_behind() -> None:
    """Hostile tester: each reload that rescheduled 10,000 jobs due next year left their old
    heap entries (3 MB a reload, without end). The heap is rebuilt once stale entries
    outnumber the jobs, and the due fires stay right."""
    from qtasks_cli.timetable import STALE_SLACK

    now = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
    count = 3000
    first = {f"j{i}": spec(f"j{i}", "0 0 1 1 *") for i in range(count)}
    second = {f"j{i}": spec(f"j{i}", "0 0 2 1 *") for i in range(count)}
    first["tick"] = second["tick"] = spec("tick", "* * * * *")
    table = Timetable({})
    table.fill(first)
    table.schedule_all(first, now, {})
    current = first
    for _ in range(12):
        following = second if current is first else first
        table.apply(current, following, now)
        current = following
        assert len(table._heap) <= 2 * len(table.jobs) + STALE_SLACK
    assert table.first() == now + timedelta(minutes=1)
    due = list(table.take_due(now + timedelta(minutes=1)))
    assert due == [("tick", now + timedelta(minutes=1))]
    day = 1 if current is first else 2
    assert table.jobs["j7"].next_fire == datetime(2027, 1, day, tzinfo=timezone.utc)
