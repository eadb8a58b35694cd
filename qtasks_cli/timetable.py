"""The daemon's job table: each job's state, and its next fire on one heap ordered by time
(what the loop sleeps until).

A job's entry goes stale when the job is rescheduled (a reload, a clock step, a retried
claim): its state's ``generation`` moves on, and stale entries are dropped as they surface.
A job's next fire is computed from its previous one, not from "now" (design.md: schedules do
not drift); at the start, from its last recorded fire when the schedule is unchanged (so
downtime is caught up), else from now (a changed schedule never backfills).
"""

from __future__ import annotations

import contextlib
import heapq
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from qtasks_cli.models import JobSpec, TriggerKind
from qtasks_cli.policy import LATE_AFTER

# A run waiting behind its job's run in progress: run id, trigger, scheduled, args, kwargs.
Pending = tuple[str, TriggerKind, datetime | None, Any, Any]
# A job's first fire worked out ahead, off the loop (``first_fires``): its schedule, the time
# it was worked out from, and the first fire after that time (None: no further fire).
Ahead = tuple[Any, datetime, "datetime | None"]


@dataclass(slots=True)
class JobState:
    """One job as the daemon holds it: its spec, its next fire and its runs."""

    spec: JobSpec
    next_fire: datetime | None = None
    generation: int = 0  # bumps when the job is rescheduled, invalidating old heap entries
    pending: list[Pending] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True, slots=True)
class Changes:
    """The jobs a new job file added, removed and changed (by fingerprint)."""

    added: list[str]
    removed: list[str]
    changed: list[str]


# One heap entry: when, a sequence number (ties keep their order), job, generation.
Entry = tuple[datetime, int, str, int]
# Stale heap entries allowed beyond one per job before the heap is rebuilt without them.
STALE_SLACK = 1024


