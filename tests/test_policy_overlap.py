"""policy: the one place that decides overlap, and catch-up of a claimed fire that starts late.

The invariants a user relies on: under ``allow`` nothing is skipped or held back; a catch-up
run and a handed-over request are never skipped; under ``queue`` at most one run waits; an
idle job is never skipped; a late fire runs only as catch_up and misfire_grace allow.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qtasks_cli.models import CatchUp, Overlap, TriggerKind
from qtasks_cli.policy import (
    HANDED_OVER,
    LATE_AFTER,
    busy_reason,
    exclusive,
    late_claim_missed,
    missed_reason,
    overlap_skip,
    second_pass,
    step_back,
    waits_behind,
)
from qtasks_cli.schedule import parse_schedule

NOW = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)
BUSY = "previous run still running"

policies = st.sampled_from(list(Overlap))
triggers = st.sampled_from(list(TriggerKind))
busy = st.one_of(st.none(), st.just(BUSY))


@given(policies, triggers, busy, st.booleans())
def test_allow_never_skips_and_never_waits(
    policy: Overlap, trigger: TriggerKind, why: str | None, queued: bool
) -> None:
    if policy is Overlap.ALLOW or why is None:
        assert overlap_skip(policy, trigger, why, queued=queued) is None
        assert not waits_behind(policy, trigger, why is not None)


@given(policies, st.sampled_from([TriggerKind.CATCH_UP, *HANDED_OVER]), busy, st.booleans())
def test_catch_up_runs_and_handed_over_requests_are_never_skipped(
    policy: Overlap, trigger: TriggerKind, why: str | None, queued: bool
) -> None:
    assert overlap_skip(policy, trigger, why, queued=queued) is None
    # ... and they wait for the run in progress unless the job allows overlap.
    assert waits_behind(policy, trigger, why is not None) is (
        why is not None and policy is not Overlap.ALLOW
    )


def test_skip_skips_a_busy_job_s_scheduled_fire_with_the_reason() -> None:
    for trigger in (TriggerKind.SCHEDULE, TriggerKind.STARTUP, TriggerKind.MANUAL):
        assert overlap_skip(Overlap.SKIP, trigger, BUSY, queued=False) == (
            f"skipped: {BUSY} (overlap: skip)"
        )
        assert not waits_behind(Overlap.SKIP, trigger, True)


def test_queue_holds_one_run_and_skips_the_next() -> None:
    assert overlap_skip(Overlap.QUEUE, TriggerKind.SCHEDULE, BUSY, queued=False) is None
    assert waits_behind(Overlap.QUEUE, TriggerKind.SCHEDULE, True)
    assert overlap_skip(Overlap.QUEUE, TriggerKind.SCHEDULE, BUSY, queued=True) == (
        "skipped: a run is already queued (overlap: queue)"
    )


@given(policies)
def test_nodes_keep_apart_the_jobs_that_do_not_allow_overlap(policy: Overlap) -> None:
    assert exclusive(policy) is (policy is not Overlap.ALLOW)


@given(st.integers(0, 5), st.integers(0, 5), st.integers(0, 5), st.integers(0, 5))
def test_a_job_is_busy_exactly_while_anything_of_it_remains(
    running: int, waiting: int, stuck: int, stuck_tasks: int
) -> None:
    waiting, stuck_tasks = min(waiting, running), min(stuck_tasks, stuck)
    why = busy_reason(running=running, waiting=waiting, stuck=stuck, stuck_tasks=stuck_tasks)
    assert (why is None) is (running == 0 and stuck == 0)


@pytest.mark.parametrize(
    ("running", "waiting", "stuck", "stuck_tasks", "words"),
    [
        (2, 1, 0, 0, "still running"),
        (1, 1, 0, 0, "waiting for a free slot"),
        (0, 0, 2, 1, "thread is still running after its timeout"),
        (0, 0, 1, 1, "ignored its cancellation"),
    ],
)
def test_busy_says_why(
    running: int, waiting: int, stuck: int, stuck_tasks: int, words: str
) -> None:
    why = busy_reason(running=running, waiting=waiting, stuck=stuck, stuck_tasks=stuck_tasks)
    assert why is not None and words in why


late = st.timedeltas(min_value=LATE_AFTER, max_value=timedelta(hours=2))
graces = st.timedeltas(min_value=timedelta(0), max_value=timedelta(hours=2))
newer_after = st.one_of(
    st.none(), st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(hours=3))
)


@given(st.sampled_from(list(CatchUp)), late, graces, newer_after)
def test_a_late_claimed_fire_runs_only_as_catch_up_allows(
    catch_up: CatchUp, age: timedelta, grace: timedelta, gap: timedelta | None
) -> None:
    scheduled = NOW - age
    newer = None if gap is None else scheduled + gap
    why = late_claim_missed(
        scheduled=scheduled, newer=newer, now=NOW, catch_up=catch_up, misfire_grace=grace
    )
    newest = newer is None or newer > NOW
    if catch_up is CatchUp.NONE or age > grace:
        assert why is not None  # never run: recorded missed, with the rule that missed it
    elif catch_up is CatchUp.ALL:
        assert why is None
    else:
        assert (why is None) is newest
    if why is not None:
        assert why == missed_reason(catch_up, not newest)


def test_a_second_pass_after_a_step_back_is_marked_only_where_the_job_repeats() -> None:
    from zoneinfo import ZoneInfo

    step = step_back(NOW, timedelta(seconds=90))
    every_minute = parse_schedule("* * * * *", ZoneInfo("UTC"))
    fixed = parse_schedule("30 2 * * *", ZoneInfo("UTC"))
    inside = NOW + timedelta(seconds=30)
    assert second_pass(inside, every_minute, step, startup=False) == inside + step.mark
    assert second_pass(inside, fixed, step, startup=False) == inside  # fires once
    assert second_pass(inside, every_minute, step, startup=True) == inside
    assert second_pass(inside, every_minute, None, startup=False) == inside
    after = step.until + timedelta(seconds=1)  # past the repeated wall times
    assert second_pass(after, every_minute, step, startup=False) == after
