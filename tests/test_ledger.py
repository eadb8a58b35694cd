"""Pure parts of the ledger and the firing policy: recovery's conclusions and bounded gaps."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from qtasks_cli.models import CatchUp
from qtasks_cli.policy import EXACT_LIMIT, due_fires, keep_last, split_due
from qtasks_cli.recovery import IN_PROGRESS, MAY_HAVE_RUN, Unfinished, conclude

rows = st.lists(
    st.builds(
        Unfinished,
        run_id=st.uuids().map(str),
        job=st.sampled_from(["a", "b", "c"]),
        status=st.sampled_from(["claimed", "running"]),
        trigger=st.sampled_from(["schedule", "catch_up", "queued", "rerun", "manual", "startup"]),
        args_json=st.none() | st.just("[1]"),
        kwargs_json=st.none() | st.just('{"k": "\\\\\'\\""}'),
        note=st.sampled_from(["", "noticed at t"]),
        still_running=st.booleans(),
    ),
    max_size=30,
    unique_by=lambda r: r.run_id,
)


@given(rows, st.sets(st.sampled_from(["a", "b", "c"])))
def test_recovery_decides_each_row_once_and_never_requeues_what_may_have_run(
    unfinished: list[Unfinished], rerun_jobs: set[str]
) -> None:
    counter = itertools.count()
    done = conclude(unfinished, rerun_jobs, lambda: f"new-{next(counter)}")
    interrupted = dict(done.interrupt)
    for row in unfinished:
        if row.still_running and row.status == "running":
            assert row.run_id not in interrupted and row.run_id not in done.requeue
        elif row.status == "claimed" and row.trigger in ("queued", "rerun"):
            # taken, never begun: certainly not run, so offered again, never interrupted
            assert row.run_id in done.requeue and row.run_id not in interrupted
        else:
            # may have run: interrupted, never requeued (that would run it twice)
            assert row.run_id not in done.requeue
            error = interrupted[row.run_id]
            assert error.startswith(IN_PROGRESS if row.status == "running" else MAY_HAVE_RUN)
            # re-run once: a re-run that is interrupted in turn is not re-run again
            assert ("re-run as" in error) == (row.job in rerun_jobs and row.trigger != "rerun")
    # one re-run per interrupted run of a re-run job, with that run's own arguments
    by_id = {r.run_id: r for r in unfinished}
    expected = sorted(
        (by_id[i].job, by_id[i].args_json or "", by_id[i].kwargs_json or "")
        for i in interrupted
        if by_id[i].job in rerun_jobs and by_id[i].trigger != "rerun"
    )
    assert sorted((j, a or "", k or "") for _, j, a, k in done.reruns) == expected


T0 = datetime(2026, 11, 30, 0, 0, tzinfo=timezone.utc)


def every(seconds: int):  # type: ignore[no-untyped-def]
    def next_after(t: datetime) -> datetime:
        whole = (t - T0) // timedelta(seconds=seconds) + 1
        return T0 + whole * timedelta(seconds=seconds)

    return next_after


@given(st.integers(1, 200_000), st.integers(1, 3), st.integers(1, 150))
def test_due_fires_are_bounded_and_keep_the_newest(gap_seconds: int, step: int, keep: int) -> None:
    calls = 0
    inner = every(step)

    def counted(t: datetime) -> datetime:
        nonlocal calls
        calls += 1
        return inner(t)

    now = T0 + timedelta(seconds=gap_seconds, milliseconds=500)
    listed, gap = due_fires(counted, T0, now, keep_last=keep)
    assert calls < 40 * (EXACT_LIMIT + 4 * keep)  # bounded, whatever the gap
    assert listed == sorted(set(listed)) and all(T0 <= t <= now for t in listed)
    newest = inner(now - timedelta(seconds=step))  # the last fire at or before now
    assert listed[-1] == newest
    if gap is None:
        assert listed[0] == T0 and len(listed) == gap_seconds // step + 1
    else:
        assert gap.first == T0 and gap.until == listed[0] and gap.at_least > EXACT_LIMIT
        assert len(listed) >= min(keep, gap_seconds // step)


def test_catch_up_splits_as_documented() -> None:
    now = T0 + timedelta(seconds=10, milliseconds=200)
    due = [T0 + timedelta(seconds=s) for s in range(11)]
    grace = timedelta(seconds=5)
    catch, on_time, missed = split_due(
        due, now, catch_up=CatchUp.LATEST, misfire_grace=grace, max_catch_up=3
    )
    assert on_time == [due[10]] and catch == [] and missed == due[:10]
    catch, on_time, missed = split_due(
        due, now, catch_up=CatchUp.ALL, misfire_grace=grace, max_catch_up=3
    )
    assert catch == due[7:10] and missed == due[:7]
    catch, _, missed = split_due(
        due[:9], now, catch_up=CatchUp.LATEST, misfire_grace=grace, max_catch_up=3
    )
    assert catch == [due[8]] and missed == due[:8]
    assert keep_last(CatchUp.ALL, 0) == 1 and keep_last(CatchUp.NONE, 9) == 1