class Timetable:
    """The heap of next fires over the daemon's job table (shared, never rebound)."""

    def __init__(self, jobs: dict[str, JobState]) -> None:
        self.jobs = jobs
        self._heap: list[Entry] = []
        self._seq = 0
        self._memo: dict[tuple[int, datetime], datetime | None] | None = None

    @contextlib.contextmanager
    def sharing(self) -> Iterator[None]:
        """Within: jobs that share a schedule object and a last fire share their next fire,
        computed once (10,000 jobs on a few schedules at the start)."""
        self._memo = {}
        try:
            yield
        finally:
            self._memo = None

    def fill(self, specs: Mapping[str, JobSpec]) -> None:
        """Hold ``specs`` (the job file's, at the start), none of them scheduled yet."""
        self.jobs.clear()
        self.jobs.update((spec.name, JobState(spec=spec)) for spec in specs.values())

    def schedule_all(
        self, specs: Mapping[str, JobSpec], now: datetime, last: Mapping[str, tuple[datetime, str]]
    ) -> list[str]:
        """Schedule each job from its ``last`` recorded fire (time, schedule key). A last
        fire in the future (the wall clock was ahead, or stepped back since) is ignored:
        that job is scheduled from now, and it is returned as ``job (time)``; each
        (job, time) still runs at most once."""
        ahead: list[str] = []
        # Jobs sharing a schedule (parse_schedule shares the object) and a last fire share
        # their next fire: computed once (10,000 jobs, a few schedules).
        with self.sharing():
            for spec in specs.values():
                if not spec.enabled or spec.schedule is None:
                    continue
                recorded = last.get(spec.name)
                if recorded is not None and recorded[0] > now + LATE_AFTER:
                    ahead.append(f"{spec.name} ({recorded[0].isoformat()})")
                    recorded = None  # the clock went back since: schedule from now
                self.schedule(spec.name, now, recorded)
        return ahead

    def apply(
        self,
        old: Mapping[str, JobSpec],
        specs: Mapping[str, JobSpec],
        now: datetime,
        ahead: Mapping[str, Ahead] | None = None,
    ) -> Changes:
        """Go from the ``old`` job file's specs to a new one's ``specs``: added jobs are
        scheduled from ``now``, removed ones dropped (their heap entries go stale), changed
        ones take the new spec and are scheduled afresh unless their schedule and
        ``enabled`` are the same. Runs in progress are not touched. ``ahead``: first fires
        ``first_fires`` worked out off the loop, taken where they still hold (a schedule of
        3,000 jobs in a zone with many changes took the loop 29 s to work out here)."""
        from qtasks_cli.digests import fingerprint

        added = [n for n in specs if n not in old]
        removed = [n for n in old if n not in specs]
        changed = [n for n in specs if n in old and fingerprint(old[n]) != fingerprint(specs[n])]
        for name in removed:
            state = self.jobs.pop(name)
            state.generation += 1
        for name in added:
            self.jobs[name] = JobState(spec=specs[name])
            self.schedule(name, now, ahead=ahead)
        for name in changed:
            state = self.jobs[name]
            previous = state.spec
            state.spec = specs[name]
            same_time = (
                previous.schedule is not None
                and state.spec.schedule is not None
                and previous.schedule.key == state.spec.schedule.key
                and previous.enabled == state.spec.enabled
            )
            if not same_time:
                self.schedule(name, now, ahead=ahead)
        return Changes(added=added, removed=removed, changed=changed)

    def schedule(
        self,
        name: str,
        now: datetime,
        last: tuple[datetime, str] | None = None,
        *,
        ahead: Mapping[str, Ahead] | None = None,
    ) -> None:
        """Put the job's next fire on the heap: after its last recorded fire (``last``: time
        and schedule key) when the schedule is unchanged, else after ``now`` (a changed
        schedule never backfills). A disabled or unscheduled job gets none. ``ahead``: see
        ``apply``; an entry is taken when it is for this schedule and its first fire is still
        after ``now`` (then it is the first after ``now`` too)."""
        state = self.jobs[name]
        schedule = state.spec.schedule
        state.generation += 1
        state.next_fire = None
        if schedule is None or not state.spec.enabled:
            return
        after = last[0] if last is not None and last[1] == schedule.key else now
        known = ahead.get(name) if ahead is not None and after is now else None
        if (
            known is not None
            and known[0] is schedule
            and known[1] <= now
            and (known[2] is None or known[2] > now)
        ):
            self.push(name, known[2])
            return
        memo = self._memo
        if memo is None:
            self.push(name, schedule.next_after(after))
            return
        key = (id(schedule), after)
        if key not in memo:
            memo[key] = schedule.next_after(after)
        self.push(name, memo[key])

    def push(self, name: str, when: datetime | None) -> None:
        """Make ``when`` the job's next fire (None: it has no further fire)."""
        state = self.jobs[name]
        state.next_fire = when
        if when is not None:
            self._seq += 1
            heapq.heappush(self._heap, (when, self._seq, name, state.generation))
            if len(self._heap) > 2 * len(self.jobs) + STALE_SLACK:
                self._compact()

    def _compact(self) -> None:
        """Drop the entries a rescheduling left behind: they leave the heap only when they
        reach its top, and a reload that reschedules 10,000 jobs due next year left 10,000
        of them each time (3 MB a reload, found by a hostile tester). O(n), at most once
        per ``STALE_SLACK`` + n pushes."""
        self._heap = [entry for entry in self._heap if self._is_current(entry)]
        heapq.heapify(self._heap)

    def first(self) -> datetime | None:
        """The earliest next fire of any job, or None."""
        while self._heap and not self._is_current(self._heap[0]):
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def take_due(self, horizon: datetime) -> Iterator[tuple[str, datetime]]:
        """Take every job's next fire at or before ``horizon`` off the heap: (job, time),
        earliest first. The caller pushes each job's following fire."""
        while self._heap and self._heap[0][0] <= horizon:
            entry = heapq.heappop(self._heap)
            if self._is_current(entry):
                yield entry[2], entry[0]

    def _is_current(self, entry: Entry) -> bool:
        state = self.jobs.get(entry[2])
        return state is not None and state.generation == entry[3]


def first_fires(
    old: Mapping[str, JobSpec], specs: Mapping[str, JobSpec], now: datetime
) -> dict[str, Ahead]:
    """For each job of ``specs`` that ``Timetable.apply`` would schedule afresh when going
    from ``old`` (added, or changed with another schedule or ``enabled``): its first fire after
    ``now``. Pure and slow where schedules are (many zone changes): made in the reload's
    thread, so that applying the new file costs the loop lookups only."""
    from qtasks_cli.digests import fingerprint

    found: dict[str, Ahead] = {}
    for name, spec in specs.items():
        schedule = spec.schedule
        if schedule is None or not spec.enabled:
            continue
        before = old.get(name)
        if before is not None and (
            fingerprint(before) == fingerprint(spec)
            or (
                before.schedule is not None
                and before.schedule.key == schedule.key
                and before.enabled == spec.enabled
            )
        ):
            continue
        found[name] = (schedule, now, schedule.next_after(now))
    return found
