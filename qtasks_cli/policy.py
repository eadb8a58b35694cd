"""Pure firing decisions: which fires of a job are due (with bounded work after a long gap),
catch-up, overlap and the reasons a fire did not run.

Nothing here reads the clock: ``now`` is an argument (aware UTC), so the rules are tested
without waiting. This is the one place that decides overlap (``busy_reason``,
``overlap_skip``, ``waits_behind``, ``exclusive``): the loop asks before a fire starts, and a
shared store keeps a job's runs apart across nodes for the jobs ``exclusive`` names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from qtasks_cli.models import CatchUp, JobSpec, Overlap, TriggerKind

# A fire started more than this after its time counts as late and goes through catch_up.
LATE_AFTER = timedelta(seconds=1)
# Fires enumerated one by one from the first due fire before the rest of a long gap is
# summarised (a clock jumping forward a day must not cost 86,400 rows for a per-second job).
EXACT_LIMIT = 100
# Runs handed over through the store: begun durably before their body (ledger.py), and never
# skipped by overlap (they wait for the run in progress instead).
HANDED_OVER = frozenset({TriggerKind.QUEUED, TriggerKind.RERUN})


@dataclass(frozen=True, kw_only=True, slots=True)
class Gap:
    """Fires passed over without being listed: every fire from ``first`` until (before)
    ``until``; at least ``at_least`` of them."""

    first: datetime
    until: datetime
    at_least: int

    def describe(self) -> str:
        return (
            f"{self.at_least}+ fires from {self.first.isoformat()} until {self.until.isoformat()}"
        )


def due_fires(
    next_after: Callable[[datetime], datetime | None],
    first: datetime,
    now: datetime,
    *,
    keep_last: int,
) -> tuple[list[datetime], Gap | None]:
    """Every fire in [first, now], oldest first, with bounded work.

    When more than ``EXACT_LIMIT`` fires are due, the older ones are returned as one
    ``Gap`` and only the newest are listed: at least ``keep_last`` of them where there are
    so many (the ones catch-up may still run), found by looking back from ``now`` in
    doubling windows. ``next_after(t)`` is the schedule's next fire strictly after ``t``.
    The work is O(EXACT_LIMIT + keep_last) calls of ``next_after`` per doubling.
    """
    listed = [first]
    while len(listed) <= EXACT_LIMIT:
        nxt = next_after(listed[-1])
        if nxt is None or nxt > now:
            return listed, None
        listed.append(nxt)
    window = timedelta(seconds=1)
    limit = 4 * keep_last + EXACT_LIMIT
    while True:
        start = now - window
        if start <= listed[-1]:
            return listed + _between(next_after, listed[-1], now, limit=limit), None
        tail = _between(next_after, start, now, limit=limit)
        if len(tail) >= keep_last:
            break
        window *= 2
    return tail, Gap(first=first, until=tail[0] if tail else now, at_least=len(listed))


def _between(
    next_after: Callable[[datetime], datetime | None],
    start: datetime,
    now: datetime,
    *,
    limit: int,
) -> list[datetime]:
    """Fires in (start, now], oldest first, at most ``limit`` of them."""
    found: list[datetime] = []
    when = start
    for _ in range(limit):
        nxt = next_after(when)
        if nxt is None or nxt > now:
            return found
        found.append(nxt)
        when = nxt
    return found


def split_due(
    due: Sequence[datetime],
    now: datetime,
    *,
    catch_up: CatchUp,
    misfire_grace: timedelta,
    max_catch_up: int,
) -> tuple[list[datetime], list[datetime], list[datetime]]:
    """(catch-up runs, on-time runs, missed) of a job's due fires at ``now``.

    A fire more than ``LATE_AFTER`` old is late; late fires within ``misfire_grace`` may be
    caught up: ``all`` runs the newest ``max_catch_up`` of them, ``latest`` the newest one
    unless an on-time fire runs anyway, ``none`` nothing. Every other late fire is missed.
    """
    late = [t for t in due if now - t > LATE_AFTER]
    on_time = [t for t in due if now - t <= LATE_AFTER]
    graced = [t for t in late if now - t <= misfire_grace]
    catch: list[datetime] = []
    if catch_up is CatchUp.ALL:
        catch = graced[-max_catch_up:] if max_catch_up > 0 else []
    elif catch_up is CatchUp.LATEST and graced and not on_time:
        catch = graced[-1:]
    chosen = set(catch)
    return catch, on_time, [t for t in late if t not in chosen]


def missed_reason(catch_up: CatchUp, has_on_time: bool) -> str:
    """Why a late fire was not run, for its history row."""
    if catch_up is CatchUp.NONE:
        return "missed while the daemon was down or late (catch_up: none)"
    if catch_up is CatchUp.LATEST:
        newer = "a newer fire ran" if has_on_time else "only the latest missed fire runs"
        return f"missed while the daemon was down or late (catch_up: latest, {newer})"
    return f"missed: older than misfire_grace or beyond max_catch_up ({catch_up})"


def keep_last(catch_up: CatchUp, max_catch_up: int) -> int:
    """How many of the newest missed fires catch-up may still run."""
    if catch_up is CatchUp.ALL:
        return max(max_catch_up, 1)
    return 1


# cron(8) of cronie: "Time changes of more than 3 hours are considered to be corrections to
# the clock or the timezone"; after a smaller move back only wildcard jobs run again.
LARGE_STEP = timedelta(hours=3)


@dataclass(frozen=True, kw_only=True, slots=True)
class StepBack:
    """The wall clock stepped back: the wall times up to ``until`` come round again.

    ``mark`` (1..999 microseconds) is added to the recorded time of a fire that repeats such
    a wall time, so the unique (job, scheduled) key holds the second pass as a fire of its own
    (shown times are to the millisecond, so it is never seen); ``large``: a step of
    ``LARGE_STEP`` or more."""

    until: datetime
    mark: timedelta
    large: bool


def step_back(now: datetime, step: timedelta) -> StepBack:
    """The ``StepBack`` of a step of ``step`` (> 0, how far back) seen at ``now``; its mark
    is taken from ``now`` so that two steps over the same wall times almost surely differ."""
    mark = timedelta(microseconds=1 + int(now.timestamp() * 1_000_000) % 999)
    return StepBack(until=now + step, mark=mark, large=step >= LARGE_STEP)


def repeats_after_step(schedule: object, step: StepBack) -> bool:
    """Whether a job fires again at wall times the clock repeats after ``step`` (cron(8) of
    cronie on a time change back): after a large step every job does; after a smaller one, a
    job following the clock does (a cron field for minute or hour starting with ``*``, or an
    interval, which follows elapsed time and must not fall silent), and a fixed-time job
    (``30 2 * * *``) does not fire twice. A union repeats if any member does."""
    members = getattr(schedule, "members", None)
    if members is not None:
        return any(repeats_after_step(member, step) for member in members)
    if getattr(schedule, "startup", False):
        return False
    return step.large or not getattr(schedule, "fixed", False)


def late_claim_missed(
    *,
    scheduled: datetime,
    newer: datetime | None,
    now: datetime,
    catch_up: CatchUp,
    misfire_grace: timedelta,
) -> str | None:
    """Why a claimed fire that comes to start late (more than ``LATE_AFTER``) is missed, or
    None when it runs as a catch-up run. ``newer`` is the job's next fire after
    ``scheduled`` (None: there is none): ``latest`` runs only the newest due fire, ``all``
    every one within ``misfire_grace``, ``none`` nothing."""
    newest = newer is None or newer > now  # no later fire of the job is due yet
    graced = now - scheduled <= misfire_grace
    if graced and (catch_up is CatchUp.ALL or (catch_up is CatchUp.LATEST and newest)):
        return None
    return missed_reason(catch_up, not newest)


def still_claimable(spec: JobSpec | None, trigger: TriggerKind, instant: datetime) -> bool:
    """Whether a claim written ahead for ``instant`` still stands once the job file says
    ``spec`` (None: the job is gone): the job is enabled and, for a scheduled fire, its
    schedule still fires at that instant. A reload gives back every other claim, so a job
    disabled or moved to other times fires no more under its old definition."""
    if spec is None or not spec.enabled:
        return False
    if trigger is not TriggerKind.SCHEDULE:
        return True
    schedule = spec.schedule
    return schedule is not None and schedule.next_after(instant - _TICK) == instant


_TICK = timedelta(microseconds=1)


def busy_reason(*, running: int, waiting: int, stuck: int, stuck_tasks: int) -> str | None:
    """Why a job counts as still running, or None: a run in progress (``running`` counts the
    ``waiting`` ones too) or waiting for a slot, a thread of an earlier run that timed out and
    has not returned (``stuck`` counts the ``stuck_tasks`` too), or a task of one that ignored
    its cancellation and still runs."""
    if running > waiting:
        return "previous run still running"
    if running:
        return "previous run still waiting for a free slot (max_concurrent)"
    if stuck > stuck_tasks:
        return "previous run's thread is still running after its timeout"
    if stuck:
        return "previous run's task ignored its cancellation and is still running"
    return None


def overlap_skip(
    policy: Overlap, trigger: TriggerKind, busy: str | None, *, queued: bool
) -> str | None:
    """The error of a fire skipped by its job's overlap ``policy``, or None when it goes on
    to start (it may still wait behind the run in progress: ``waits_behind``). ``busy`` is
    ``busy_reason``; ``queued``: a run of the job already waits behind it. Catch-up runs
    (they wait for each other, one per missed fire) and handed-over requests are never
    skipped; under ``queue`` one run waits and later ones are skipped."""
    if busy is None or policy is Overlap.ALLOW:
        return None
    if trigger is TriggerKind.CATCH_UP or trigger in HANDED_OVER:
        return None
    if policy is Overlap.QUEUE and not queued:
        return None
    why = "a run is already queued" if policy is Overlap.QUEUE else busy
    return f"skipped: {why} (overlap: {policy})"


def waits_behind(policy: Overlap, trigger: TriggerKind, busy: bool) -> bool:
    """Whether a run about to start waits until its job's run in progress ends: under
    ``queue``, a catch-up run under ``skip``, and a handed-over request under either (it is
    never skipped, so no order notification is lost). Nothing waits under ``allow``."""
    if not busy or policy is Overlap.ALLOW:
        return False
    return trigger in HANDED_OVER or policy is Overlap.QUEUE or trigger is TriggerKind.CATCH_UP


def queued_may_start(policy: Overlap, busy: bool) -> bool:
    """Whether a run already waiting behind its job's run in progress may start: once nothing
    of the job runs, or at once when a reload made the job ``allow``."""
    return not busy or policy is Overlap.ALLOW


def exclusive(policy: Overlap) -> bool:
    """Whether a shared store keeps the job's runs apart across nodes (a claim while another
    node runs the job comes back busy)."""
    return policy is not Overlap.ALLOW


def second_pass(
    when: datetime, schedule: object | None, step: StepBack | None, *, startup: bool
) -> datetime:
    """The time to record a fire at ``when`` under: ``when`` itself, or ``when`` plus
    ``step.mark`` when it repeats a wall time after the clock stepped back (``step``, still
    in effect up to ``step.until``) and the job fires again then (``repeats_after_step``).
    A startup fire is never a second pass."""
    if step is None or startup or schedule is None or when > step.until:
        return when
    return when + step.mark if repeats_after_step(schedule, step) else when
